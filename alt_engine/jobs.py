"""Long-running work as jobs: a Job row with status, progress, loss log and error, run in a subprocess.

``start_job`` writes the row and (by default) starts ``python -m alt_engine.jobs <db> <job_id>``, so
the web app never blocks; ``run_job_inline`` runs the same job in this process (the CLI's foreground
mode). A job is queued → running → succeeded | failed. A job whose process died without saying so
(killed, out of memory) is found by ``reap_dead_jobs`` and marked failed, together with the model
version it was training; the served version is never touched by a job that does not finish.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .db import Job, ModelVersion, select, session_scope, utcnow

FINISHED = ("succeeded", "failed")
LOG_KEYS = ("step", "epoch", "loss", "nll", "entropy", "kl", "learning_rate", "grad_norm", "num_input_tokens_seen",
            "train_runtime", "train_loss")


def _train(db: str, job_id: int, params: dict, progress: Callable[[float, dict], None]) -> dict:
    """Train a model version. params: config (AltTrainConfig fields), and either ``items`` (PoolItem dicts)
    or a pool to build: task_id + any ``build_pool`` keyword (round_ids, k_per_category, policy, seed, ...);
    optional parent_version_id (default: the served version), objective, round_id, prefix_format,
    settings (Settings overrides, e.g. models_dir)."""
    from .pool import PoolItem
    from .settings import Settings
    from .training.config import AltTrainConfig
    from .training.run import train_model_version

    settings = Settings.from_env(db=db, **params.get("settings", {}))
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    config = AltTrainConfig(**params.get("config", {}))
    if "items" in params:
        items = [PoolItem(**row) for row in params["items"]]
    elif "task_id" not in params:
        raise ValueError("a train job needs 'items' or a 'task_id' to build the pool from")
    else:
        from .pool import build_pool

        wanted = set(inspect.signature(build_pool).parameters) - {"db", "task_id"}
        items = build_pool(db, params["task_id"], **{k: v for k, v in params.items() if k in wanted})
    parent_id = params.get("parent_version_id")
    if parent_id is None:
        from .versions import served_version

        with session_scope(db) as session:
            served = served_version(session)
            if served is None:
                raise ValueError("no parent_version_id given and no served version to start from")
            parent_id = served.id
    version_id = train_model_version(
        db, settings, items, config, parent_id, objective=params.get("objective", "alt"),
        round_id=params.get("round_id"), job_id=job_id, prefix_format=params.get("prefix_format", "{feedback}"),
        progress=progress)
    with session_scope(db) as session:
        metrics = session.get(ModelVersion, version_id).metrics
    return {"version_id": version_id, "metrics": metrics}


# kind -> handler(db, job_id, params, progress) -> result dict
JOB_KINDS: dict[str, Callable[[str, int, dict, Callable[[float, dict], None]], dict]] = {"train": _train}


def create_job(db: str, kind: str, params: dict) -> int:
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r} ({' | '.join(sorted(JOB_KINDS))})")
    with session_scope(db) as session:
        job = Job(kind=kind, params=params, message="queued")
        session.add(job)
        session.flush()
        return job.id


def job_log_path(db: str, job_id: int) -> Path:
    """Where a background job's stdout/stderr go (next to the database)."""
    return Path(db).resolve().parent / "jobs" / f"job-{job_id}.log"


