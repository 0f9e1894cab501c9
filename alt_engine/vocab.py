"""The statuses a job, a round and a model version go through, in one place.

Plain enums with no database import, so code that only needs the words (the CLI, the console) need not load the
tables; ``alt_engine.db`` re-exports them.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """queued → running → succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def finished(cls) -> tuple[JobStatus, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED)

    @classmethod
    def active(cls) -> tuple[JobStatus, ...]:
        return (cls.QUEUED, cls.RUNNING)


class RoundStatus(StrEnum):
    """sampling → labelling → training → trained → closed, or failed.

    Annotators work on ``open()`` rounds only; starting training on a round closes it for annotation.
    """

    SAMPLING = "sampling"
    LABELLING = "labelling"
    TRAINING = "training"
    EVALUATING = "evaluating"
    TRAINED = "trained"
    CLOSED = "closed"
    FAILED = "failed"

    @classmethod
    def open(cls) -> tuple[RoundStatus, ...]:
        return (cls.SAMPLING, cls.LABELLING)


class VersionStatus(StrEnum):
    TRAINING = "training"
    READY = "ready"
    SERVED = "served"
    FAILED = "failed"
    RETIRED = "retired"


# statuses written by older code, rewritten by ``db.init_db`` (idempotent, portable SQL)
OLD_ROUND_STATUSES = {"feedback": RoundStatus.LABELLING, "done": RoundStatus.TRAINED}

__all__ = ["JobStatus", "RoundStatus", "VersionStatus", "OLD_ROUND_STATUSES"]
