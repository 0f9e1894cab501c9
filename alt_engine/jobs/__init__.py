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

Modules: ``queue`` (create, start, read, wait, cancel, retry; liveness), ``lock`` (the model lock), ``context``
(``JobContext``), ``run`` (a job in this process), ``worker`` (the worker and its children), ``runners`` (the job
kinds), ``trainer`` (``train_version``, the trainer a round is given).
"""

from ..db import JobStatus
from .context import LOG_KEYS, JobCancelled, JobContext, progress_callback
from .lock import JOB_LOCK_KEY, _lock_free, jobs_dir, model_lock
from .queue import (
    FINISHED,
    HOST,
    JOB_KINDS,
    KINDS,
    STALE_S,
    JobView,
    cancel_job,
    create_job,
    ensure_worker,
    get_job,
    job_log_path,
    job_logs,
    job_settings,
    list_jobs,
    reap_dead_jobs,
    refresh,
    retry_job,
    start_job,
    train_rounds,
    view,
    wait_job,
)
from .run import HEARTBEAT_S, run_job_inline
from .runners import unlabelled_generations
from .trainer import train_version
from .worker import main, worker, worker_forever

__all__ = ["FINISHED", "HEARTBEAT_S", "HOST", "JOB_KINDS", "JOB_LOCK_KEY", "KINDS", "LOG_KEYS", "STALE_S",
           "JobCancelled", "JobContext", "JobStatus", "JobView", "_lock_free", "cancel_job", "create_job",
           "ensure_worker", "get_job", "job_log_path", "job_logs", "job_settings", "jobs_dir", "list_jobs", "main",
           "model_lock", "progress_callback", "reap_dead_jobs", "refresh", "retry_job", "run_job_inline",
           "start_job", "train_rounds", "train_version", "unlabelled_generations", "view", "wait_job", "worker",
           "worker_forever"]
