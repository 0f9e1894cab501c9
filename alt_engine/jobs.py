"""Long-running work as jobs: every stage of the loop (sample, feedback, train, eval, round) is a Job row.

Life of a job (``JobStatus``): queued → running → succeeded | failed | cancelled.

- ``start_job`` queues a job and makes sure a **worker** runs (``python -m alt_engine.jobs worker DB``, its own
  session: it survives the web app's restarts). The worker holds the model lock (a file lock next to the
  database), so jobs run **one at a time**, oldest first; each runs in a child process
  (``python -m alt_engine.jobs run DB ID``) whose output goes to ``jobs/job-ID.log``.
- ``run_job_inline`` runs a job in this process (the CLI's foreground mode), after taking the same lock.
- The process running a job refreshes ``heartbeat_at`` every ``HEARTBEAT_S`` seconds. A job whose process
  is gone (pid check on the same host) or whose heartbeat is older than ``STALE_S`` is dead: **any reader**
  (``refresh``, called by the API, the console, ``alt status``, ``alt models list``, ``wait_job``) marks it
  failed, together with the model version it was training and the round it was working on.
- ``cancel_job`` stops a job: a queued one at once, a running one through its heartbeat thread (the job's
  main thread gets ``KeyboardInterrupt``; the worker kills the child's process group if it lingers). The
  database is left consistent: the version it was training fails, its rounds are failed, nothing is served.
- ``retry_job`` queues a copy of a failed or cancelled job.

A job never changes which version is served, except a ``round`` job told to promote.
"""

from __future__ import annotations

import _thread
import contextlib
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .db import (
    Job,
    JobStatus,
    ModelVersion,
    Round,
    RoundStatus,
    VersionStatus,
    get_engine,
    is_postgres,
    is_url,
    select,
    session_scope,
    utcnow,
)

FINISHED = JobStatus.finished()
KINDS = ("sample", "feedback", "train", "eval", "round", "score")
LOG_KEYS = ("step", "epoch", "loss", "nll", "entropy", "kl", "learning_rate", "grad_norm", "num_input_tokens_seen",
            "train_runtime", "train_loss")
HEARTBEAT_S = 2.0  # the running process refreshes heartbeat_at this often
STALE_S = 30.0  # a running job without a heartbeat for this long is dead (e.g. on another host)
HOST = socket.gethostname()
# settings a job must not carry in its params (the worker inherits them from the environment)
_SECRET_SETTINGS = ("llm_api_key", "secret_key", "sampling_api_key", "serve_api_key", "hub_token")


class JobCancelled(Exception):
    """Raised inside a job whose cancellation was asked for."""


# --------------------------------------------------------------------------- the context a job runs with


class JobContext:
    """What a job handler gets: its db, id and params; progress, stage, log lines, links to rows it made.

    Calling it as ``ctx(fraction, logs)`` is a trainer progress callback (loss, step go to the job's log).
    """

    def __init__(self, db: str, job_id: int, params: dict):
        self.db, self.job_id, self.params = db, job_id, params
        self.probe: Callable[[], float | None] | None = None  # polled by the heartbeat for progress

    def __call__(self, fraction: float, logs: dict | None = None) -> None:
        entry = {k: logs[k] for k in LOG_KEYS if isinstance((logs or {}).get(k), int | float)}
        with session_scope(self.db) as session:
            job = session.get(Job, self.job_id)
            job.progress = max(0.0, min(1.0, float(fraction)))
            if "loss" in entry:
                job.message = f"step {entry.get('step', '?')}: loss {entry['loss']:.4f}"
                job.log = [*job.log, entry]  # reassign: JSON columns track assignment, not mutation
            cancel = job.cancel_requested
        if cancel:
            raise JobCancelled("cancelled")

    def stage(self, name: str, progress: float | None = None) -> None:
        with session_scope(self.db) as session:
            job = session.get(Job, self.job_id)
            job.stage, job.message = name, name
            if progress is not None:
                job.progress = progress
            job.events = [*(job.events or []), {"t": _now_s(), "msg": f"stage: {name}"}]

    def log(self, line: str, echo: bool = True) -> None:
        """A line for the job's log (and, with ``echo``, for stdout: the CLI in the foreground)."""
        if echo:
            print(line, flush=True)
        with session_scope(self.db) as session:
            job = session.get(Job, self.job_id)
            job.events = [*(job.events or [])[-500:], {"t": _now_s(), "msg": str(line)[:1000]}]
            job.message = str(line).strip().splitlines()[0][:500] if str(line).strip() else job.message

    def link(self, *, round_id: int | None = None, version_id: int | None = None) -> None:
        with session_scope(self.db) as session:
            job = session.get(Job, self.job_id)
            if round_id is not None:
                job.round_id = round_id
            if version_id is not None:
                job.version_id = version_id

    def settings(self):
        from .settings import Settings

        return Settings.from_env(db=self.db, **self.params.get("settings", {}))


