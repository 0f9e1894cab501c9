"""The worker: takes the model lock, runs queued jobs oldest first, each in a child process it sees through
(cancel, kill, cleanup); ``main`` is ``python -m alt_engine.jobs``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from ..db import Job, JobStatus, session_scope, utcnow
from .lock import held_by_parent, model_lock
from .queue import HOST, _fail_outputs, _next_queued, get_job, job_log_path, reap_dead_jobs
from .run import run_job_inline


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the worker dies (then readers find its job dead)."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _run_child(db: str, job_id: int) -> None:
    """Run one job in a child process (its own process group) and see it through: cancel, kill, cleanup."""
    log = job_log_path(db, job_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "alt_engine.jobs", "run", str(db), str(job_id)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job.status == JobStatus.QUEUED:
            job.pid, job.host = proc.pid, HOST
    cancel_seen = None
    while proc.poll() is None:
        time.sleep(0.5)
        if cancel_seen is None and get_job(db, job_id).cancel_requested:
            cancel_seen = time.monotonic()
        if cancel_seen is not None and time.monotonic() - cancel_seen > 15:  # it did not stop by itself
            _killpg(proc.pid, signal.SIGTERM)
            time.sleep(3)
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _killpg(proc.pid, signal.SIGKILL)  # grandchildren (DeepSpeed ranks) go with it
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job.status in JobStatus.active():
            cancelled = job.cancel_requested
            code = proc.returncode
            why = ("cancelled" if cancelled else
                   f"killed: process {proc.pid} exited ({'signal ' + str(-code) if code < 0 else 'code ' + str(code)})"
                   " without finishing the job")
            job.status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
            job.error, job.message, job.finished_at = why, why, utcnow()
            _fail_outputs(session, job, why)


def worker_forever(db: str, poll: float = 2.0, stop: threading.Event | None = None) -> None:
    """A standing worker: runs queued jobs as they come (``alt jobs worker --forever``), e.g. in its own
    process or on a GPU machine against the same PostgreSQL database as the app."""
    stop = stop or threading.Event()
    while not stop.is_set():
        worker(db)
        stop.wait(poll)


def worker(db: str) -> None:
    """Run queued jobs one at a time, oldest first, until none is left."""
    with model_lock(db):
        while True:
            reap_dead_jobs(db)
            job_id = _next_queued(db)
            if job_id is None:
                return
            print(f"worker {os.getpid()}: job {job_id}", flush=True)
            _run_child(db, job_id)


def main(argv: list[str]) -> int:
    """``python -m alt_engine.jobs worker DB`` | ``run DB JOB_ID`` (what the worker starts) | ``DB JOB_ID``."""
    if argv and argv[0] == "worker":
        worker(argv[1])
        return 0
    if argv and argv[0] == "run":
        db, job_id, lock = argv[1], int(argv[2]), False
        held_by_parent()  # the worker holds the lock for this child: a job it runs inline (a round's training) too
    else:
        db, job_id, lock = argv[0], int(argv[1]), True
    job = run_job_inline(db, job_id, lock=lock)
    print(f"job {job_id} {job.status}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.status == JobStatus.SUCCEEDED else 1
