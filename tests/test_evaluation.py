"""Evaluation metrics: dist-n by hand, perplexity against a direct computation, stored metrics, eval rows."""

from __future__ import annotations

import math

import pytest
import torch
from sqlmodel import select

from alt_engine import conditioning
from alt_engine.db import Feedback, Generation, ModelVersion, Prompt, Round, Task, init_db, session_scope
from alt_engine.evaluation import (
    EvalConfig,
    compare,
    distinct_n,
    evaluate_version,
    is_better,
    label_diagnostic,
    response_logprobs,
    response_nll,
)
from alt_engine.feedback import make_provider
from alt_engine.pool import build_pool
from alt_engine.settings import Settings
from alt_engine.stats import gap_ci, per_prompt_ci, ratio_ci
from alt_engine.tiny import save_tiny, tiny_model, tiny_tokenizer


def test_distinct_n_by_hand():
    # prompt A: "a b a" + "a b" → 5 words; unigrams {a,b}=2; bigrams {ab, ba}=2; trigrams {aba}=1
    # prompt B: "x y z" → 3 words; 3 unigrams, 2 bigrams, 1 trigram
    texts = [["a b a", "a b"], ["x y z"]]
    assert distinct_n(texts, 1) == pytest.approx((2 / 5 + 3 / 3) / 2)
    assert distinct_n(texts, 2) == pytest.approx((2 / 5 + 2 / 3) / 2)
    assert distinct_n(texts, 3) == pytest.approx((1 / 5 + 1 / 3) / 2)
    assert distinct_n([[""]], 1) == 0.0


def test_response_nll_matches_one_by_one_computation():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    prompts, responses = ["Hello, how are you?", "Be concise."], ["I am fine.", "The quick brown"]
    truncated = [False, True]
    total, count = response_nll(model, tok, prompts, responses, truncated, batch_size=2)
    want, n = 0.0, 0
    for p, r, t in zip(prompts, responses, truncated):
        ex = conditioning.build_training_example(tok, p, None, r, t)
        ids = torch.tensor([ex.input_ids + ex.response_ids])
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        for k, token in enumerate(ex.response_ids):
            want -= logp[len(ex.input_ids) + k - 1, token].item()
        n += len(ex.response_ids)
    assert count == n == len(tok("I am fine.")["input_ids"]) + 1 + len(tok("The quick brown")["input_ids"])
    assert total == pytest.approx(want, rel=1e-4)


def test_is_better_direction():
    # without per-prompt data: point estimates (lower is better for perplexity), or intervals when both have them
    assert is_better({"perplexity": 3.0}, {"perplexity": 4.0}, "perplexity")
    assert not is_better({"perplexity": 5.0}, {"perplexity": 4.0}, "perplexity")
    assert not is_better({}, {"exemplar_share": 0.1}, "exemplar_share")
    assert not is_better({"steerability_gap": 0.3, "steerability_gap_ci": [0.1, 0.5]},
                         {"steerability_gap": 0.2, "steerability_gap_ci": [0.0, 0.4]}, "steerability_gap")


def test_is_better_decides_on_the_interval_not_the_point():
    """A higher point estimate that chance explains is not better; a consistent gain over prompts is."""
    noisy_new = {"per_prompt": {"exemplar_share": {str(i): [float(i % 2)] for i in range(30)}}}
    noisy_old = {"per_prompt": {"exemplar_share": {str(i): [float(i % 3 == 0)] for i in range(30)}}}
    assert compare(noisy_new, noisy_old, "exemplar_share").value > 0  # 0.5 vs 0.33 ...
    assert not is_better(noisy_new, noisy_old, "exemplar_share")  # ... but the CI includes 0
    steady_new = {"per_prompt": {"exemplar_share": {str(i): [1.0, 1.0, 0.0] for i in range(30)}}}
    steady_old = {"per_prompt": {"exemplar_share": {str(i): [1.0, 0.0, 0.0] for i in range(30)}}}
    assert is_better(steady_new, steady_old, "exemplar_share")


