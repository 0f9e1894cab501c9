"""Training jobs: progress and loss in the Job row, crashes and kills leave serving alone, bad pools refused."""

from __future__ import annotations

import os
import signal
import time

import pytest

from alt_engine.db import Feedback, Generation, Job, ModelVersion, Prompt, Round, TrainingExample, select, session_scope
from alt_engine.jobs import get_job, reap_dead_jobs, run_job_inline, start_job, wait_job
from alt_engine.pool import PoolItem
from alt_engine.settings import Settings
from alt_engine.tasks import get_or_create_task
from alt_engine.training.config import AltTrainConfig
from alt_engine.versions import train_model_version

pytestmark = pytest.mark.usefixtures("dbkind")  # every test on SQLite and on PostgreSQL

FAST = dict(learning_rate=1e-3, epochs=1, batch_size=4, report_to="none", save_steps=100000)


def seed(db: str, model_dir: str, categories=("Excellent", "Horrible"), n_prompts: int = 4) -> dict:
    """A served base version, one round, and rule feedback on two generations per prompt."""
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        base = ModelVersion(name="v0-base", path=model_dir, status="served")
        bad = ModelVersion(name="v0-missing", path="/nonexistent/model-dir", status="ready")
        s.add_all([base, bad])
        s.flush()
        rnd = Round(task_id=task.id, number=1, model_version_id=base.id, status="labelling")
        s.add(rnd)
        s.flush()
        items = []
        for i in range(n_prompts):
            prompt = Prompt(task_id=task.id, text=f"Prompt {i}: say hello.")
            s.add(prompt)
            s.flush()
            for j, category in enumerate(categories * (2 // len(categories) or 1)):
                response = "HELLO THERE" if j == 0 else "hello there"
                gen = Generation(prompt_id=prompt.id, round_id=rnd.id, model_version_id=base.id, response=response)
                s.add(gen)
                s.flush()
                fb = Feedback(generation_id=gen.id, source="rule:test", category=category)
                s.add(fb)
                s.flush()
                items.append(PoolItem(gen.id, fb.id, prompt.id, prompt.text, category, response, False, category))
        return {"task_id": task.id, "round_id": rnd.id, "base": base.id, "bad": bad.id, "items": items}


def as_params(items: list[PoolItem]) -> list[dict]:
    from dataclasses import asdict

    return [asdict(i) for i in items]


def versions(db: str) -> list[ModelVersion]:
    with session_scope(db) as s:
        return list(s.exec(select(ModelVersion).order_by(ModelVersion.id)))


def served(db: str) -> int:
    return next(v.id for v in versions(db) if v.status == "served")


@pytest.fixture
def settings(tmp_path, db):
    return {"models_dir": str(tmp_path / "models"), "cache_dir": str(tmp_path / "cache")}


def test_train_job_records_progress_and_a_ready_version(db, tiny_model_dir, settings):
    info = seed(db, tiny_model_dir)
    params = dict(task_id=info["task_id"], round_ids=[info["round_id"]], parent_version_id=info["base"],
                  config={**FAST, "logging_steps": 1, "report_to": "tensorboard"}, settings=settings)
    job = run_job_inline(db, start_job(db, "train", params, background=False))
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0 and job.finished_at is not None
    assert job.log and all("loss" in entry and "step" in entry for entry in job.log)
    version = next(v for v in versions(db) if v.id == job.result["version_id"])
    assert version.status == "ready" and version.parent_id == info["base"]
    assert version.metrics["tokens"] > 0 and version.hyperparameters["beta"] == 0.0  # instruct start: no KL
    with session_scope(db) as s:
        trained_on = sorted(s.exec(select(TrainingExample.feedback_id).where(
            TrainingExample.model_version_id == version.id)))
    assert trained_on == sorted(i.feedback_id for i in info["items"])
    for saved in ("alt_config.json", "feedback_ids.json", "metrics.json", "tokenizer.json", "model.safetensors"):
        assert os.path.exists(os.path.join(version.path, saved)), saved
    events = [f for _, _, files in os.walk(os.path.join(version.path, "tensorboard")) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert served(db) == info["base"]  # training never changes what is served


def test_crashing_job_fails_with_its_error_and_serving_is_unchanged(db, tiny_model_dir, settings):
    info = seed(db, tiny_model_dir)
    params = dict(items=as_params(info["items"]), parent_version_id=info["bad"], config=FAST, settings=settings)
    job = wait_job(db, start_job(db, "train", params), timeout=120)
    assert job.status == "failed"
    assert "/nonexistent/model-dir" in job.error
    new = versions(db)[-1]
    assert new.parent_id == info["bad"] and new.status == "failed" and "error" in new.metrics
    assert served(db) == info["base"]


def test_killed_job_is_reaped_as_failed(db, tiny_model_dir, settings):
    info = seed(db, tiny_model_dir)
    params = dict(items=as_params(info["items"]), parent_version_id=info["base"],
                  config={**FAST, "epochs": 100000.0, "logging_steps": 1}, settings=settings)
    job_id = start_job(db, "train", params)
    deadline = time.monotonic() + 120
    while not get_job(db, job_id).log:  # training is under way
        assert time.monotonic() < deadline, get_job(db, job_id)
        assert get_job(db, job_id).status in ("queued", "running"), get_job(db, job_id).error
        time.sleep(0.3)
    job = get_job(db, job_id)
    assert job.status == "running" and 0 < job.progress < 1
    os.kill(job.pid, signal.SIGKILL)
    job = wait_job(db, job_id, timeout=30)
    assert job.status == "failed" and "killed" in job.error
    assert reap_dead_jobs(db) == []  # nothing left to reap
    new = versions(db)[-1]
    assert new.status == "failed" and new.parent_id == info["base"]
    assert served(db) == info["base"]


@pytest.mark.parametrize("case, message", [("empty", "no feedback yet"), ("single", "only one feedback category")])
def test_unlearnable_pool_is_refused_before_anything_is_written(db, tiny_model_dir, settings, case, message):
    info = seed(db, tiny_model_dir, categories=("Excellent",))
    items = [] if case == "empty" else info["items"]
    before = [(v.id, v.status) for v in versions(db)]
    with pytest.raises(ValueError, match=message):
        train_model_version(db, Settings(db=db, **settings), items, AltTrainConfig(**FAST), info["base"])
    job = run_job_inline(db, start_job(db, "train", dict(items=as_params(items), parent_version_id=info["base"],
                                                         config=FAST, settings=settings), background=False))
    assert job.status == "failed" and message in job.error
    assert [(v.id, v.status) for v in versions(db)] == before
    with session_scope(db) as s:
        assert not s.exec(select(TrainingExample)).all()
        assert len(s.exec(select(Job)).all()) == 1


def test_unknown_job_kind_is_refused(db):
    with pytest.raises(ValueError, match="unknown job kind"):
        start_job(db, "nope", {})


def test_resume_continues_a_failed_version_from_its_checkpoint(db, tiny_model_dir, settings):
    info = seed(db, tiny_model_dir)  # 8 items: 2 steps per epoch at batch size 4
    config = AltTrainConfig(**{**FAST, "epochs": 3, "save_steps": 2, "resume": True})

    def crash_after_checkpoint(fraction: float, logs: dict) -> None:
        if logs.get("step") == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_model_version(db, Settings(db=db, **settings), info["items"], config, info["base"],
                            progress=crash_after_checkpoint)
    failed = versions(db)[-1]
    assert failed.status == "failed" and os.path.isdir(os.path.join(failed.path, "checkpoint-2"))

    version_id = train_model_version(db, Settings(db=db, **settings), info["items"], config, info["base"])
    assert version_id == failed.id  # the same row and directory, continued
    done = versions(db)[-1]
    assert done.status == "ready" and done.metrics["resumed_from"].endswith("checkpoint-2")
    assert done.metrics["steps"] == 6
    assert not [p for p in os.listdir(done.path) if p.startswith("checkpoint-")]  # cleaned up once done
    assert served(db) == info["base"]


@pytest.mark.slow  # five worker processes each import torch: ~60 s on 2 shared cores
def test_jobs_queue_one_at_a_time_cancel_and_retry(db, tiny_model_dir, settings):
    """Two queued jobs run one after the other; cancelling a running one leaves its version and round failed and
    serving alone; a cancelled job can be retried and the retry succeeds."""
    from alt_engine.jobs import cancel_job, create_job, list_jobs, retry_job

    info = seed(db, tiny_model_dir)
    slow = dict(task_id=info["task_id"], round_ids=[info["round_id"]], parent_version_id=info["base"],
                config={**FAST, "epochs": 100000.0, "logging_steps": 1}, settings=settings)
    quick = dict(items=as_params(info["items"]), parent_version_id=info["base"], config={**FAST, "max_steps": 1},
                 settings=settings)
    first = start_job(db, "train", slow)
    second = start_job(db, "train", quick)
    deadline = time.monotonic() + 120
    while not get_job(db, first).log:
        assert time.monotonic() < deadline and get_job(db, first).status in ("queued", "running")
        time.sleep(0.3)
    assert get_job(db, second).status == "queued"  # one job at a time on the model
    with session_scope(db) as s:
        assert s.get(Round, info["round_id"]).status == "training"  # closed for annotation while it trains
    cancel_job(db, first)
    job = wait_job(db, first, timeout=30)
    assert job.status == "cancelled"
    with session_scope(db) as s:
        assert s.get(Round, info["round_id"]).status == "failed"
        assert s.exec(select(ModelVersion).where(ModelVersion.status == "training")).all() == []
    done = wait_job(db, second, timeout=120)
    assert done.status == "succeeded" and done.started_at >= job.finished_at
    assert served(db) == info["base"]
    retried = retry_job(db, first)
    assert get_job(db, retried).retry_of == first
    cancel_job(db, retried)  # still queued or just started: either way it ends cancelled
    assert wait_job(db, retried, timeout=60).status == "cancelled"

    # a queued job nobody runs (the worker died with the machine) is picked up by the next reader
    orphan = create_job(db, "train", quick)
    assert [j.status for j in list_jobs(db) if j.id == orphan] == ["queued"]
    assert wait_job(db, orphan, timeout=120).status == "succeeded"


def test_a_job_without_heartbeat_is_dead(db):
    """A running job on another host whose heartbeat stopped reads as failed for every reader."""
    import datetime as dt

    from alt_engine.jobs import STALE_S, list_jobs

    with session_scope(db) as s:
        job = Job(kind="train", status="running", pid=1, host="elsewhere",
                  heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STALE_S + 5))
        s.add(job)
        s.flush()
        job_id = job.id
    assert [j.status for j in list_jobs(db) if j.id == job_id] == ["failed"]
    assert "no heartbeat" in get_job(db, job_id).error


def test_job_lock_is_seen_by_other_processes(db):
    """One job at a time: on SQLite a file lock next to the database, on PostgreSQL an advisory lock that
    workers on other machines see too."""
    import subprocess
    import sys

    from alt_engine.jobs import _lock_free

    hold = ("import sys, time; from alt_engine.jobs import model_lock\n"
            "with model_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", hold, db], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not _lock_free(db)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while not _lock_free(db) and time.time() < deadline:  # the lock goes with its process
        time.sleep(0.2)
    assert _lock_free(db)


def test_alt_worker_forever_takes_jobs_as_they_are_queued(db, tmp_path):
    """`alt worker --forever` (the top-level alias of `alt jobs worker`): a standing worker process that runs a job
    queued after it started, and keeps running."""
    import subprocess
    import sys

    from alt_engine.jobs import create_job

    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        rnd = Round(task_id=task.id, number=1, status="labelling")
        s.add(rnd)
        s.flush()
        prompt = Prompt(task_id=task.id, text="Say hello.")
        s.add(prompt)
        s.flush()
        s.add_all([Generation(prompt_id=prompt.id, round_id=rnd.id, response=r) for r in ("hi", "hello " * 30)])
        round_id = rnd.id
    env = {**os.environ, "ALT_CACHE_DIR": str(tmp_path / "cache")}
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
                               "worker", "--forever", "--poll", "0.3", "--db", db], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        job_id = create_job(db, "feedback", dict(round_id=round_id, provider="rule:concise:5,10,20"))  # no worker
        deadline = time.monotonic() + 60
        while (job := get_job(db, job_id)).status in ("queued", "running"):  # get_job starts no worker of its own
            assert time.monotonic() < deadline and worker.poll() is None, "the standing worker did not run the job"
            time.sleep(0.3)
        assert job.status == "succeeded", job.error
        assert worker.poll() is None  # still standing, waiting for the next job
        with session_scope(db) as s:
            assert len(s.exec(select(Feedback).where(Feedback.source.startswith("rule:"))).all()) == 2
    finally:
        worker.terminate()
        out = worker.communicate(timeout=30)[0]
    assert f"job {job_id}" in out