def _now_s() -> str:
    return utcnow().strftime("%H:%M:%S")


def progress_callback(db: str, job_id: int) -> Callable[[float, dict], None]:
    """A ``progress(fraction, logs)`` that records progress, a message and the loss log on the job row."""
    return JobContext(db, job_id, {})


# --------------------------------------------------------------------------- job kinds


def _task(db: str, task_id: int):
    from .db import Task

    with session_scope(db) as s:
        task = s.get(Task, task_id)
        if task is None:
            raise ValueError(f"no task {task_id}")
        return task


def _version(db: str, version_id: int | None) -> ModelVersion:
    from .versions import served_version

    with session_scope(db) as s:
        version = s.get(ModelVersion, version_id) if version_id is not None else served_version(s)
        if version is None:
            raise ValueError(f"no model version {version_id}" if version_id is not None else "no served version")
        return version


def _set_rounds(db: str, round_ids, status: RoundStatus, only_from: tuple | None = None) -> None:
    with session_scope(db) as s:
        for rid in round_ids or []:
            rnd = s.get(Round, rid)
            if rnd is not None and (only_from is None or rnd.status in only_from):
                rnd.status = status


def _sample(ctx: JobContext) -> dict:
    """A sampling round. params: task_id; version_id (default: served); split, limit; sampling (SamplingParams
    fields); condition: ``auto`` (None for a base model, else the exemplar), ``exemplar``, ``none`` or a text."""
    from .db import Generation
    from .rounds import draw_exemplars, sample_round, sampling_conditioning, start_round
    from .sampling import SamplingParams

    p, db = ctx.params, ctx.db
    settings = ctx.settings()
    task, version = _task(db, p["task_id"]), _version(db, p.get("version_id"))
    params = SamplingParams(**p.get("sampling", {}))
    rnd, prompts = start_round(db, task, version, p.get("split", "train"), p.get("limit"))
    ctx.link(round_id=rnd.id)
    cond = p.get("condition", "auto")
    if cond == "auto":
        conds = sampling_conditioning(db, task, version, len(prompts), params.seed)
    elif cond == "exemplar":
        conds = draw_exemplars(db, task, len(prompts), params.seed)
    elif cond in (None, "none", ""):
        conds = None
    else:
        conds = cond
    total = len(prompts) * params.n

    def probe() -> float:
        from sqlalchemy import func

        with session_scope(db) as s:
            done = s.exec(select(func.count()).where(Generation.round_id == rnd.id)).one()
        return done / total if total else 0.0

    ctx.probe = probe
    ctx.stage(f"sampling {len(prompts)} prompts × {params.n} from {version.name}")
    try:
        ids = sample_round(db, settings, task, rnd, version, prompts, params, conds, p.get("backend"))
    finally:
        ctx.probe = None
    _set_rounds(db, [rnd.id], RoundStatus.LABELLING)
    with session_scope(db) as s:
        truncated = len(s.exec(select(Generation.id).where(Generation.round_id == rnd.id, Generation.truncated)).all())
    ctx.log(f"round {rnd.number}: {len(ids)} generations from {version.name}", echo=False)
    return {"round_id": rnd.id, "round": rnd.number, "generations": len(ids), "prompts": len(prompts),
            "truncated": truncated, "score_job": _queue_scoring(db, task, rnd.id, p),
            "conditioning": conds[0] if isinstance(conds, list) and conds else conds}