def test_bootstrap_intervals_by_hand():
    # two prompts: hits 0/2 and 2/2 → share 0.5; resamples give 0 (p1,p1), 0.5 (mixed) or 1 (p2,p2), so the
    # 95% percentile interval over 2000 resamples is [0, 1]
    est = ratio_ci([0, 2], [2, 2])
    assert (est.value, est.low, est.high, est.prompts) == (0.5, 0.0, 1.0, 2)
    # uneven generations per prompt: a ratio over all generations, not a mean of per-prompt shares
    assert per_prompt_ci({"a": [1, 1, 1], "b": [0]}).value == pytest.approx(0.75)
    # paired gap: a = {p1: 1, 1; p2: 0, 1}, b = {p1: 0, 0; p2: 0, 1} → 3/4 − 1/4 = 0.5; resampled pairs
    # give 1 (p1,p1), 0 (p2,p2) or 0.5 (mixed) → [0, 1]
    gap = gap_ci({"p1": [1, 1], "p2": [0, 1]}, {"p1": [0, 0], "p2": [0, 1]})
    assert (gap.value, gap.low, gap.high) == (0.5, 0.0, 1.0)
    assert not gap.excludes(0)
    same_every_prompt = gap_ci({i: [1.0] for i in range(10)}, {i: [0.0] for i in range(10)})
    assert (same_every_prompt.low, same_every_prompt.high) == (1.0, 1.0) and same_every_prompt.excludes(0)
    assert gap_ci({"x": [1]}, {"y": [1]}).prompts == 0  # no prompt in common: no estimate


@pytest.fixture
def tiny_db(tmp_path):
    path = save_tiny(tmp_path / "tiny")
    db = str(tmp_path / "eval.db")
    init_db(db)
    with session_scope(db) as s:
        task = Task(name="t", categories=["Excellent", "Good", "Mediocre", "Bad", "Horrible"])
        s.add(task)
        s.flush()
        probes = ("Hello?", "Write a short answer.", "Hello?")
        s.add_all([Prompt(task_id=task.id, text=t, split="probe") for t in probes])
        s.add(Prompt(task_id=task.id, text="train only"))
        base = ModelVersion(name="v0-base", path=path, status="served")
        s.add(base)
        s.flush()
        child = ModelVersion(name="v1-alt", path=path, parent_id=base.id, objective="alt", metrics={"train_loss": 1.5})
        s.add(child)
        s.flush()
        return db, task, base.id, child.id


def test_evaluate_version_stores_metrics_steerability_and_eval_generations(tiny_db):
    db, task, base_id, child_id = tiny_db
    settings = Settings(db=db, device="cpu")
    provider = make_provider("rule:concise:2,4,6,8", settings, task)
    cfg = EvalConfig(n=2, max_new_tokens=12, seed=3)
    with pytest.warns(UserWarning, match="too few"):
        metrics = evaluate_version(db, settings, child_id, task, provider, cfg)
    with session_scope(db) as s:
        stored = s.get(ModelVersion, child_id).metrics
        gens = list(s.exec(select(Generation).order_by(Generation.id)))
        labels = {f.generation_id: f.category for f in s.exec(select(Feedback))}
        assert {f.source for f in s.exec(select(Feedback))} == {"rule:concise:2,4,6,8"}  # the arguments kept
    assert stored["train_loss"] == 1.5  # earlier keys kept
    assert stored["perplexity"] == pytest.approx(metrics["perplexity"]) and metrics["perplexity"] > 1
    # 3 probe prompts × n=2 under the best category, and again under the worst (steerability)
    best = [g for g in gens if g.conditioning == "Excellent"]
    worst = [g for g in gens if g.conditioning == "Horrible"]
    assert len(best) == len(worst) == 6 and len(gens) == 12
    assert all(g.round_id is None and g.model_version_id == child_id and g.sampling_params["purpose"] == "eval"
               for g in gens)
    assert len(labels) == 12 and metrics["warnings"]
    # shares and the gap by hand, from what was stored
    share = {c: sum(labels[g.id] == c for g in best) / 6 for c in task.categories}
    assert metrics["category_share"] == pytest.approx(share)
    assert metrics["exemplar_share"] == pytest.approx(share["Excellent"])
    lo, hi = metrics["exemplar_share_ci"]
    assert lo <= metrics["exemplar_share"] <= hi
    worst_share = sum(labels[g.id] == "Excellent" for g in worst) / 6
    steer = metrics["steer"]["exemplar_share"]
    assert steer["best"] == pytest.approx(share["Excellent"]) and steer["worst"] == pytest.approx(worst_share)
    assert metrics["steerability_gap"] == pytest.approx(share["Excellent"] - worst_share)
    assert metrics["mean_length"] == pytest.approx(sum(g.response_tokens for g in best) / 6)
    assert metrics["pct_truncated"] == pytest.approx(100 * sum(g.truncated for g in best) / 6)
    assert 0 < metrics["dist1"] <= 1 and metrics["eval"]["probe_prompts"] == 3
    assert metrics["eval"]["provider"] == provider.name and metrics["eval"]["format"]["placement"] == "system"
    assert build_pool(db, task.id, policy="accumulate") == []  # eval generations never reach training
    base = evaluate_version(db, settings, base_id, task, None, EvalConfig(n=2, max_new_tokens=12, conditioned=False))
    assert base["eval"]["conditioning"] is None and "category_share" not in base
    assert math.isfinite(base["perplexity"])


