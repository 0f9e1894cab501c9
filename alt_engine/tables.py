"""Every table of the studio's database, as SQLModel classes, and the NUL policy on the rows they write.

Defined here once, so ``SQLModel.metadata`` holds every table as soon as this module is imported;
``alt_engine.db`` (engine, sessions, ``init_db`` and its migrations) imports it before it creates or upgrades
anything, and re-exports every class, so ``from alt_engine.db import Task`` keeps working.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, event, text
from sqlmodel import Field, SQLModel

from .textpolicy import replace_nul
from .vocab import HUMAN_PREFIX, JobStatus, RoundStatus, VersionStatus


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(default=None) -> Any:
    factory = default if callable(default) else (lambda: default)
    return Field(default_factory=factory, sa_column=Column(JSON(none_as_null=True)))


# --------------------------------------------------------------------------- tables


class SchemaInfo(SQLModel, table=True):
    id: int = Field(default=1, primary_key=True)
    version: int


class Task(SQLModel, table=True):
    """A feedback schema: categories ordered best → worst; the first is the exemplar unless set."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    description: str = ""
    categories: list[str] = _json(list)
    exemplar: str | None = None
    allow_free_text: bool = True
    allow_critique: bool = True  # critique + revision fields on the annotator's screen
    allow_judgment: bool = True  # the judgment field (CUT)
    prefix_format: str = "{feedback}"  # legacy (before conditioning formats); unused
    conditioning: dict = _json(dict)  # conditioning.Format for versions trained on this task ({} = the default)
    guidelines: str = ""
    annotations_per_item: int = 1
    show_conditioning: bool = False
    queue_strategy: str = "fixed"  # the annotation queue's order (alt_engine.queue_order.STRATEGIES)
    created_at: dt.datetime = Field(default_factory=utcnow)

    @property
    def exemplar_category(self) -> str | None:
        return self.exemplar or (self.categories[0] if self.categories else None)


class Prompt(SQLModel, table=True):
    """A prompt: plain ``text`` or chat ``messages`` ([{role, content}, ...])."""

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    text: str | None = None
    messages: list[dict] | None = _json()
    split: str = Field(default="train", index=True)  # train | probe
    source: str = ""
    meta: dict = _json(dict)
    created_at: dt.datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    """A model the studio can serve: the base model or a trained round."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    parent_id: int | None = Field(default=None, foreign_key="modelversion.id")
    path: str  # hub id or local directory
    objective: str = "base"  # base | alt | quark | steerlm | cut | cnr
    conditioning: dict = _json(dict)  # the conditioning.Format it was trained with ({} = base: the task's)
    hyperparameters: dict = _json(dict)
    metrics: dict = _json(dict)
    status: str = Field(default=VersionStatus.READY, index=True)  # VersionStatus
    created_at: dt.datetime = Field(default_factory=utcnow)


class Round(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    number: int
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    status: str = Field(default=RoundStatus.SAMPLING, index=True)  # RoundStatus
    notes: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("task_id", "number"),)


class Generation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    round_id: int | None = Field(default=None, foreign_key="round.id", index=True)
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    conditioning: str | None = None  # the feedback text sampled with, None = unconditioned
    response: str
    prompt_tokens: int = 0
    response_tokens: int = 0
    truncated: bool = False
    sampling_params: dict = _json(dict)
    seed: int | None = Field(default=None, sa_column=Column(BigInteger))  # 63-bit (sampling.sequence_seed)
    created_at: dt.datetime = Field(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    """Feedback on one generation, with its provenance in ``source``.

    source: ``human:<user>``, ``llm:<model>``, ``reward:<model>``, ``rule:<name>``.
    kind: ``category`` | ``text`` | ``critique`` (critique + revision) | ``judgment`` | ``flag``.
    """

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id", index=True)
    source: str = Field(index=True)
    kind: str = "category"
    category: str | None = None
    text: str | None = None
    score: float | None = None
    critique: str | None = None
    revision: str | None = None
    user_id: int | None = Field(default=None, foreign_key="user.id")
    raw: str | None = None  # provider's raw reply, kept for audit
    request_key: str | None = Field(default=None, index=True)  # idempotency key (double clicks)
    created_at: dt.datetime = Field(default_factory=utcnow)

    @property
    def is_human(self) -> bool:
        return self.source.startswith(HUMAN_PREFIX)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    role: str = "annotator"  # annotator | admin
    password_hash: str
    active: bool = True
    session_gen: int = 0  # in every session cookie; bumped (sessions revoked) on sign-out, new password, deactivation
    created_at: dt.datetime = Field(default_factory=utcnow)


class SignInThrottle(SQLModel, table=True):
    """Failed sign-ins per client address (``addr:<ip>``) and per user name (``name:<name>``).

    In the database, so every app process on it shares the counts (see ``alt_engine.users.begin_sign_in``).
    """

    key: str = Field(primary_key=True)
    failures: int = 0
    window_start: dt.datetime = Field(default_factory=utcnow)
    locked_until: dt.datetime | None = None
    pending: int = 0  # attempts admitted whose password check has not ended yet
    pending_at: dt.datetime | None = None


class ApiKey(SQLModel, table=True):
    """A user's key for the OpenAI-compatible ``/v1`` routes; only its SHA-256 is stored."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = ""
    prefix: str = ""  # the first characters, to tell keys apart in a list
    key_hash: str = Field(unique=True, index=True)
    revoked: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow)
    last_used_at: dt.datetime | None = None


