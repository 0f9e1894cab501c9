"""``train_version``: a training job run and watched to its end, the trainer ``rounds.run_round`` is given (a
stage never imports the job queue; the queue hands it the way to train)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..db import JobStatus, Task, session_scope
from .queue import create_job, get_job, start_job, wait_job
from .run import run_job_inline

if TYPE_CHECKING:
    from ..plan import TrainSpec
    from ..settings import Settings

Log = Callable[[str], None]


def train_version(db: str, settings: Settings, spec: TrainSpec, background: bool = False, wait: bool = True,
                  log: Log = print, progress: Callable[[float], None] | None = None) -> tuple[int, int | None]:
    """Run the training job ``spec`` (``plan.plan_train``, or a round's own); (job id, version id).

    The pool is checked first, so no feedback / one category fails with its cause and fix before any job or
    version row exists. Foreground: the job runs in this process; background: a subprocess job (waited for
    unless ``wait=False``, then the version id is None). The Job row records progress, the loss log, errors.
    """
    from ..pool import check_pool
    from ..training.objectives import get

    check_pool(db, _task_row(db, spec.task_id), get(spec.objective), spec.pool)
    params = {**spec.params(),
              "settings": {k: getattr(settings, k) for k in ("models_dir", "cache_dir", "device", "threads")}}
    if background:
        job_id = start_job(db, "train", params)
        log(f"  training job {job_id} (background)")
        if not wait:
            return job_id, None
        with _watch(db, job_id, log, progress):
            job = wait_job(db, job_id, timeout=None)
    else:
        job_id = create_job(db, "train", params)
        log(f"  training job {job_id}")
        with _watch(db, job_id, log, progress):
            job = run_job_inline(db, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"training job {job_id} failed: {job.error or job.message}")
    return job_id, int(job.result["version_id"])


def _task_row(db: str, task_id: int) -> Task:
    with session_scope(db) as s:
        return s.get(Task, task_id)


@contextmanager
def _watch(db: str, job_id: int, log: Log, progress: Callable[[float], None] | None = None, every: float = 2.0):
    """Print the job's progress while it runs (the trainer's own bar is off: the Job row is the record)."""
    stop = threading.Event()

    def loop():
        last = None
        while not stop.wait(every):
            job = get_job(db, job_id)
            line = f"  train {job.progress:4.0%}  {job.message}"
            if line != last and job.status == JobStatus.RUNNING:
                log(line)
                last = line
                if progress is not None:
                    progress(job.progress)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
