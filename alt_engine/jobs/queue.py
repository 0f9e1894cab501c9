"""The job queue: creating, starting, reading, waiting for, cancelling and retrying jobs, and liveness (a job
whose process is gone reads as failed to every reader, with what it was making)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..db import Job, JobKind, JobStatus, ModelVersion, Round, RoundStatus, VersionStatus, select, session_scope, utcnow
from .context import JobContext
from .lock import _lock_free, jobs_dir

FINISHED = JobStatus.finished()
KINDS = tuple(k.value for k in JobKind)  # sample | feedback | train | eval | round | score
STALE_S = 30.0  # a running job without a heartbeat for this long is dead (e.g. on another host)
HOST = socket.gethostname()
# settings a job must not carry in its params (the worker inherits them from the environment)
_SECRET_SETTINGS = ("llm_api_key", "secret_key", "sampling_api_key", "serve_api_key", "hub_token")

# kind -> handler(ctx) -> result dict (``runners.py`` fills it in)
JOB_KINDS: dict[str, Callable[[JobContext], dict]] = {}


# --------------------------------------------------------------------------- creating and starting


def _links(kind: str, params: dict) -> dict:
    links = {"task_id": params.get("task_id")}
    if kind == JobKind.FEEDBACK or (kind == JobKind.TRAIN and train_rounds(params)):
        links["round_id"] = params.get("round_id") or train_rounds(params)[-1]
    return links


def create_job(db: str, kind: str, params: dict, retry_of: int | None = None) -> int:
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r} ({' | '.join(sorted(JOB_KINDS))})")
    with session_scope(db) as session:
        job = Job(kind=kind, params=params, message="queued", retry_of=retry_of, **_links(kind, params))
        session.add(job)
        session.flush()
        return job.id


def job_settings(settings) -> dict:
    """The settings a job runs with (secrets excluded: they come from the worker's environment)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(settings).items() if k not in (*_SECRET_SETTINGS, "db")}


def job_log_path(db: str, job_id: int) -> Path:
    """Where a background job's stdout/stderr go (next to the database)."""
    return jobs_dir(db) / f"job-{job_id}.log"


def start_job(db: str, kind: str, params: dict, background: bool = True, retry_of: int | None = None) -> int:
    """Create a job; with ``background`` queue it for the worker (started if none runs), else the caller runs
    it with ``run_job_inline``."""
    job_id = create_job(db, kind, params, retry_of)
    if background:
        ensure_worker(db)
    return job_id


def ensure_worker(db: str) -> int | None:
    """Start a worker for the queue (it waits for the model lock, drains the queue, exits); its pid.

    Starting one too many is harmless: a worker that finds the queue empty exits at once.
    """
    log = jobs_dir(db) / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "alt_engine.jobs", "worker", str(db)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _children.append(proc)
    return proc.pid


_children: list[subprocess.Popen] = []  # workers this process started (reaped so they leave no zombies)


def _reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def train_rounds(params: dict) -> list[int]:
    """The rounds a train job trains on (closed for annotation while it runs)."""
    ids = list(params.get("round_ids") or [])
    if params.get("round_id") and params["round_id"] not in ids:
        ids.append(params["round_id"])
    return ids


def _job(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"no job {job_id}")
    return job


def get_job(db: str, job_id: int) -> Job:
    with session_scope(db) as session:
        return _job(session, job_id)


def _fail_outputs(session, job: Job, reason: str) -> None:
    """A job that did not finish leaves nothing half-made: its version and its rounds read as failed."""
    reason = (reason or "failed").splitlines()[0][:500]
    for version in session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.TRAINING)):
        if version.id == job.version_id or (version.hyperparameters or {}).get("job_id") == job.id:
            version.status = VersionStatus.FAILED
            version.metrics = {**(version.metrics or {}), "error": reason}
    rounds = set(train_rounds(job.params or {})) if job.kind == JobKind.TRAIN else set()
    if job.round_id and job.kind in (JobKind.SAMPLE, JobKind.ROUND, JobKind.TRAIN):
        rounds.add(job.round_id)
    for rid in rounds:
        rnd = session.get(Round, rid)
        if rnd is not None and rnd.status not in (RoundStatus.TRAINED, RoundStatus.CLOSED):
            rnd.status = RoundStatus.FAILED


# --------------------------------------------------------------------------- liveness: every reader sees the truth


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


def _dead(job: Job, now) -> str | None:
    """Why this active job is dead, or None while it may be alive."""
    if job.pid and (not job.host or job.host == HOST) and not _alive(job.pid):
        return f"killed: process {job.pid} exited without finishing the job"
    beat = job.heartbeat_at
    if job.status == JobStatus.RUNNING and beat is not None:
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=now.tzinfo)
        if (now - beat).total_seconds() > STALE_S:
            return f"lost: no heartbeat from process {job.pid} on {job.host or '?'} for {STALE_S:.0f} s"
    return None


