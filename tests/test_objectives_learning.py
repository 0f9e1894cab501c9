"""On the tiny synthetic task (UPPERCASE = best, lowercase = the flaw) every objective learns.

quark / steerlm: conditioned on the best feedback ≥ 90% UPPERCASE (and the worst ≤ 10%); sft: ≥ 90%
UPPERCASE with no feedback; cut: from a model that writes lowercase half the time, the judged flaw's rate
falls by at least half; cnr: its revision pass (``revise.revise``) turns ≥ 90% of lowercase answers
UPPERCASE. The real path: ``run.train`` with the objective's config → saved model → sampling.
"""

from __future__ import annotations

import random

import pytest
from test_learning import PHRASES, PROMPTS, STYLE, pool, share_upper, style

from alt_engine import conditioning
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.pool import PoolItem
from alt_engine.sampling import SamplingParams, TransformersBackend
from alt_engine.tiny import tiny_model, tiny_tokenizer
from alt_engine.training.objectives import make_config
from alt_engine.training.run import train

JUDGMENT = "It is in lowercase."
FAST = dict(learning_rate=1e-2, epochs=10, batch_size=8, save_steps=100000, report_to="none", logging_steps=10)


@pytest.fixture
def base(tmp_path) -> str:
    tokenizer = tiny_tokenizer(PHRASES + [p.upper() for p in PHRASES] + PROMPTS +
                               ["Critique: It is in lowercase.\nRevision:", "Critique your answer, then revise it."])
    path = str(tmp_path / "base")
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def share_unconditioned(path: str, kind: str = "lower", prompt=lambda p: p) -> float:
    """Share of generations on the plain prompt (or ``prompt(p)``) whose style is ``kind`` ("upper" | "lower")."""
    tokenizer = load_tokenizer(path)
    backend = TransformersBackend(load_model(path, device="cpu"), tokenizer)
    inputs = [conditioning.prompt_ids(tokenizer, prompt(p)) for p in PROMPTS[:8]]
    texts = [s.text for row in backend.generate(inputs, SamplingParams(n=4, max_new_tokens=12, seed=1)) for s in row]
    return sum(style(t) == kind for t in texts) / len(texts)


def share_lower_unconditioned(path: str) -> float:
    return share_unconditioned(path, "lower")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quark", "steerlm"])
def test_conditioned_objectives_learn_the_best_style(tmp_path, base, name):
    from alt_engine.training.quark import control_tokens
    from alt_engine.training.steerlm import default_attributes

    cats = list(STYLE)  # Excellent (upper), Horrible (lower)
    fmt = conditioning.Format("tokens", tokens=control_tokens(cats)) if name == "quark" else \
        conditioning.Format("system", attributes=default_attributes(cats))
    # SteerLM's strings differ in one digit ("quality:1" / "quality:0"): it needs more passes than a token
    epochs = 10 if name == "quark" else 20
    metrics = train(base, pool(), make_config(name, **{**FAST, "epochs": epochs}), str(tmp_path / "out"), fmt)
    stored = conditioning.Format.from_dict(metrics["conditioning"])
    assert stored == fmt and metrics["nll"] < 0.5
    out = str(tmp_path / "out")
    assert share_upper(out, "Excellent", stored) >= 0.9
    assert share_upper(out, "Horrible", stored) <= 0.1


@pytest.mark.slow
def test_sft_learns_the_best_style_without_feedback(tmp_path, base):
    best = [it for it in pool() if it.feedback == "Excellent"]  # what objectives' sft pool keeps
    assert share_unconditioned(base, "upper") < 0.5  # untrained: not the best style
    metrics = train(base, best, make_config("sft", **FAST), str(tmp_path / "out"))
    assert metrics["conditioning"]["placement"] == "none"
    assert share_unconditioned(str(tmp_path / "out"), "upper") >= 0.9  # the best style itself, not "not lower"


