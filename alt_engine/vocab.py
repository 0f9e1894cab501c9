"""The domain's words in one place: the statuses a job, a round and a model version go through, and the kinds,
placements and names the code compares against.

Plain enums (``StrEnum``: each member is its stored string, so it compares, hashes and binds in SQL as one) with
no database import, so code that only needs the words (the CLI, the console) need not load the tables;
``alt_engine.db`` re-exports them.
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
    """training → ready → served → retired, or failed; one version at a time is served."""

    TRAINING = "training"
    READY = "ready"
    SERVED = "served"
    FAILED = "failed"
    RETIRED = "retired"


class JobKind(StrEnum):
    """What a queued job does (``Job.kind``); ``jobs.runners`` maps each to its handler."""

    SAMPLE = "sample"
    FEEDBACK = "feedback"
    TRAIN = "train"
    EVAL = "eval"
    ROUND = "round"
    SCORE = "score"


class FeedbackKind(StrEnum):
    """What a ``Feedback`` row holds (``Feedback.kind``): a label, a comment, a critique, a judgment or a flag."""

    CATEGORY = "category"
    TEXT = "text"  # free text, with a score 0–3
    CRITIQUE = "critique"  # critique + revision (Critique-and-Revise)
    JUDGMENT = "judgment"  # CUT
    FLAG = "flag"  # "this item is broken": not a label

    @classmethod
    def labels(cls) -> tuple[FeedbackKind, ...]:
        """The kinds that label a response (the pool's and the export's)."""
        return (cls.CATEGORY, cls.TEXT)


class Placement(StrEnum):
    """Where a conditioning format puts the feedback (``conditioning.Format.placement``)."""

    PREFIX = "prefix"
    SYSTEM = "system"
    USER = "user"
    TOKENS = "tokens"
    NONE = "none"


class ObjectiveName(StrEnum):
    """The objectives a model version was trained with (``ModelVersion.objective``); ``base`` is untrained."""

    BASE = "base"
    ALT = "alt"
    QUARK = "quark"
    STEERLM = "steerlm"
    SFT = "sft"
    CUT = "cut"
    CNR = "cnr"


class SubmitStatus(StrEnum):
    """What became of an annotator's submission (``SubmitResult.status``)."""

    SAVED = "saved"
    DUPLICATE = "duplicate"  # the same again: nothing written
    ALREADY_LABELLED = "already_labelled"  # differently: nothing written


HUMAN_PREFIX = "human:"  # a person's ``Feedback.source``: ``human:<name>`` (else ``llm:``, ``reward:``, ``rule:``)

# statuses written by older code, rewritten by ``db.init_db`` (idempotent, portable SQL)
OLD_ROUND_STATUSES = {"feedback": RoundStatus.LABELLING, "done": RoundStatus.TRAINED}

__all__ = ["JobStatus", "RoundStatus", "VersionStatus", "JobKind", "FeedbackKind", "Placement", "ObjectiveName",
           "SubmitStatus", "HUMAN_PREFIX", "OLD_ROUND_STATUSES"]