def _queue_scoring(db: str, task, round_id: int, params: dict) -> int | None:
    """After sampling: queue the ``score`` job the task's queue order reads (uncertainty, disagreement)."""
    from .queue_order import parse_strategy

    if not parse_strategy(task.queue_strategy).needs_scores:
        return None
    return start_job(db, "score", {"task_id": task.id, "round_ids": [round_id],
                                   "settings": params.get("settings", {})})


def _score(ctx: JobContext) -> dict:
    """Score generations for the annotation queue (``queue_order.score_queue``). params: task_id; round_ids
    (default: the task's open rounds); uncertainty (default: when the task's order uses it)."""
    from .queue_order import parse_strategy, score_queue

    db, p = ctx.db, ctx.params
    task = _task(db, p["task_id"])
    uncertainty = p.get("uncertainty", parse_strategy(task.queue_strategy).weight("uncertainty") > 0)
    ctx.stage(f"scoring the queue of {task.name}" + (" (uncertainty: the served model)" if uncertainty else ""))
    result = score_queue(db, ctx.settings(), task, p.get("round_ids"), uncertainty,
                         progress=lambda done, total: ctx(done / max(total, 1)))
    ctx.log(f"queue scores: {result}", echo=False)
    return result


def unlabelled_generations(db: str, round_id: int) -> list[int]:
    """The round's generations with no feedback at all (a flagged one is not unlabelled)."""
    from .db import Feedback, Generation

    with session_scope(db) as s:
        has = select(Feedback.generation_id).where(Feedback.generation_id == Generation.id).exists()
        return list(s.exec(select(Generation.id).where(Generation.round_id == round_id, ~has)
                           .order_by(Generation.id)))


def _feedback(ctx: JobContext) -> dict:
    """An AI provider on a round's unlabelled generations. params: round_id, provider (spec)."""
    from .feedback import label_generations, make_provider

    db, p = ctx.db, ctx.params
    with session_scope(db) as s:
        rnd = s.get(Round, p["round_id"])
        if rnd is None:
            raise ValueError(f"no round {p['round_id']}")
    ctx.link(round_id=rnd.id)
    task = _task(db, rnd.task_id)
    if p.get("all"):  # every generation (the provider skips what it labelled before): the CLI's way
        with session_scope(db) as s:
            from .db import Generation

            gen_ids = list(s.exec(select(Generation.id).where(Generation.round_id == rnd.id).order_by(Generation.id)))
    else:
        gen_ids = unlabelled_generations(db, rnd.id)
    provider = make_provider(p["provider"], ctx.settings(), task)
    ctx.stage(f"feedback from {provider.name} on {len(gen_ids)} unlabelled generations")
    report = label_generations(db, provider, task, gen_ids, progress=lambda done, total: ctx(done / max(total, 1)),
                               show_progress=False)
    from .queue_order import parse_strategy, score_disagreement

    if parse_strategy(task.queue_strategy).weight("disagreement"):  # new AI labels: the queue's order changes
        score_disagreement(db, task, gen_ids)
    ctx.log(f"round {rnd.number}: {report}", echo=False)
    return {"round_id": rnd.id, "source": report.source, "stored": report.stored, "skipped": report.reasons(),
            "already": report.already}


