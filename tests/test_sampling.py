"""Batched sampling: counts, parameters, truncation flags, determinism, conditioning, the model cache."""

import pytest
import torch
from sqlmodel import select

from alt_engine import modeling
from alt_engine.conditioning import build_input
from alt_engine.db import Generation, Prompt, session_scope
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.sampling import SamplingParams, TransformersBackend, next_tokens, sample_prompts
from alt_engine.tasks import get_or_create_task


def eos_prone_backend(model_dir, eos_bias=4.0):
    """The tiny model with a bias towards EOS, so some samples stop early and some are truncated."""
    model, tok = load_model(model_dir, "cpu"), load_tokenizer(model_dir)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.copy_(model.get_output_embeddings().weight.data)
    head.bias.data.zero_()
    head.bias.data[tok.eos_token_id] = eos_bias
    model.lm_head = head
    return TransformersBackend(model, tok)


def add_prompts(db, n=8):
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        rows = [Prompt(task_id=task.id, text=f"Question {i}: tell me something") for i in range(n - 1)]
        rows.append(Prompt(task_id=task.id, messages=[{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi"}]))
        s.add_all(rows)
    with session_scope(db) as s:
        return list(s.exec(select(Prompt).order_by(Prompt.id)))


def texts(db):
    with session_scope(db) as s:
        return [g.response for g in s.exec(select(Generation).order_by(Generation.id))]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return eos_prone_backend(tiny_model_dir)


def test_n4_on_8_prompts_writes_32_with_parameters(db, backend):
    prompts = add_prompts(db)
    params = SamplingParams(n=4, temperature=0.9, top_p=0.9, max_new_tokens=16, seed=7, batch_size=8)
    ids = sample_prompts(db, backend, prompts, params, round_id=None, show_progress=False)
    assert len(ids) == 32
    with session_scope(db) as s:
        gens = s.exec(select(Generation)).all()
    assert len(gens) == 32
    assert {g.prompt_id for g in gens} == {p.id for p in prompts}
    assert all(sum(g.prompt_id == p.id for g in gens) == 4 for p in prompts)
    for g in gens:
        assert g.sampling_params == {"n": 4, "temperature": 0.9, "top_p": 0.9, "max_new_tokens": 16, "seed": 7,
                                     "backend": "transformers", "dtype": "float32"}
        assert g.seed is not None and g.conditioning is None
        assert g.truncated == (g.response_tokens == 16)  # stopped at the limit without EOS
    flags = {g.truncated for g in gens}
    assert flags == {True, False}, "expected both early-stopped and truncated samples"


def test_same_seed_same_text(tmp_path, backend):
    from alt_engine.db import init_db

    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        db = str(tmp_path / f"{name}.db")
        init_db(db)
        sample_prompts(db, backend, add_prompts(db), SamplingParams(n=4, max_new_tokens=12, seed=seed),
                       show_progress=False)
        runs.append(texts(db))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_batched_equals_count_of_unbatched_and_greedy_matches(db, tiny_model_dir):
    backend = TransformersBackend(load_model(tiny_model_dir, "cpu"), load_tokenizer(tiny_model_dir))
    tok = backend.tokenizer
    inputs = [build_input(tok, p).input_ids for p in ("Hi", "A much longer prompt here, ok?", "Yes")]
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=8, batch_size=3)
    batched = backend.generate(inputs, greedy)
    alone = [backend.generate([x], greedy)[0] for x in inputs]
    # left padding + position ids from the mask: a padded row decodes like the row alone
    assert [b[0].token_ids for b in batched] == [a[0].token_ids for a in alone]


def test_conditioned_on_exemplar(db, backend):
    prompts = add_prompts(db, 2)
    sample_prompts(db, backend, prompts, SamplingParams(n=2, max_new_tokens=4), conditioning_text="Excellent",
                   show_progress=False)
    with session_scope(db) as s:
        gens = s.exec(select(Generation)).all()
    tok = backend.tokenizer
    assert all(g.conditioning == "Excellent" for g in gens)
    conds = {p.id: build_input(tok, p.messages or p.text, "Excellent") for p in prompts}
    assert all(g.prompt_tokens == len(conds[g.prompt_id].input_ids) - conds[g.prompt_id].n_condition
               for g in gens)  # the feedback segment is not counted


def test_a_sample_does_not_depend_on_its_batch(backend):
    """Rows leave and join the batch (EOS-prone model): each sample still equals the one drawn alone."""
    tok = backend.tokenizer
    inputs = [build_input(tok, p).input_ids for p in ("Hi", "A much longer prompt here, ok?", "Yes", "Tell me")]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5)
    runs = [backend.generate(inputs, SamplingParams(**{**params.__dict__, "batch_size": b})) for b in (1, 4, 16)]
    ids = [[[s.token_ids for s in per] for per in run] for run in runs]
    assert ids[0] == ids[1] == ids[2]
    lengths = {len(t) for per in ids[0] for t in per}
    assert len(lengths) > 1, "expected samples of different lengths (rows retiring early)"
    # input 2 alone with seed + 2 is the same sample: sample_prompts may split inputs into calls as it likes
    alone = backend.generate([inputs[2]], SamplingParams(**{**params.__dict__, "seed": 7, "batch_size": 2}))
    assert [s.token_ids for s in alone[0]] == ids[0][2]
    assert [s.seed for s in alone[0]] == [s.seed for s in runs[0][2]]


def test_an_automatic_batch_of_long_contexts_is_bounded_in_tokens(backend, monkeypatch):
    """Long contexts decode in fewer rows (bounded KV cache), with the very samples a free batch draws."""
    from alt_engine import transformers_backend

    tok = backend.tokenizer
    inputs = [build_input(tok, f"Prompt {i}: " + "word " * 20).input_ids for i in range(6)]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=3)  # batch_size 0: automatic

    def widest(params):
        rows = []
        out = backend.generate(inputs, params, on_step=lambda live, tokens: rows.append(len(live)))
        return max(rows), [[s.token_ids for s in per] for per in out]

    free_rows, free = widest(params)
    longest = max(len(x) for x in inputs) + params.max_new_tokens
    monkeypatch.setattr(transformers_backend, "KV_TOKEN_BUDGET", 3 * longest)
    bounded_rows, bounded = widest(params)
    assert free_rows == 12 and bounded_rows == 3  # 6 inputs x n=2 rows at once, against 3 within the budget
    assert bounded == free
    explicit_rows, explicit = widest(SamplingParams(**{**params.__dict__, "batch_size": 8}))
    assert explicit_rows == 8 and explicit == free  # an explicit batch size is taken as given


def test_conditionings_in_one_pass_draw_the_same_streams_as_separate_passes(db, backend):
    """Evaluation samples both conditionings in one pass (``seed_index``): prompt i keeps its random streams."""
    prompts = add_prompts(db, 3)
    params = SamplingParams(n=2, max_new_tokens=6, seed=3)
    apart = [sample_prompts(db, backend, prompts, params, conditioning_text=c, show_progress=False)
             for c in ("Excellent", "Horrible")]
    together = sample_prompts(db, backend, prompts * 2, params, conditioning_text=["Excellent"] * 3 + ["Horrible"] * 3,
                              show_progress=False, seed_index=[0, 1, 2] * 2)
    with session_scope(db) as s:
        def rows(ids):
            return [(g.prompt_id, g.conditioning, g.seed, g.response) for g in
                    sorted(s.exec(select(Generation).where(Generation.id.in_(ids))), key=lambda g: ids.index(g.id))]

        assert rows(apart[0] + apart[1]) == rows(together)
        seeds = [r[2] for r in rows(together)]
    assert seeds[:6] == seeds[6:] and len(set(seeds[:6])) == 6  # paired across conditionings, distinct within


def test_greedy_with_rows_joining_matches_generate(tiny_model_dir):
    """Greedy decoding through the slot cache (batch 2, rows finishing and refilled) = transformers' generate."""
    backend = eos_prone_backend(tiny_model_dir, eos_bias=2.5)
    tok, model = backend.tokenizer, backend.model
    prompts = ("Hi", "A much longer prompt here, ok?", "Yes", "The quick brown fox", "Be concise and helpful.")
    inputs = [build_input(tok, p).input_ids for p in prompts]
    ours = backend.generate(inputs, SamplingParams(n=1, temperature=0, max_new_tokens=10, batch_size=2))
    for x, (sample,) in zip(inputs, ours):
        ref = model.generate(torch.tensor([x]), max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=sorted(backend.stop_ids))[0, len(x):].tolist()
        ref = ref[:ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
        assert sample.token_ids == ref
        assert sample.truncated == (len(ref) == 10)
    assert {len(s.token_ids) for (s,) in ours} != {10}, "expected some answers to stop early"


def test_nucleus_sampling_matches_top_p_warper():
    """Tokens drawn are transformers' top-p nucleus, each with its renormalised probability."""
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(2, 600) * torch.tensor([[0.3], [4.0]])  # flat: nucleus beyond the top 64; peaked
    params = SamplingParams(temperature=0.7, top_p=0.8)
    warped = TopPLogitsWarper(0.8)(None, logits / 0.7)
    draws = 4000
    u = (torch.arange(draws) + 0.5) / draws  # a grid of uniforms: counts follow the CDF exactly
    for row in range(2):
        picks = next_tokens(logits[row].repeat(draws, 1), params, u)
        probs = torch.softmax(warped[row], -1)
        counts = torch.bincount(picks, minlength=600) / draws
        assert set(picks.tolist()) <= set(torch.nonzero(probs).flatten().tolist())
        assert (counts - probs).abs().max() < 2 / draws
    greedy = next_tokens(logits, SamplingParams(temperature=0), u[:2])
    assert greedy.tolist() == logits.argmax(-1).tolist()


def test_progress_reports_tokens_per_second_and_eta(backend):
    inputs = [build_input(backend.tokenizer, "Hi").input_ids]
    with_info, plain = [], []
    backend.generate(inputs, SamplingParams(n=3, max_new_tokens=6), lambda d, t, info: with_info.append((d, t, info)))
    backend.generate(inputs, SamplingParams(n=3, max_new_tokens=6), lambda d, t: plain.append((d, t)))
    assert with_info[-1][:2] == (3, 3) and plain[-1] == (3, 3)
    info = with_info[-1][2]
    assert info["tokens"] > 0 and info["tokens_per_s"] > 0 and info["eta_s"] == 0


def test_bfloat16_backend_keeps_the_float32_model(tiny_model_dir):
    model = load_model(tiny_model_dir, "cpu")
    backend = TransformersBackend(model, load_tokenizer(tiny_model_dir), dtype=torch.bfloat16)
    out = backend.generate([build_input(backend.tokenizer, "Hi").input_ids], SamplingParams(n=2, max_new_tokens=5))
    assert backend.dtype == torch.bfloat16 and model.dtype == torch.float32
    assert all(len(s.token_ids) <= 5 for s in out[0])


def test_model_cache_loads_once_and_releases(tiny_model_dir, tmp_path, monkeypatch):
    from alt_engine.backend_factory import cached_backend
    from alt_engine.tiny import save_tiny

    modeling.release()
    monkeypatch.setattr(modeling, "CACHE_SIZE", 2)
    model = modeling.cached_model(tiny_model_dir, "cpu")
    backend = cached_backend(tiny_model_dir, "cpu", dtype=None)
    assert modeling.cached_model(tiny_model_dir, "cpu") is model  # one load: the backend samples with it
    assert backend.model is model and cached_backend(tiny_model_dir, "cpu", dtype=None) is backend
    assert modeling.cached_tokenizer(tiny_model_dir) is backend.tokenizer  # perplexity reuses it too
    other, third = save_tiny(tmp_path / "other"), save_tiny(tmp_path / "third")
    other_model = modeling.cached_model(other, "cpu")  # a second model: the first with its backend stays
    assert modeling.cached_model(tiny_model_dir, "cpu") is model
    assert cached_backend(tiny_model_dir, "cpu", dtype=None) is backend
    modeling.cached_model(third, "cpu")  # a third model: the least recently used one (other) goes
    assert modeling.cached_model(tiny_model_dir, "cpu") is model
    assert modeling.cached_model(other, "cpu") is not other_model
    modeling.release()
    assert not modeling._CACHE



def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_trim_memory_hands_freed_heap_back():
    """Freed small blocks stay in the process (glibc keeps them) until ``trim_memory``: a round's phases no
    longer pile up (training's memory is returned before the evaluation that follows)."""
    import ctypes
    import os

    try:
        assert callable(ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    blocks = [os.urandom(2048) for _ in range(100_000)]  # 200 MB of heap blocks (not pymalloc, not mmap)
    keep = blocks[::100]  # a few stay alive between them: the heap cannot simply shrink from its top
    del blocks
    held = _rss_mb()
    modeling.trim_memory()
    assert held - _rss_mb() > 100, "freed heap was not returned"
    assert len(keep) == 1000

def test_bad_params():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU; this machine has none")
def test_vllm_backend_matches_interface(tiny_model_dir):
    pytest.importorskip("vllm", reason="vLLM not installed (pip install -r requirements-gpu.txt)")
    from alt_engine.vllm_backend import VLLMBackend

    backend = VLLMBackend(tiny_model_dir)
    out = backend.generate([build_input(backend.tokenizer, "Hi").input_ids], SamplingParams(n=3, max_new_tokens=8))
    assert len(out) == 1 and len(out[0]) == 3
    assert all(s.truncated == (len(s.token_ids) == 8) for s in out[0])