def reap_dead_jobs(db: str) -> list[int]:
    """Mark failed every queued/running job whose process is gone (its version and rounds too); their ids."""
    _reap_children()
    now = utcnow()
    with session_scope(db) as session:
        jobs = session.exec(select(Job).where(Job.status.in_(JobStatus.active()), Job.pid.is_not(None))).all()
        dead = {job.id: why for job in jobs if (why := _dead(job, now))}
    for job_id, reason in dead.items():
        with session_scope(db) as session:
            job = session.get(Job, job_id)
            if job.status in FINISHED:  # it finished between our two looks
                continue
            job.status, job.error, job.message, job.finished_at = JobStatus.FAILED, reason, reason, utcnow()
            _fail_outputs(session, job, reason)
    _restart_worker_if_needed(db)
    return list(dead)


def _restart_worker_if_needed(db: str) -> None:
    """Queued jobs and nobody to run them (the worker was killed, the machine restarted): start a worker."""
    if _next_queued(db) is not None and _lock_free(db):
        ensure_worker(db)


refresh = reap_dead_jobs  # what a reader calls before showing jobs, versions or rounds


def wait_job(db: str, job_id: int, timeout: float | None = None, poll: float = 0.5) -> Job:
    """Block until the job finishes (or its process dies); TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reap_dead_jobs(db)
        job = get_job(db, job_id)
        if job.status in FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(poll)


def _next_queued(db: str) -> int | None:
    with session_scope(db) as session:
        return session.exec(select(Job.id).where(Job.status == JobStatus.QUEUED, Job.pid.is_(None))
                            .order_by(Job.id)).first()


# --------------------------------------------------------------------------- cancel, retry, views


def cancel_job(db: str, job_id: int) -> Job:
    """Stop a job: a queued one is cancelled now, a running one as soon as its process notices (≤ 2 s)."""
    with session_scope(db) as session:
        job = _job(session, job_id)
        if job.status in FINISHED:
            raise ValueError(f"job {job_id} is already {job.status}")
        job.cancel_requested = True
        if job.status == JobStatus.QUEUED and not job.pid:
            job.status, job.error, job.message, job.finished_at = (JobStatus.CANCELLED, "cancelled",
                                                                   "cancelled", utcnow())
            _fail_outputs(session, job, "cancelled")
    return get_job(db, job_id)


def retry_job(db: str, job_id: int) -> int:
    """Queue a copy of a failed or cancelled job; the new job's id."""
    job = get_job(db, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ValueError(f"job {job_id} is {job.status}; only a failed or cancelled job can be retried")
    return start_job(db, job.kind, dict(job.params), retry_of=job.id)


@dataclass
class JobView:
    """A job as the console, the API and the CLI show it."""

    id: int
    kind: str
    status: str
    stage: str
    progress: float
    step: int | None
    loss: float | None
    eta_s: float | None
    message: str
    error: str | None
    round_id: int | None
    version_id: int | None
    retry_of: int | None
    created: str
    started: str
    finished: str


def _iso(t) -> str:
    return t.isoformat(timespec="seconds") if t else ""


def view(job: Job) -> JobView:
    last = next((e for e in reversed(job.log or []) if "loss" in e), {})
    eta = None
    if job.status == JobStatus.RUNNING and job.started_at and 0.01 < (job.progress or 0) < 1:
        start = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=utcnow().tzinfo)
        elapsed = (utcnow() - start).total_seconds()
        eta = elapsed / job.progress * (1 - job.progress)
    return JobView(job.id, job.kind, str(job.status), job.stage or "", float(job.progress or 0), last.get("step"),
                   last.get("loss"), eta, job.message or "", job.error, job.round_id, job.version_id, job.retry_of,
                   _iso(job.created_at), _iso(job.started_at), _iso(job.finished_at))


def list_jobs(db: str, limit: int = 50) -> list[JobView]:
    """The newest jobs, after marking dead ones failed."""
    reap_dead_jobs(db)
    with session_scope(db) as session:
        return [view(j) for j in session.exec(select(Job).order_by(Job.id.desc()).limit(limit))]


def job_logs(db: str, job_id: int, tail: int = 200) -> str:
    """The job's own log lines (stages, losses), then the tail of its process output."""
    job = get_job(db, job_id)
    lines = []
    for e in (job.events or [])[-tail:]:
        lines.append(f"[{e.get('t', '')}] {e.get('msg', '')}")
    for e in (job.log or [])[-tail:]:
        lines.append("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()))
    path = job_log_path(db, job_id)
    if path.exists():
        out = path.read_text(errors="replace").splitlines()[-tail:]
        lines += ["", f"--- process output ({path.name}) ---", *out]
    if job.error:
        lines += ["", "--- error ---", job.error]
    return "\n".join(lines)