def _train(ctx: JobContext) -> dict:
    """Train a model version. params: objective (default alt), config (its config's fields), and either
    ``items`` (PoolItem dicts) or a pool to build with the objective's data (``Objective.items``): task_id +
    any ``build_pool`` keyword (round_ids, k_per_category, policy, seed, ...);
    optional parent_version_id (default: the served version), objective, round_id, conditioning (a Format dict),
    settings (Settings overrides, e.g. models_dir). The rounds trained on are closed for annotation
    (``training``) and become ``trained`` (or ``failed``)."""
    from .conditioning import Format
    from .pool import PoolItem
    from .training.objectives import get, make_config
    from .versions import train_model_version

    db, job_id, params = ctx.db, ctx.job_id, ctx.params
    settings = ctx.settings()
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    objective = get(params.get("objective", "alt"))
    config = make_config(objective.name, **params.get("config", {}))
    rounds = train_rounds(params)
    if "items" in params:
        items = [PoolItem(**row) for row in params["items"]]
    elif "task_id" not in params:
        raise ValueError("a train job needs 'items' or a 'task_id' to build the pool from")
    else:
        from .pool import build_pool

        wanted = set(inspect.signature(build_pool).parameters) - {"db", "task_id"}
        items = objective.items(db, _task(db, params["task_id"]), **{k: v for k, v in params.items() if k in wanted})
    parent_id = _version(db, params.get("parent_version_id")).id
    _set_rounds(db, rounds, RoundStatus.TRAINING)
    ctx.stage(f"training on {len(items)} examples")
    version_id = train_model_version(
        db, settings, items, config, parent_id, objective=objective.name,
        round_id=params.get("round_id") or (rounds[-1] if rounds else None), job_id=job_id,
        fmt=Format.from_dict(params.get("conditioning")), progress=ctx)
    ctx.link(version_id=version_id)
    _set_rounds(db, rounds, RoundStatus.TRAINED, only_from=(RoundStatus.TRAINING,))
    with session_scope(db) as session:
        metrics = session.get(ModelVersion, version_id).metrics
    return {"version_id": version_id, "metrics": metrics}


def train_rounds(params: dict) -> list[int]:
    """The rounds a train job trains on (closed for annotation while it runs)."""
    ids = list(params.get("round_ids") or [])
    if params.get("round_id") and params["round_id"] not in ids:
        ids.append(params["round_id"])
    return ids


def _eval(ctx: JobContext) -> dict:
    """Evaluate a version on the task's probes. params: task_id, version_id (default served), provider, eval."""
    from .evaluation import EvalConfig, evaluate_version
    from .feedback import make_provider

    db, p = ctx.db, ctx.params
    settings = ctx.settings()
    task, version = _task(db, p["task_id"]), _version(db, p.get("version_id"))
    provider = make_provider(p["provider"], settings, task) if p.get("provider") else None
    ctx.stage(f"evaluating {version.name}")
    metrics = evaluate_version(db, settings, version.id, task, provider, EvalConfig(**p.get("eval", {})),
                               reference=p.get("reference"))
    return {"version_id": version.id, "metrics": metrics}


_ROUND_LINE = re.compile(r"^round (\d+): (\w+)")


def _round(ctx: JobContext) -> dict:
    """A whole round (``rounds.run_round``). params: task_id, provider, round (RoundConfig fields, sampling and
    eval as dicts), objective (default alt), config (its config's fields)."""
    from .evaluation import EvalConfig
    from .rounds import RoundConfig, run_round
    from .sampling import SamplingParams
    from .training.objectives import make_config

    db, p = ctx.db, ctx.params
    task = _task(db, p["task_id"])
    rc = dict(p.get("round", {}))
    cfg = RoundConfig(sampling=SamplingParams(**rc.pop("sampling", {})), eval=EvalConfig(**rc.pop("eval", {})), **rc)
    stages = ("sample", "feedback", "pool", "train", "evaluate", "evaluate_parent", "promote")

    def log(line: str) -> None:
        m = _ROUND_LINE.match(line)
        if m:
            with session_scope(db) as s:
                rnd = s.exec(select(Round).where(Round.task_id == task.id, Round.number == int(m.group(1)))).first()
            if rnd is not None:
                ctx.link(round_id=rnd.id)
            if m.group(2) in stages:
                ctx.stage(m.group(2), stages.index(m.group(2)) / len(stages))
        ctx.log(line)

    report = run_round(db, ctx.settings(), task, p["provider"], cfg,
                       make_config(p.get("objective", "alt"), **p.get("config", {})), log=log)
    ctx.link(round_id=report.round_id, version_id=report.version_id)
    return {"round_id": report.round_id, "version_id": report.version_id, "promoted": report.promoted,
            "decision": report.decision, "metrics": report.metrics}