def test_eval_length_follows_the_rounds_sampling(tiny_db):
    from alt_engine.evaluation import eval_max_new_tokens

    db, task, _, _ = tiny_db
    assert eval_max_new_tokens(db, task, EvalConfig()) == 160  # nothing sampled yet: the default
    with session_scope(db) as s:
        rnd = Round(task_id=task.id, number=1)
        s.add(rnd)
        s.flush()
        prompt = s.exec(select(Prompt)).first()
        s.add(Generation(prompt_id=prompt.id, round_id=rnd.id, response="x", sampling_params={"max_new_tokens": 99}))
    assert eval_max_new_tokens(db, task, EvalConfig()) == 99
    assert eval_max_new_tokens(db, task, EvalConfig(max_new_tokens=7)) == 7


def test_label_diagnostic_matches_direct_log_likelihoods():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    fmt = conditioning.Format("system")
    examples = [("Hello?", "I am fine.", False, "Excellent", "Horrible"),
                ("Be concise.", "The quick brown", True, "Horrible", "Excellent")]
    got = label_diagnostic(model, tok, fmt, examples)

    def direct(prompt, response, truncated, label):
        ex = conditioning.build_training_example(tok, prompt, label, response, truncated, fmt)
        ids = torch.tensor([ex.input_ids + ex.response_ids])
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        lps = [logp[len(ex.input_ids) + k - 1, t].item() for k, t in enumerate(ex.response_ids)]
        return sum(lps), lps[-1]

    gaps = [direct(p, r, t, own)[0] - direct(p, r, t, other)[0] for p, r, t, own, other in examples]
    assert got["ll_gap"] == pytest.approx(sum(gaps) / 2, abs=1e-4)
    eos = direct(*examples[0][:3], "Excellent")[1] - direct(*examples[0][:3], "Horrible")[1]
    assert got["eos_gap"] == pytest.approx(eos, abs=1e-4)  # the truncated response has no EOS to compare
    assert got["responses"] == 2
    one = conditioning.build_training_example(tok, "Hi", None, "ok")
    assert len(response_logprobs(model, [one])[0]) == len(one.response_ids)  # response tokens + EOS


def test_no_probe_prompts_is_a_clear_error(tiny_db):
    db, task, base_id, _ = tiny_db
    with session_scope(db) as s:
        for p in s.exec(select(Prompt)):
            p.split = "train"
    with pytest.raises(ValueError, match="no probe prompts"):
        evaluate_version(db, Settings(db=db, device="cpu"), base_id, task)
