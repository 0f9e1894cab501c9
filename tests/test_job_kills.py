"""`kill -9` of a running job — foreground `alt train`, a background worker's job, a whole `alt round` — reads as
failed (job, version, round) in the API-facing engine views, `alt models list` and `alt status`, the served version
is unchanged, and a new job runs (issue 9 "Must show", issue 12 item 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlmodel import select

from alt_engine.db import Job, ModelVersion, Round, session_scope
from alt_engine.jobs import list_jobs, wait_job
from app.cli import main

PROMPTS = [("Hello, how are you?", "train"), ("Write a short answer.", "train"), ("Be concise and helpful.", "train"),
           ("The quick brown fox?", "train"), ("Harmless and helpful?", "probe")]
# a random tiny model never stops within 8 tokens: its truncated samples must enter the pool (--truncated last)
FOREVER = ("--epochs", "100000", "--batch_size", "4", "--logging_steps", "1", "--report_to", "none",
           "--save_steps", "100000", "--truncated", "last")
ALT = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"]

pytestmark = pytest.mark.slow  # each starts a Python process that imports torch: ~10-20 s on 2 busy cores


@pytest.fixture
def loop(tmp_path, tiny_model_dir, monkeypatch):
    db = str(tmp_path / "kill.db")
    monkeypatch.setenv("ALT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    monkeypatch.setenv("ALT_DB", db)
    monkeypatch.setenv("ALT_MODEL", tiny_model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))

    def run(*argv: str) -> int:
        return main(list(argv))

    assert run("init") == 0
    assert run("prompts", "import", str(prompts)) == 0
    assert run("sample", "--n", "4", "--max-new-tokens", "8") == 0
    assert run("feedback", "--provider", "rule:concise:2,4,6,8") == 0
    return run, db


def _wait_training(db: str, kind: str = "train", timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(db) as s:
            job = s.exec(select(Job).where(Job.kind == kind).order_by(Job.id.desc())).first()
            train = s.exec(select(Job).where(Job.kind == "train").order_by(Job.id.desc())).first()
        if train is not None and train.log:  # training steps are being logged
            return job
        assert job is None or job.status in ("queued", "running"), (job.status, job.error)
        time.sleep(0.3)
    raise AssertionError("training did not start")


def _assert_all_failed(run, db, capsys, served_before: int, kind: str) -> None:
    t0 = time.monotonic()
    # console / API view (list_jobs refreshes), then the CLI views: each must show the truth on its own
    jobs = {j.kind: j for j in reversed(list_jobs(db))}
    assert jobs[kind].status == "failed" and "killed" in (jobs[kind].error or ""), jobs[kind]
    assert run("models", "list") == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "-alt" in x][-1]
    assert " failed " in line, out
    assert run("status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rounds"][-1]["status"] == "failed", status
    assert time.monotonic() - t0 < 10  # "within seconds"
    with session_scope(db) as s:
        assert s.exec(select(ModelVersion).where(ModelVersion.status == "served")).one().id == served_before
        assert not s.exec(select(Job).where(Job.status.in_(("queued", "running")))).all()
        assert s.exec(select(ModelVersion).where(ModelVersion.status == "training")).all() == []


def _served(db) -> int:
    with session_scope(db) as s:
        return s.exec(select(ModelVersion).where(ModelVersion.status == "served")).one().id


def _new_job_runs(run, db) -> None:
    assert run("train", "--max_steps", "1", "--batch_size", "4", "--report_to", "none", "--truncated", "last",
               "--round", "1") == 0
    with session_scope(db) as s:
        assert s.exec(select(Job).order_by(Job.id.desc())).first().status == "succeeded"


def test_kill_foreground_cli_train(loop, capsys):
    run, db = loop
    served = _served(db)
    proc = subprocess.Popen([*ALT, "train", *FOREVER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = _wait_training(db)
        assert job.pid == proc.pid
        with session_scope(db) as s:
            assert s.get(Round, 1).status == "training"  # training closed the round for annotation
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    _assert_all_failed(run, db, capsys, served, "train")
    _new_job_runs(run, db)


def test_kill_background_job(loop, capsys):
    run, db = loop
    served = _served(db)
    assert run("train", "--background", *FOREVER) == 0
    job = _wait_training(db)
    assert job.pid and job.pid != os.getpid()
    os.kill(job.pid, signal.SIGKILL)
    wait_job(db, job.id, timeout=30)
    _assert_all_failed(run, db, capsys, served, "train")
    _new_job_runs(run, db)


def test_kill_whole_round(loop, capsys):
    run, db = loop
    served = _served(db)
    proc = subprocess.Popen([*ALT, "round", "--provider", "rule:concise:2,4,6,8", "--n", "3", "--max-new-tokens", "10",
                             *FOREVER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = _wait_training(db, kind="round")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    _assert_all_failed(run, db, capsys, served, "round")
    with session_scope(db) as s:
        assert s.get(Job, job.id).round_id == 2 and s.get(Round, 2).status == "failed"
    _new_job_runs(run, db)