def mixed() -> list[PoolItem]:
    """Each prompt answered twice in each case, no feedback in the input."""
    rng, items = random.Random(1), []
    for prompt_id, prompt in enumerate(PROMPTS):
        for upper in (True, False, True, False):
            phrase = rng.choice(PHRASES)
            n = len(items)
            items.append(PoolItem(n, n, prompt_id, prompt, "Excellent", phrase.upper() if upper else phrase, False))
    return items


def judged(prompt: str) -> list[dict]:
    """``prompt`` with the judgment where CUT's (x, j) view puts it (the system message)."""
    from alt_engine.training.cut import JUDGMENT_FORMAT

    return [{"role": "system", "content": JUDGMENT_FORMAT.text(JUDGMENT)}, {"role": "user", "content": prompt}]


@pytest.mark.slow
def test_cut_halves_the_judged_flaw(tmp_path, base):
    # the start: writes lowercase about half the time and, like an LLM, reads a judgment — lowercase follows
    # "Judgment: It is in lowercase." in the system message, where CUT's (x, j) view puts it. CUT's contrast
    # needs that: a start that barely reads j (4 epochs here: p(lowercase opening | x, j) 0.75 vs 0.59 | x)
    # gives a ratio near 1, and the MLE on y | x, j and on the negatives' other tokens outweighs the UL.
    reads_j = [PoolItem(it.generation_id + 1000, 0, it.prompt_id, judged(it.prompt), "", it.response, False)
               for it in mixed() if not it.response.isupper()]
    start = str(tmp_path / "start")
    train(base, mixed() + reads_j, make_config("sft", **FAST), start)
    before = share_lower_unconditioned(start)
    assert 0.25 <= before <= 0.75
    assert share_unconditioned(start, "lower", judged) >= 0.9  # the judgment is readable
    items = [PoolItem(it.generation_id, it.feedback_id, it.prompt_id, it.prompt,
                      "Excellent" if it.response.isupper() else JUDGMENT, it.response, False,
                      negative=not it.response.isupper()) for it in mixed()]
    options = {**FAST, "epochs": 4, "learning_rate": 3e-3, "lora": False, "merge_lora": False}
    metrics = train(start, items, make_config("cut", **options), str(tmp_path / "out"))
    assert metrics["conditioning"]["placement"] == "none" and metrics["steps"] > 0
    after = share_lower_unconditioned(str(tmp_path / "out"))
    assert after <= before / 2, (before, after)
    # the control: no token passes the ratio threshold, so the negatives get MLE — the flaw does not fall
    control = make_config("cut", **options, ul_threshold=1e6)
    train(start, items, control, str(tmp_path / "control"))
    assert share_lower_unconditioned(str(tmp_path / "control")) > before / 2


@pytest.mark.slow
def test_cnr_revision_pass_fixes_the_flaw(tmp_path, base):
    from alt_engine.revise import final_answer, revise

    rng, items = random.Random(2), []
    for prompt_id, prompt in enumerate(PROMPTS):
        for phrase in rng.sample(PHRASES, 2):
            n = len(items)
            items.append(PoolItem(n, n, prompt_id, prompt, "It is in lowercase.", phrase, False,
                                  revision=phrase.upper()))
    metrics = train(base, items, make_config("cnr", **FAST), str(tmp_path / "out"))
    assert metrics["conditioning"]["placement"] == "none"
    out = str(tmp_path / "out")
    backend = TransformersBackend(load_model(out, device="cpu"), load_tokenizer(out))
    fixed = total = 0
    for prompt in PROMPTS[:8]:
        for phrase in PHRASES:
            steps = revise(backend, prompt, phrase, passes=2, params=SamplingParams(n=1, temperature=0,
                                                                                    max_new_tokens=24))
            fixed += style(final_answer(steps, phrase)) == "upper"
            total += 1
    assert fixed / total >= 0.9, (fixed, total)
