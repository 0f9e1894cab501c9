"""`alt feedback | train | eval | round` driven through app.cli.main on a tiny model saved to disk."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import select

from alt_engine.db import Feedback, Generation, Job, ModelVersion, Round, session_scope
from app.cli import main

PROMPTS = [("Hello, how are you?", "train"), ("Write a short answer.", "train"), ("Be concise and helpful.", "train"),
           ("The quick brown fox?", "train"), ("Harmless and helpful?", "probe"), ("0123456789?", "probe")]


@pytest.fixture
def cli(tmp_path, tiny_model_dir, monkeypatch):
    """Run `alt ...` on a temp database with the tiny model; returns (run, db path)."""
    db = str(tmp_path / "cli.db")
    monkeypatch.setenv("ALT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))

    def run(*argv: str) -> int:
        return main([argv[0], *argv[1:], "--db", db, "--model", tiny_model_dir])

    assert run("init") == 0
    assert run("prompts", "import", str(prompts)) == 0
    return run, db


def versions(db):
    with session_scope(db) as s:
        return list(s.exec(select(ModelVersion).order_by(ModelVersion.id)))


# a random tiny model never stops within a few tokens: its truncated samples must enter the pool here
TRAIN = ("--epochs", "1", "--batch_size", "4", "--report_to", "none", "--truncated", "last")


@pytest.mark.slow  # ~10 s on an idle machine, ~25 s when the 2 cores are shared
def test_two_rounds_make_two_versions_with_metrics(cli, capsys, monkeypatch):
    from alt_engine import modeling

    run, db = cli
    loads = []
    modeling.release()
    monkeypatch.setattr(modeling, "load_model", lambda path, *a, _load=modeling.load_model, **k:
                        loads.append(path) or _load(path, *a, **k))
    assert run("round", "--provider", "rule:concise:2,4,6,8", "--n", "3", "--max-new-tokens", "10", "--rounds", "2",
               "--promote", "always", "--eval-max-new-tokens", "8", *TRAIN) == 0
    out = capsys.readouterr().out
    assert "wall time: sample=" in out and "train=" in out and "evaluate=" in out
    base, v1, v2 = versions(db)
    assert (v1.parent_id, v2.parent_id) == (base.id, v1.id)
    assert v2.status == "served" and v1.status == "ready" and base.status == "ready"
    for v in (base, v1, v2):
        assert v.metrics["perplexity"] > 1 and 0 <= v.metrics["dist2"] <= 1 and "category_share" in v.metrics
    assert v1.metrics["train_loss"] > 0 and v1.metrics["round"]["number"] == 1
    assert set(v2.metrics["round"]["wall_s"]) >= {"sample", "feedback", "pool", "train", "evaluate", "total"}
    # the parent is evaluated once: round 1 evaluated the base, round 2 reuses round 1's evaluation of v1
    assert "evaluate_parent" in v1.metrics["round"]["wall_s"] and "evaluate_parent" not in v2.metrics["round"]["wall_s"]
    # one load per model: sampling, both conditionings, the parent's evaluation, perplexity and the diagnostic
    # share it (training loads its own trainable copy)
    assert sorted(loads) == sorted([base.path, v1.path, v2.path])
    with session_scope(db) as s:
        rounds = list(s.exec(select(Round).order_by(Round.number)))
        assert [r.status for r in rounds] == ["closed", "closed"]  # trained on, then promoted
        assert json.loads(rounds[1].notes)["version_id"] == v2.id
        gens = {r.number: list(s.exec(select(Generation).where(Generation.round_id == r.id))) for r in rounds}
        assert all(g.conditioning is None for g in gens[1])  # round 1: base model, unconditioned
        # round 2: trained model, exemplar; by default (--explore 0.5) 1 of the 3 samples per prompt explores
        # under the worst feedback
        assert sorted(g.conditioning for g in gens[2]) == ["Excellent"] * 8 + ["Horrible"] * 4
        assert len(gens[1]) == 4 * 3 and {j.status for j in s.exec(select(Job))} == {"succeeded"}

    # the pieces one by one: feedback is idempotent per provider, eval stores metrics on the chosen version
    assert run("feedback", "--provider", "rule:concise:2,4,6,8") == 0
    assert "stored 0, skipped 0, already labelled 12" in capsys.readouterr().out
    assert run("eval", "--version", str(v1.id), "--provider", "rule:length", "--seed", "5",
               "--max-new-tokens", "6") == 0
    assert "perplexity" in capsys.readouterr().out
    assert versions(db)[1].metrics["eval"]["provider"] == "rule:length:10,20,30,40"  # resolved: the arguments kept


def test_train_refuses_no_feedback_and_a_single_category(cli, capsys):
    run, db = cli
    assert run("sample", "--n", "2", "--max-new-tokens", "6") == 0
    before = len(versions(db))
    assert run("train", *TRAIN) == 1
    assert "no feedback yet" in capsys.readouterr().err
    assert run("feedback", "--provider", "rule:keyword:zzzz") == 0  # nothing matches: every label is the worst
    with session_scope(db) as s:
        assert {f.category for f in s.exec(select(Feedback))} == {"Horrible"}
    assert run("train", *TRAIN) == 1
    assert "only one feedback category" in capsys.readouterr().err
    assert len(versions(db)) == before
    with session_scope(db) as s:
        assert list(s.exec(select(Job).where(Job.kind == "train"))) == []  # sample, feedback: jobs too
    assert run("feedback", "--provider", "rule:nope") == 1
    assert "unknown rule" in capsys.readouterr().err
    assert run("train", "--round", "7", *TRAIN) == 1
    assert "no round 7" in capsys.readouterr().err
    assert run("round", "--provider", "rule:concise", "--metric", "vibes", *TRAIN) == 1
    assert "unknown metric 'vibes'" in capsys.readouterr().err
    with session_scope(db) as s:
        assert len(list(s.exec(select(Round)))) == 1  # the refused round left nothing behind


def test_train_in_the_foreground_and_in_the_background(cli, capsys):
    from alt_engine.jobs import wait_job

    run, db = cli

    def round_status() -> str:
        with session_scope(db) as s:
            return s.exec(select(Round)).one().status

    assert run("sample", "--n", "4", "--max-new-tokens", "8") == 0
    assert round_status() == "labelling"
    assert run("feedback", "--provider", "rule:concise:2") == 0  # 8 tokens: 2-3 words
    assert run("train", "--lora", "--max_steps", "2", *TRAIN) == 0
    assert "not served yet" in capsys.readouterr().out
    assert round_status() == "trained"  # closed for annotation from the moment training started
    assert run("train", "--background", "--max_steps", "1", *TRAIN) == 0
    job_id = int(re.search(r"started training job (\d+)", capsys.readouterr().out).group(1))
    job = wait_job(db, job_id, timeout=120)
    assert job.status == "succeeded", job.error
    base, lora, full = versions(db)
    assert lora.status == full.status == "ready" and base.status == "served"  # training never changes serving
    assert lora.hyperparameters["lora"] is True and full.id == job.result["version_id"]
    assert run("models", "promote", str(full.id)) == 0
    assert round_status() == "closed"  # the version trained on it is served: the round's work is done


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["cut", "cnr", "quark"])
def test_round_with_each_objective_from_the_cli(cli, capsys, objective):
    """`alt round --objective X`: CUT and CnR on the judgments / critique + revision a rule writes offline,
    Quark with its control tokens masked while sampling; the version is named, formatted and trained as X."""
    run, db = cli
    assert run("round", "--provider", "rule:critique:concise:2,4,6,8", "--objective", objective, "--n", "3",
               "--max-new-tokens", "10", "--promote", "always", "--eval-max-new-tokens", "8", "--eval-no-steer",
               "--mask-control-tokens", *TRAIN) == 0
    base, new = versions(db)
    assert new.objective == objective and new.name.endswith(f"-{objective}") and new.status == "served"
    assert new.conditioning["placement"] == ("tokens" if objective == "quark" else "none")
    assert new.hyperparameters["examples"] > 0 and new.metrics["train_loss"] > 0
    with session_scope(db) as s:
        kinds = {f.kind for f in s.exec(select(Feedback))}
        sampled = [g.sampling_params for g in s.exec(select(Generation).where(Generation.round_id.is_not(None)))]
    assert {"category", "judgment", "critique"} <= kinds
    assert all(sp.get("mask_control_tokens") for sp in sampled)  # the round's sampling took the option
