"""Running a job in this process: the heartbeat thread (liveness, progress probe, cancellation), the outcome
recorded on the Job row whatever happens."""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
import threading
import traceback

from ..db import Job, JobStatus, session_scope, utcnow
from .context import JobCancelled, JobContext
from .lock import model_lock
from .queue import HOST, JOB_KINDS, _fail_outputs, _job, get_job, wait_job

HEARTBEAT_S = 2.0  # the running process refreshes heartbeat_at this often


def _heartbeat(db: str, job_id: int, stop: threading.Event, ctx: JobContext) -> None:
    """Refresh heartbeat_at; report a probe's progress; turn a cancel request into KeyboardInterrupt."""
    interrupted = False
    while not stop.wait(HEARTBEAT_S):
        fraction = None
        if ctx.probe is not None:
            with contextlib.suppress(Exception):
                fraction = ctx.probe()
        with session_scope(db) as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return
            job.heartbeat_at = utcnow()
            if fraction is not None:
                job.progress = max(0.0, min(1.0, fraction))
            cancel = job.cancel_requested
        if cancel and not interrupted and not stop.is_set():
            interrupted = True
            _thread.interrupt_main()


def run_job_inline(db: str, job_id: int, lock: bool = True) -> Job:
    """Run a queued job in this process; returns the finished Job (succeeded, failed or cancelled).

    ``lock``: wait for the model lock first (one job at a time); the worker's children run under its lock.
    """
    def waiting() -> None:
        print(f"job {job_id}: waiting for the running job to finish …", file=sys.stderr, flush=True)

    with model_lock(db, waiting) if lock else contextlib.nullcontext():
        with session_scope(db) as session:
            status = _job(session, job_id).status
        if status == JobStatus.QUEUED:
            return _run(db, job_id)
    # a standing worker took the job while this process waited for the lock: its outcome is this run's
    return wait_job(db, job_id, timeout=None)


def _run(db: str, job_id: int) -> Job:
    with session_scope(db) as session:
        job = _job(session, job_id)
        if job.status != JobStatus.QUEUED:
            raise ValueError(f"job {job_id} is {job.status}; only a queued job can run")
        job.status, job.pid, job.host, job.started_at = JobStatus.RUNNING, os.getpid(), HOST, utcnow()
        job.heartbeat_at, job.message = utcnow(), "running"
        kind, params = job.kind, dict(job.params)
    ctx = JobContext(db, job_id, params)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(db, job_id, stop, ctx), name=f"job-{job_id}-heartbeat",
                            daemon=True)
    beat.start()
    try:
        result = JOB_KINDS[kind](ctx)
    except (JobCancelled, KeyboardInterrupt) as exc:
        stop.set()
        cancelled = get_job(db, job_id).cancel_requested
        _finish(db, job_id, JobStatus.CANCELLED if cancelled else JobStatus.FAILED,
                error="cancelled" if cancelled else "interrupted", message="cancelled" if cancelled else "interrupted")
        if not cancelled and isinstance(exc, KeyboardInterrupt):
            raise
    except Exception as exc:
        stop.set()
        _finish(db, job_id, JobStatus.FAILED, error=_summary(exc), message=f"{type(exc).__name__}: {exc}")
    except BaseException:  # SystemExit: record it, then let it stop the process
        stop.set()
        _finish(db, job_id, JobStatus.FAILED, error="interrupted", message="interrupted")
        raise
    else:
        stop.set()
        _finish(db, job_id, JobStatus.SUCCEEDED, result=result, message="done")
    finally:
        stop.set()
        from ..modeling import trim_memory

        trim_memory()  # run in-process (a round): what the job held goes back before the next phase
    return get_job(db, job_id)


def _summary(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(lines[-12:])


def _finish(db: str, job_id: int, status: JobStatus, *, error: str | None = None, result: dict | None = None,
            message: str = "") -> None:
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        job.status, job.error, job.message, job.finished_at = status, error, message[:500], utcnow()
        if result is not None:
            job.result, job.progress = result, 1.0
            job.version_id = job.version_id or result.get("version_id")
            job.round_id = job.round_id or result.get("round_id")
        if status != JobStatus.SUCCEEDED:
            _fail_outputs(session, job, error or message)
