"""Feedback guidance at decoding: the guided distribution, γ = 0, seeds, and who refuses it."""

import math

import pytest
import torch
from sqlmodel import select

from alt_engine.conditioning import Format, build_input
from alt_engine.db import Generation, Prompt, session_scope
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.sampling import SamplingParams, TransformersBackend, guided_logits, next_tokens, sample_prompts
from alt_engine.tasks import get_or_create_task

from test_sampling import eos_prone_backend


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return eos_prone_backend(tiny_model_dir, eos_bias=2.0)


def _pair(tok, prompt="Tell me about the sea", good="Excellent", bad="Horrible"):
    return build_input(tok, prompt, good).input_ids, build_input(tok, prompt, bad).input_ids


def test_guided_distribution_matches_hand_computation():
    cond = torch.tensor([[2.0, 1.0, 0.0]])  # l(x, f) on a 3-token vocabulary
    neg = torch.tensor([[0.0, 1.0, 2.0]])  # l(x, f⁻)
    # γ = 1: lp(f) + (lp(f) − lp(f⁻)) = 2·l(f) − l(f⁻) + a constant = [4, 1, −2] + c
    z = math.exp(4) + math.exp(1) + math.exp(-2)
    want = torch.tensor([math.exp(4) / z, math.exp(1) / z, math.exp(-2) / z])
    got = torch.softmax(guided_logits(cond, neg, 1.0), -1)[0]
    assert torch.allclose(got, want, atol=1e-6)
    # γ = 0: the conditioned distribution itself
    assert torch.allclose(torch.softmax(guided_logits(cond, neg, 0.0), -1), torch.softmax(cond, -1), atol=1e-6)
    # and what the sampler draws from it: uniforms on a fine grid invert the CDF in proportion to the probabilities
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    params = SamplingParams(temperature=1.0, top_p=1.0)
    drawn = next_tokens(guided_logits(cond, neg, 1.0).expand(n, 3), params, u.float())
    freq = torch.bincount(drawn, minlength=3).double() / n
    assert torch.allclose(freq, want.double(), atol=2e-3)


def test_guided_tokens_equal_a_hand_decode_without_cache(tiny_model_dir):
    """Greedy guided decoding through the twin rows' KV caches = recomputing both full inputs every step."""
    model, tok = load_model(tiny_model_dir, "cpu"), load_tokenizer(tiny_model_dir)
    backend = TransformersBackend(model, tok)
    pos, neg = _pair(tok)
    gamma, steps = 1.5, 8
    got = backend.generate([pos], SamplingParams(n=1, temperature=0, max_new_tokens=steps, guidance=gamma),
                           negatives=[neg])[0][0].token_ids
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            lc = model(input_ids=torch.tensor([pos + tokens])).logits[:, -1]
            ln = model(input_ids=torch.tensor([neg + tokens])).logits[:, -1]
            t = int(guided_logits(lc, ln, gamma).argmax(-1))
            if t in backend.stop_ids:
                break
            tokens.append(t)
    assert got == tokens and len(tokens) > 1
    with torch.no_grad():  # the two inputs do give the model different next-token distributions
        assert not torch.allclose(model(input_ids=torch.tensor([pos])).logits[:, -1],
                                  model(input_ids=torch.tensor([neg])).logits[:, -1])


def test_gamma_zero_draws_exactly_todays_samples(backend):
    tok = backend.tokenizer
    pairs = [_pair(tok, p) for p in ("Hi", "A much longer prompt here, ok?", "Yes")]
    inputs, negs = [p for p, _ in pairs], [n for _, n in pairs]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5, batch_size=4)
    today = backend.generate(inputs, params)
    zero = backend.generate(inputs, SamplingParams(**{**params.__dict__, "guidance": 0.0}), negatives=negs)
    assert [[s.token_ids for s in per] for per in zero] == [[s.token_ids for s in per] for per in today]


def test_guided_samples_do_not_depend_on_their_batch(backend):
    tok = backend.tokenizer
    pairs = [_pair(tok, p) for p in ("Hi", "A much longer prompt here, ok?", "Yes", "Tell me")]
    inputs, negs = [p for p, _ in pairs], [n for _, n in pairs]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5, guidance=2.0)
    runs = [backend.generate(inputs, SamplingParams(**{**params.__dict__, "batch_size": b}), negatives=negs)
            for b in (1, 4, 16)]
    ids = [[[s.token_ids for s in per] for per in run] for run in runs]
    assert ids[0] == ids[1] == ids[2]
    assert len({len(t) for per in ids[0] for t in per}) > 1, "expected rows retiring early"
    alone = backend.generate([inputs[2]], SamplingParams(**{**params.__dict__, "seed": 7, "batch_size": 2}),
                             negatives=[negs[2]])
    assert [s.token_ids for s in alone[0]] == ids[0][2]  # a sample is the same whatever its batch
    plain = backend.generate(inputs, SamplingParams(**{**params.__dict__, "guidance": 0.0}))
    assert [[s.token_ids for s in per] for per in plain] != ids[0]
    # a batch mixing guided and unguided inputs: the unguided ones are plain samples
    mixed = backend.generate(inputs, params, negatives=[negs[0], None, negs[2], None])
    assert [s.token_ids for s in mixed[1]] == [s.token_ids for s in plain[1]]
    assert [s.token_ids for s in mixed[0]] == ids[0][0]


