"""Evaluation metrics: dist-n by hand, perplexity against a direct computation, stored metrics, eval rows."""

from __future__ import annotations

import math

import pytest
import torch
from sqlmodel import select

from alt_engine import conditioning
from alt_engine.db import Feedback, Generation, ModelVersion, Prompt, Task, init_db, session_scope
from alt_engine.evaluation import EvalConfig, distinct_n, evaluate_version, is_better, response_nll
from alt_engine.feedback import make_provider
from alt_engine.pool import build_pool
from alt_engine.settings import Settings
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
    assert is_better({"exemplar_share": 0.5}, {"exemplar_share": 0.4}, "exemplar_share")
    assert is_better({"perplexity": 3.0}, {"perplexity": 4.0}, "perplexity")
    assert not is_better({"perplexity": 5.0}, {"perplexity": 4.0}, "perplexity")
    assert not is_better({}, {"exemplar_share": 0.1}, "exemplar_share")


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


def test_evaluate_version_stores_metrics_and_eval_generations(tiny_db):
    db, task, base_id, child_id = tiny_db
    settings = Settings(db=db, device="cpu")
    provider = make_provider("rule:concise:2,4,6,8", settings, task)
    cfg = EvalConfig(n=2, max_new_tokens=12, seed=3)
    metrics = evaluate_version(db, settings, child_id, task, provider, cfg)
    with session_scope(db) as s:
        stored = s.get(ModelVersion, child_id).metrics
        gens = list(s.exec(select(Generation)))
        fb = list(s.exec(select(Feedback)))
    assert stored["train_loss"] == 1.5  # earlier keys kept
    assert stored["perplexity"] == pytest.approx(metrics["perplexity"]) and metrics["perplexity"] > 1
    assert len(gens) == 6 and all(g.round_id is None and g.model_version_id == child_id for g in gens)
    assert all(g.sampling_params["purpose"] == "eval" and g.conditioning == "Excellent" for g in gens)
    assert len(fb) == 6 and {f.source for f in fb} == {"rule:concise:2,4,6,8"}
    assert sum(metrics["category_share"].values()) == pytest.approx(1.0)
    assert metrics["exemplar_share"] == metrics["category_share"]["Excellent"]
    assert metrics["mean_length"] == pytest.approx(sum(g.response_tokens for g in gens) / 6)
    assert metrics["pct_truncated"] == pytest.approx(100 * sum(g.truncated for g in gens) / 6)
    assert 0 < metrics["dist1"] <= 1 and metrics["eval"]["probe_prompts"] == 3
    assert build_pool(db, task.id, policy="accumulate") == []  # eval generations never reach training
    base = evaluate_version(db, settings, base_id, task, None, cfg)  # base: unconditioned, no provider
    assert base["eval"]["conditioning"] is None and "category_share" not in base
    assert math.isfinite(base["perplexity"])


def test_no_probe_prompts_is_a_clear_error(tiny_db):
    db, task, base_id, _ = tiny_db
    with session_scope(db) as s:
        for p in s.exec(select(Prompt)):
            p.split = "train"
    with pytest.raises(ValueError, match="no probe prompts"):
        evaluate_version(db, Settings(db=db, device="cpu"), base_id, task)
