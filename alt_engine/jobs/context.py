"""What a job handler runs with: ``JobContext`` (its db, id, params; progress, stage, log lines, links)."""

from __future__ import annotations

from collections.abc import Callable

from ..db import Job, session_scope, utcnow

LOG_KEYS = ("step", "epoch", "loss", "nll", "entropy", "kl", "learning_rate", "grad_norm", "num_input_tokens_seen",
            "train_runtime", "train_loss")


class JobCancelled(Exception):
    """Raised inside a job whose cancellation was asked for."""


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
        from ..settings import Settings

        return Settings.from_env(db=self.db, **self.params.get("settings", {}))


def _now_s() -> str:
    return utcnow().strftime("%H:%M:%S")


def progress_callback(db: str, job_id: int) -> Callable[[float, dict], None]:
    """A ``progress(fraction, logs)`` that records progress, a message and the loss log on the job row."""
    return JobContext(db, job_id, {})
