"""One planner for every place a job starts (alt_engine/plan.py): the console's and the CLI's training and round jobs
are the same spec — and train on the same pool — for the same inputs, each left at its defaults. Before the planner
the console's Start training left out max_per_prompt (uncapped where the CLI caps at 2), took `exclude` for a demo
task whose own truncation policy is `worst`, and skipped the all-truncated check."""

from __future__ import annotations

import html
import json
from types import SimpleNamespace

import pytest
from sqlmodel import select

from alt_engine.db import Generation, Job, ModelVersion, Round, Task, session_scope
from alt_engine.jobs import run_job_inline
from alt_engine.plan import RoundSpec, TrainSpec, defaults, plan_sample
from alt_engine.pool import build_pool
from alt_engine.sampling import SamplingParams
from alt_engine.settings import Settings
from alt_engine.users import add_user
from app.cli import main

ADMIN = SimpleNamespace(username="admin")
PROMPTS = [f"Question number {i}: what is {i} + {i}?" for i in range(6)]


@pytest.fixture
def studio(db, tmp_path, tiny_model_dir, monkeypatch):
    """The concise demo task with one round of 6 prompts × 4 from a tiny model, labelled by the demo's rule; the
    console's tabs; jobs queued, not run (the test reads what each front end queued)."""
    import gradio as gr

    from app.auth import Auth
    from app.console import build_console

    monkeypatch.setattr("alt_engine.jobs.queue.ensure_worker", lambda db: None)
    monkeypatch.setenv("ALT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    add_user(db, "admin", "adminpass1", "admin")
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": "train" if i < 4 else "probe"}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    base = ["--db", db, "--model", tiny_model_dir]
    assert main(["prompts", "import", str(prompts), "--task", "concise", *base]) == 0
    assert main(["sample", "--task", "concise", "--n", "4", "--max-new-tokens", "300", *base]) == 0
    assert main(["feedback", "--task", "concise", "--provider", "rule:concise:auto", *base]) == 0
    settings = Settings(db=db, device="cpu", models_dir=str(tmp_path / "models"), secret_key="s" * 32,
                        model=tiny_model_dir)
    with gr.Blocks():
        tabs = {type(t).__name__: t for t in build_console(settings, Auth(settings))}
    return SimpleNamespace(db=db, base=base, tabs=tabs)


def _queued(db: str, kind: str) -> Job:
    with session_scope(db) as s:
        return s.exec(select(Job).where(Job.kind == kind).order_by(Job.id.desc())).first()


def _defaults(components) -> list:
    return [c.value for c in components]


def test_console_and_cli_training_jobs_are_one_spec_and_one_pool(studio):
    db = studio.db
    with session_scope(db) as s:
        round_id = s.exec(select(Round.id)).one()
        assert s.exec(select(Generation).where(Generation.truncated)).first() is not None  # the demo's policy matters
    assert main(["train", "--task", "concise", "--background", *studio.base]) == 0
    cli = _queued(db, "train")
    training = studio.tabs["TrainingTab"]
    form = _defaults(training.form)
    form[0] = [round_id]  # the one choice a form has no default for: the round
    assert "Queued" in training._train(*form, ADMIN)
    console = _queued(db, "train")
    assert console.id != cli.id
    a, b = TrainSpec.from_params(cli.params), TrainSpec.from_params(console.params)
    assert a == b
    assert a.pool.max_per_prompt == 2 and a.pool.truncated == "worst" and a.pool.round_ids == (round_id,)
    with session_scope(db) as s:
        task = s.exec(select(Task).where(Task.name == "concise")).one()
    pool_a, pool_b = build_pool(db, task.id, **a.pool.kwargs()), build_pool(db, task.id, **b.pool.kwargs())
    assert [p.generation_id for p in pool_a] == [p.generation_id for p in pool_b] and pool_a
    assert max(sum(p.prompt_id == q for p in pool_a) for q in {p.prompt_id for p in pool_a}) <= 2  # capped


def test_console_and_cli_round_jobs_are_one_spec(studio):
    db = studio.db
    assert main(["round", "--task", "concise", "--background", *studio.base]) == 0
    cli = _queued(db, "round")
    rounds = studio.tabs["RoundsTab"]
    form = _defaults(rounds.round_form)
    form[0] = "concise"  # the task; everything else at the form's defaults
    message = rounds._start_round(*form, ADMIN)
    assert "Queued round job" in message
    console = _queued(db, "round")
    assert console.id != cli.id
    a, b = RoundSpec.from_params(cli.params), RoundSpec.from_params(console.params)
    assert a == b
    assert a.provider == "rule:concise:auto" and a.round.sampling.max_new_tokens == SamplingParams.max_new_tokens
    assert a.round.max_per_prompt == 2 and a.round.truncated == "worst" and a.round.limit == 32
    assert a.pool([7]) == TrainSpec.from_params(dict(task_id=1, parent_version_id=1, round_ids=[7], k_per_category=2,
                                                     policy="flush", max_per_prompt=2, truncated="worst",
                                                     seed=a.config.get("seed", 0))).pool


def test_console_sampling_defaults_are_the_planner_s(studio):
    """The console's sampling form starts where `alt sample` and rounds do: 160 new tokens (it was 64, and 44 of
    48 answers of the default model truncated)."""
    rounds = studio.tabs["RoundsTab"]
    d = defaults("concise")
    assert d.max_new_tokens == SamplingParams.max_new_tokens == 160
    shown = {c.elem_id: c.value for c in rounds.round_form if c.elem_id}
    assert shown["console-round-max-tokens"] == 160 and shown["console-round-n"] == 4
    with session_scope(studio.db) as s:
        task = s.exec(select(Task).where(Task.name == "concise")).one()
    assert plan_sample(task).sampling.max_new_tokens == 160
    rounds._sample("concise", None, None, 4, 1.0, 0.9, 160, "auto (exemplar if trained)", "", ADMIN)
    assert _queued(studio.db, "sample").params["sampling"]["max_new_tokens"] == 160


def test_an_unusable_pool_is_refused_with_its_cause_and_fix(studio, capsys):
    """All truncated and `exclude`: refused before a job exists, naming truncation and how many tokens it was
    sampled at (the console once showed only "Error")."""
    from app.console import refusable

    training = studio.tabs["TrainingTab"]
    with session_scope(studio.db) as s:
        round_id = s.exec(select(Round.id)).one()
        for g in s.exec(select(Generation)):
            g.truncated = True
    form = _defaults(training.form)
    form[0], form[12] = [round_id], "exclude"
    before = len(_queued_all(studio.db))
    shown = html.unescape(refusable(training._train, ["message"], "message")(*form, ADMIN))
    assert "Refused" in shown and "16 of 16 labelled generations were truncated at 300 new tokens" in shown
    assert "Fix: sample with 600 max new tokens" in shown and "'last'" in shown
    assert len(_queued_all(studio.db)) == before  # no job
    assert main(["train", "--task", "concise", "--truncated", "exclude", *studio.base]) == 1  # the CLI says the same
    assert "were truncated at 300 new tokens" in capsys.readouterr().err


def _queued_all(db: str) -> list:
    with session_scope(db) as s:
        return list(s.exec(select(Job.id)))


def test_a_job_runs_the_spec_it_was_given(studio):
    """The train job consumes its TrainSpec: the version's data is the planned pool."""
    db = studio.db
    assert main(["train", "--task", "concise", "--background", "--max_steps", "1", "--report_to", "none",
                 *studio.base]) == 0
    job = _queued(db, "train")
    spec = TrainSpec.from_params(job.params)
    assert run_job_inline(db, job.id).status == "succeeded"
    with session_scope(db) as s:
        task = s.exec(select(Task).where(Task.name == "concise")).one()
        version = s.get(ModelVersion, s.get(Job, job.id).version_id)
        trained = version.metrics["examples"]
    assert trained == len(build_pool(db, task.id, **spec.pool.kwargs()))