def _prompts(db, n=3):
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        s.add_all([Prompt(task_id=task.id, text=f"Question {i}: tell me something") for i in range(n)])
    with session_scope(db) as s:
        return list(s.exec(select(Prompt).order_by(Prompt.id)))


def test_sample_prompts_stores_guidance_and_refuses_a_feedback_free_format(db, backend):
    prompts = _prompts(db)
    params = SamplingParams(n=2, max_new_tokens=6, seed=1, guidance=1.5, negative="worst")
    sample_prompts(db, backend, prompts, params, conditioning_text="Excellent", negative_text="Horrible",
                   show_progress=False)
    with session_scope(db) as s:
        gens = s.exec(select(Generation)).all()
    assert len(gens) == 6
    assert all(g.sampling_params["guidance"] == 1.5 and g.sampling_params["negative"] == "worst"
               and g.sampling_params["negative_feedback"] == "Horrible" for g in gens)
    with pytest.raises(ValueError, match="reads no feedback|reads none"):
        sample_prompts(db, backend, prompts, params, conditioning_text="Excellent", fmt=Format("none"),
                       show_progress=False)


def test_gamma_zero_rows_store_todays_parameters(db, backend):
    prompts = _prompts(db, 2)
    sample_prompts(db, backend, prompts, SamplingParams(n=1, max_new_tokens=4), conditioning_text="Excellent",
                   show_progress=False)
    with session_scope(db) as s:
        g = s.exec(select(Generation)).first()
    assert "guidance" not in g.sampling_params and "negative" not in g.sampling_params


def test_bad_guidance_values():
    with pytest.raises(ValueError, match="guidance"):
        SamplingParams(guidance=-1)
    with pytest.raises(ValueError, match="guidance"):
        SamplingParams(guidance=100)
    with pytest.raises(ValueError, match="guidance needs"):
        TransformersBackend.generate(object(), [[1]], SamplingParams(guidance=1.0))


@pytest.mark.slow  # two tiny rounds through the CLI, ~15 s
def test_round_and_eval_options_reach_the_sampler_and_are_stored(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`alt round --guidance --explore`, `alt eval --guidance`: stored on every generation and evaluation; a
    feedback-free objective refuses guidance before any round exists."""
    from test_round_cli import TRAIN, cli  # noqa: F401 - the CLI fixture's body

    from alt_engine.db import ModelVersion, Round

    run, db = cli.__wrapped__(tmp_path, tiny_model_dir, monkeypatch)
    assert run("round", "--objective", "sft", "--provider", "rule:concise:2,4,6,8", "--guidance", "1", *TRAIN) == 1
    assert "reads no feedback" in capsys.readouterr().err
    with session_scope(db) as s:
        assert s.exec(select(Round)).first() is None
    assert run("round", "--provider", "rule:concise:2,4,6,8", "--n", "4", "--max-new-tokens", "6", "--rounds", "2",
               "--promote", "always", "--eval-max-new-tokens", "6", "--guidance", "2", "--negative", "plain",
               "--eval-guidance", "1.5", "--explore", "0.5", *TRAIN) == 0
    with session_scope(db) as s:
        second = s.exec(select(Round).where(Round.number == 2)).one()
        gens = s.exec(select(Generation).where(Generation.round_id == second.id)).all()
        evals = s.exec(select(Generation).where(Generation.round_id.is_(None))).all()
        v2 = s.exec(select(ModelVersion).order_by(ModelVersion.id.desc())).first()
    exemplar = [g for g in gens if g.conditioning == "Excellent"]
    explored = [g for g in gens if g.conditioning == "Horrible"]
    assert len(exemplar) == len(explored) == len(gens) // 2 > 0  # half of each prompt's 4 samples explore
    assert all(g.sampling_params["guidance"] == 2.0 and g.sampling_params["negative_feedback"] is None
               for g in exemplar)  # guided away from the plain prompt
    assert all("guidance" not in g.sampling_params for g in explored)  # exploration is unguided
    assert evals and all(g.sampling_params["guidance"] == 1.5 for g in evals if g.conditioning)
    assert v2.metrics["eval"]["guidance"] == 1.5 and v2.metrics["eval"]["negative_feedback"] == ["Horrible",
                                                                                                    "Excellent"]
    capsys.readouterr()
    assert run("eval", "--provider", "rule:concise:2,4,6,8", "--guidance", "3", "--negative", "Okay",
               "--max-new-tokens", "6", "--no-steer") == 0
    with session_scope(db) as s:
        v2 = s.get(ModelVersion, v2.id)
    assert v2.metrics["eval"]["guidance"] == 3.0 and v2.metrics["eval"]["negative"] == "Okay"
    assert "guidance γ=3" in capsys.readouterr().out