class AppSecret(SQLModel, table=True):
    """A secret every app process must share (the session-cookie signing key when none is configured)."""

    name: str = Field(primary_key=True)
    value: str
    created_at: dt.datetime = Field(default_factory=utcnow)


class StoredSetting(SQLModel, table=True):
    """A setting an admin changed in the console (``settings.STORED``): every process and job reads it from here."""

    name: str = Field(primary_key=True)
    value: str  # JSON
    updated_by: str | None = None
    updated_at: dt.datetime = Field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """An annotator's claim on a generation until ``expires_at``."""

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    expires_at: dt.datetime
    state: str = "open"  # open | done | skipped | expired (see alt_engine.annotation)
    acted_at: dt.datetime | None = None  # when it left "open" by the holder's action (submit, skip, flag): undo order

    __table_args__ = (UniqueConstraint("generation_id", "user_id"),)


class QueueScore(SQLModel, table=True):
    """Why a generation comes next in the annotation queue (``alt_engine.queue_order``): one row per generation,
    written by the ``score`` job after sampling; shown to admins, never to annotators."""

    generation_id: int = Field(foreign_key="generation.id", primary_key=True)
    uncertainty: float | None = None  # 0..1: entropy of p(f | x, y) ∝ p(y | f, x) over the task's feedback, / log K
    guess: str | None = None  # the feedback under which the model finds the response likeliest
    disagreement: float | None = None  # 0..1: how far apart the labels already on it are (AI providers, people)
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")  # the model that scored it
    detail: dict = _json(dict)  # {"loglik": {feedback: summed log p(y | f, x)}, "labels": {source: label}}
    scored_at: dt.datetime = Field(default_factory=utcnow)

    # the queue walks these from its ceiling down (annotation_queue._passes): (score DESC, id), no sort per request
    __table_args__ = (Index("ix_queuescore_uncertainty", text("uncertainty DESC"), text("generation_id")),
                      Index("ix_queuescore_disagreement", text("disagreement DESC"), text("generation_id")))


class Job(SQLModel, table=True):
    """A long-running piece of work (sample, feedback, train, eval, round) with progress (alt_engine.jobs)."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    status: str = Field(default=JobStatus.QUEUED, index=True)  # JobStatus
    progress: float = 0.0
    stage: str = ""  # what it is doing now (sampling, training, ...)
    message: str = ""
    task_id: int | None = Field(default=None, foreign_key="task.id")
    round_id: int | None = Field(default=None, foreign_key="round.id")  # the round it made or works on
    version_id: int | None = Field(default=None, foreign_key="modelversion.id")  # the version it made
    retry_of: int | None = Field(default=None, foreign_key="job.id")
    cancel_requested: bool = False
    host: str = ""  # where ``pid`` runs
    heartbeat_at: dt.datetime | None = None  # refreshed while it runs; stale = its process died
    params: dict = _json(dict)
    result: dict = _json(dict)
    log: list = _json(list)  # the loss log: [{"step": 1, "loss": 2.3}, ...]
    events: list = _json(list)  # what it did: [{"t": "12:00:01", "msg": "stage: sampling"}, ...]
    error: str | None = None
    pid: int | None = None
    created_at: dt.datetime = Field(default_factory=utcnow)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class TrainingExample(SQLModel, table=True):
    """Which feedback rows a model version was trained on (provenance)."""

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="modelversion.id", index=True)
    feedback_id: int = Field(foreign_key="feedback.id")


class JudgeCall(SQLModel, table=True):
    """Every LLM-judge request and raw reply; doubles as the cache."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True)  # hash of (model, prompt version, prompt, generation)
    generation_id: int | None = Field(default=None, foreign_key="generation.id")
    model: str
    prompt_version: str
    mode: str  # categorical | free_text
    request: list = _json(list)
    reply: str | None = None
    parsed: dict | None = _json()
    ok: bool = False
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- the NUL policy (alt_engine.textpolicy)


@event.listens_for(Generation, "before_insert")
@event.listens_for(Generation, "before_update")
def _generation_without_nul(_mapper, _conn, row: Generation) -> None:
    """Model output: NUL → U+FFFD, counted in the row's provenance."""
    row.response, n = replace_nul(row.response)
    if n:
        row.sampling_params = {**(row.sampling_params or {}), "nul_replaced": n}


@event.listens_for(Feedback, "before_insert")
@event.listens_for(JudgeCall, "before_insert")
def _ai_text_without_nul(_mapper, _conn, row) -> None:
    """An AI provider's text (never a person's: that is refused) gets NUL → U+FFFD."""
    if isinstance(row, Feedback) and row.is_human:
        return
    for name in ("text", "critique", "revision", "raw", "reply", "category"):
        if isinstance(getattr(row, name, None), str):
            setattr(row, name, replace_nul(getattr(row, name))[0])


__all__ = [
    "ApiKey", "AppSecret", "Feedback", "Generation", "Job", "JudgeCall", "Lease", "ModelVersion", "Prompt",
    "QueueScore", "Round", "SchemaInfo", "SignInThrottle", "StoredSetting", "Task", "TrainingExample", "User",
    "utcnow",
]