def start_job(db: str, kind: str, params: dict, background: bool = True) -> int:
    """Create a job; with ``background`` start its subprocess now (else run it with ``run_job_inline``)."""
    job_id = create_job(db, kind, params)
    if background:
        log_path = job_log_path(db, job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "alt_engine.jobs", str(db), str(job_id)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # survives the web app's restarts and Ctrl-C
        with session_scope(db) as session:
            job = session.get(Job, job_id)
            if job.status == "queued":
                job.pid = proc.pid
    return job_id


def _job(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"no job {job_id}")
    return job


def get_job(db: str, job_id: int) -> Job:
    with session_scope(db) as session:
        return _job(session, job_id)


def progress_callback(db: str, job_id: int) -> Callable[[float, dict], None]:
    """A ``progress(fraction, logs)`` that records progress, a message and the loss log on the job row."""

    def progress(fraction: float, logs: dict) -> None:
        entry = {k: logs[k] for k in LOG_KEYS if isinstance(logs.get(k), int | float)}
        with session_scope(db) as session:
            job = session.get(Job, job_id)
            job.progress = max(0.0, min(1.0, float(fraction)))
            if "loss" in entry:
                job.message = f"step {entry.get('step', '?')}: loss {entry['loss']:.4f}"
                job.log = [*job.log, entry]  # reassign: JSON columns track assignment, not mutation

    return progress


def run_job_inline(db: str, job_id: int) -> Job:
    """Run a queued job in this process; returns the finished Job (status succeeded or failed)."""
    with session_scope(db) as session:
        job = _job(session, job_id)
        if job.status != "queued":
            raise ValueError(f"job {job_id} is {job.status}; only a queued job can run")
        job.status, job.pid, job.started_at, job.message = "running", os.getpid(), utcnow(), "running"
        kind, params = job.kind, dict(job.params)
    try:
        result = JOB_KINDS[kind](db, job_id, params, progress_callback(db, job_id))
    except Exception as exc:
        _finish(db, job_id, "failed", error=_summary(exc), message=f"failed: {type(exc).__name__}: {exc}")
    except BaseException:  # Ctrl-C / SystemExit: record it, then let it stop the process
        _finish(db, job_id, "failed", error="interrupted", message="interrupted")
        raise
    else:
        _finish(db, job_id, "succeeded", result=result, message="done")
    return get_job(db, job_id)


def _summary(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(lines[-12:])


def _finish(db: str, job_id: int, status: str, *, error: str | None = None, result: dict | None = None,
            message: str = "") -> None:
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        job.status, job.error, job.message, job.finished_at = status, error, message[:500], utcnow()
        if result is not None:
            job.result, job.progress = result, 1.0
        if status == "failed":
            _fail_versions(session, job_id, error or message)


def _fail_versions(session, job_id: int, reason: str) -> None:
    """A failed job's half-made model version becomes failed (it is never served)."""
    for version in session.exec(select(ModelVersion).where(ModelVersion.status == "training")):
        if (version.hyperparameters or {}).get("job_id") == job_id:
            version.status = "failed"
            version.metrics = {**(version.metrics or {}), "error": reason.splitlines()[0][:500]}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child its parent has not waited for yet is a zombie: dead to us
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def reap_dead_jobs(db: str) -> list[int]:
    """Mark failed every queued/running job whose process is gone; returns their ids."""
    with session_scope(db) as session:
        jobs = session.exec(select(Job).where(Job.status.in_(("queued", "running")), Job.pid.is_not(None))).all()
        dead = [job.id for job in jobs if not _alive(job.pid)]
    for job_id in dead:
        with session_scope(db) as session:
            job = session.get(Job, job_id)
            if job.status in FINISHED:  # it finished between our two looks
                continue
            reason = f"killed: process {job.pid} exited without finishing the job"
            job.status, job.error, job.message, job.finished_at = "failed", reason, reason, utcnow()
            _fail_versions(session, job_id, reason)
    return dead


def wait_job(db: str, job_id: int, timeout: float | None = None, poll: float = 0.5) -> Job:
    """Block until the job finishes (or its process dies); TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get_job(db, job_id)
        if job.status in FINISHED:
            return job
        if job.pid and not _alive(job.pid):
            reap_dead_jobs(db)
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(poll)


def main(argv: list[str]) -> int:
    """``python -m alt_engine.jobs DB JOB_ID``: run one queued job (what ``start_job`` launches)."""
    db, job_id = argv[0], int(argv[1])
    job = run_job_inline(db, job_id)
    print(f"job {job_id} {job.status}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