# kind -> handler(ctx) -> result dict
JOB_KINDS: dict[str, Callable[[JobContext], dict]] = {
    "sample": _sample, "feedback": _feedback, "train": _train, "eval": _eval, "round": _round, "score": _score}


# --------------------------------------------------------------------------- creating and starting


def _links(kind: str, params: dict) -> dict:
    links = {"task_id": params.get("task_id")}
    if kind in ("feedback",) or (kind == "train" and train_rounds(params)):
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


def jobs_dir(db: str) -> Path:
    """Job logs and the job lock: next to a SQLite file; for a database URL, under the cache directory (one
    folder per database), so the lock is per machine: run one worker machine per database."""
    if not is_url(db):
        return Path(db).resolve().parent / "jobs"
    import hashlib

    from .settings import Settings

    return Path(Settings.from_env().cache_dir) / "jobs" / hashlib.sha256(db.encode()).hexdigest()[:16]


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


# --------------------------------------------------------------------------- the model lock (one job at a time)

_lock_guard = threading.RLock()
_lock_depth = 0
_lock_file = None


@contextlib.contextmanager
def model_lock(db: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the studio's job lock (re-entrant in this process: a round job runs its train job inside it)."""
    import fcntl

    global _lock_depth, _lock_file
    with _lock_guard:
        if _lock_depth == 0:
            if is_postgres(db):  # workers on several machines: one database-wide lock
                _lock_file = _pg_lock(db, on_wait)
            else:
                path = jobs_dir(db) / "model.lock"
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait:
                        on_wait()
                    fcntl.flock(f, fcntl.LOCK_EX)
                _lock_file = f
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if _lock_depth == 0:
                if not isinstance(_lock_file, Connection):
                    fcntl.flock(_lock_file, fcntl.LOCK_UN)
                else:
                    _lock_file.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": JOB_LOCK_KEY})
                    _lock_file.commit()
                _lock_file.close()
                _lock_file = None


JOB_LOCK_KEY = 7216  # PostgreSQL advisory lock of the job queue (one job at a time across machines)


def _pg_lock(db: str, on_wait: Callable[[], None] | None) -> Connection:
    """The job lock on PostgreSQL: a session-level advisory lock held by a connection of its own."""
    conn = get_engine(db).connect()
    if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": JOB_LOCK_KEY}).scalar():
        if on_wait:
            on_wait()
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": JOB_LOCK_KEY})
    conn.commit()
    return conn


# --------------------------------------------------------------------------- running


def _job(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"no job {job_id}")
    return job


def get_job(db: str, job_id: int) -> Job:
    with session_scope(db) as session:
        return _job(session, job_id)


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
        from .modeling import trim_memory

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


def _fail_outputs(session, job: Job, reason: str) -> None:
    """A job that did not finish leaves nothing half-made: its version and its rounds read as failed."""
    reason = (reason or "failed").splitlines()[0][:500]
    for version in session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.TRAINING)):
        if version.id == job.version_id or (version.hyperparameters or {}).get("job_id") == job.id:
            version.status = VersionStatus.FAILED
            version.metrics = {**(version.metrics or {}), "error": reason}
    rounds = set(train_rounds(job.params or {})) if job.kind == "train" else set()
    if job.round_id and job.kind in ("sample", "round", "train"):
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


def _lock_free(db: str) -> bool:
    """True if no process holds the model lock (no worker, no foreground job)."""
    import fcntl

    if _lock_depth:
        return False
    if is_postgres(db):
        with get_engine(db).connect() as conn:
            free = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": JOB_LOCK_KEY}).scalar()
            if free:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": JOB_LOCK_KEY})
            conn.commit()
        return bool(free)
    path = jobs_dir(db) / "model.lock"
    if not path.exists():
        return True
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


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


# --------------------------------------------------------------------------- the worker


def _next_queued(db: str) -> int | None:
    with session_scope(db) as session:
        return session.exec(select(Job.id).where(Job.status == JobStatus.QUEUED, Job.pid.is_(None))
                            .order_by(Job.id)).first()


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
    else:
        db, job_id, lock = argv[0], int(argv[1]), True
    job = run_job_inline(db, job_id, lock=lock)
    print(f"job {job_id} {job.status}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
