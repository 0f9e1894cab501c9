"""The database: every table, the one engine per process, transactions, migrations.

A database is named by a SQLite file path (the default, ``annotations.db``) or by a SQLAlchemy URL
(``ALT_DATABASE_URL``, e.g. ``postgresql+psycopg://user:pw@host/alt``): every function taking ``db``
takes either. SQLite runs in WAL mode with foreign keys on; PostgreSQL sessions run in UTC, so the
naive UTC timestamps both store compare alike. All writes go through ``session_scope``
so a multi-row write is one transaction. Schema changes are numbered
migrations in ``MIGRATIONS``; ``init_db`` creates a new database at the newest
version or upgrades an old one in place.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from .textpolicy import NulError, replace_nul

SCHEMA_VERSION = 2


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- statuses


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


# statuses written by older code, rewritten by ``init_db`` (idempotent, portable SQL)
_OLD_ROUND_STATUSES = {"feedback": RoundStatus.LABELLING, "done": RoundStatus.TRAINED}


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
        return self.source.startswith("human:")


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

    # the queue walks these from its ceiling down (annotation._passes): (score DESC, id), no sort per request
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


def _refuse_nul_parameters(_conn, _cursor, _statement, parameters, _context, _executemany) -> None:
    """Any other text with a NUL is refused alike on SQLite and PostgreSQL (PostgreSQL would raise mid-write)."""
    rows = parameters if isinstance(parameters, list) else [parameters]
    for row in rows:
        values = row.values() if isinstance(row, dict) else (row or ())
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise NulError("a value")


# --------------------------------------------------------------------------- engine

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def is_url(db: str | Path) -> bool:
    """Whether ``db`` is a SQLAlchemy URL rather than a SQLite file path."""
    return "://" in str(db)


def database_url(db: str | Path) -> str:
    """The SQLAlchemy URL of ``db`` (a SQLite path becomes ``sqlite:///ABSOLUTE_PATH``)."""
    return str(db) if is_url(db) else f"sqlite:///{Path(db).resolve()}"


def is_postgres(db: str | Path) -> bool:
    return database_url(db).startswith(("postgresql", "postgres:"))


def get_engine(path: str | Path) -> Engine:
    """One engine per database per process."""
    url = database_url(path)
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(engine, "connect", _on_connect)
            else:  # PostgreSQL (or any server database): a pool per process; sessions in UTC
                connect_args = {"options": "-c timezone=UTC"} if is_postgres(url) else {}
                engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=32,
                                       connect_args=connect_args)
            event.listen(engine, "before_cursor_execute", _refuse_nul_parameters)
            _engines[url] = engine
        return _engines[url]


def dispose_engine(path: str | Path) -> None:
    """Close this process's connections to ``path`` (tests dropping a database; forked processes)."""
    with _lock:
        engine = _engines.pop(database_url(path), None)
    if engine is not None:
        engine.dispose()


@contextmanager
def session_scope(path: str | Path) -> Iterator[Session]:
    """A session whose writes commit together on success and roll back on error."""
    with Session(get_engine(path), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def insert_ignore(session: Session, model: type[SQLModel], **values) -> None:
    """``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL: creating a row that another process may be
    creating at the same moment (then read it ``with_for_update``) without a unique-key error."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model.__table__).values(**values).on_conflict_do_nothing())


# --------------------------------------------------------------------------- migrations

# version -> function upgrading from (version - 1), for changes that are not a new table or column
# (renames, data rewrites). New tables and new columns need no migration: ``add_missing_columns``.
# Every 64-bit value the engine writes is a BIGINT column: ``generation.seed`` (``sampling.sequence_seed`` is a
# 63-bit mix). Other integers are counts, ids, pids and versions (32-bit); 64-bit values inside JSON need nothing.
BIGINT_COLUMNS = {"generation": ["seed"]}


def _v2_bigint(conn: Connection) -> None:
    """v1 → v2: 64-bit columns become BIGINT (PostgreSQL's INTEGER is 32-bit; SQLite's INTEGER is 64-bit already)."""
    if conn.dialect.name != "postgresql":
        return
    for table, columns in BIGINT_COLUMNS.items():
        for col in columns:
            conn.execute(text(f'ALTER TABLE "{table}" ALTER COLUMN "{col}" TYPE BIGINT'))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _v2_bigint}


def schema_version(path: str | Path) -> int | None:
    with get_engine(path).connect() as conn:
        if not inspect(conn).has_table("schemainfo"):
            return None
        row = conn.execute(text("SELECT version FROM schemainfo WHERE id=1")).first()
        return row[0] if row else None


def schema_lock_path(path: str | Path) -> Path:
    """The file ``init_db`` locks for a SQLite database: beside it, never the database file itself."""
    return Path(f"{path}.schema-lock")


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """One process at a time creates or upgrades the schema (several app processes may start at once):
    a PostgreSQL advisory lock, or ``flock`` on a separate ``<db>.schema-lock`` file for SQLite.

    Never open the database file itself here: closing *any* descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's WAL locks included; the next client that closes the database cleanly then
    deletes ``-wal``/``-shm`` under the live server, whose later writes go to unlinked files
    (sqlite.org/howtocorrupt.html §2.2)."""
    if engine.dialect.name == "sqlite":
        import fcntl

        path = engine.url.database
        if not path or path == ":memory:":
            yield
            return
        with open(schema_lock_path(path), "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(7215)"))
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7215)"))
            conn.commit()


def init_db(path: str | Path) -> int:
    """Create or upgrade the database at ``path`` (file or URL); returns the schema version."""
    with _schema_lock(get_engine(path)):
        return _init_db(path)


def _init_db(path: str | Path) -> int:
    engine = get_engine(path)
    current = schema_version(path)
    if current is None:
        SQLModel.metadata.create_all(engine)
        with session_scope(path) as s:
            s.add(SchemaInfo(version=SCHEMA_VERSION))
        return SCHEMA_VERSION
    if current == SCHEMA_VERSION:
        SQLModel.metadata.create_all(engine)
        add_missing_columns(engine)
        _rename_old_statuses(engine)
        return SCHEMA_VERSION
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"database schema v{current} is newer than this code (v{SCHEMA_VERSION}): "
                           "upgrade alt-studio")
    with engine.begin() as conn:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        conn.execute(text("UPDATE schemainfo SET version=:v WHERE id=1"), {"v": SCHEMA_VERSION})
    SQLModel.metadata.create_all(engine)  # tables new since `current`
    add_missing_columns(engine)
    _rename_old_statuses(engine)
    return SCHEMA_VERSION


def _rename_old_statuses(engine: Engine) -> None:
    """Round statuses of older code (``feedback``, ``done``) become today's; a no-op once done."""
    with engine.begin() as conn:
        for old, new in _OLD_ROUND_STATUSES.items():
            conn.execute(text("UPDATE round SET status = :new WHERE status = :old"), {"new": str(new), "old": old})


def add_missing_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE … ADD COLUMN`` for every model column an existing table lacks; returns ``table.column``s.

    Additive schema changes (the common case) then need no numbered migration, so work on several
    branches never fights over migration numbers. Existing rows get the column's scalar default.
    """
    added = []
    with engine.begin() as conn:
        have = inspect(conn)
        for table in SQLModel.metadata.sorted_tables:
            if not have.has_table(table.name):
                continue
            existing = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name in existing:
                    continue
                ddl = f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {col.type.compile(engine.dialect)}'
                default = col.default.arg if col.default is not None and col.default.is_scalar else None
                if isinstance(default, bool):
                    ddl += f" DEFAULT {int(default)}" if engine.dialect.name == "sqlite" else f" DEFAULT {default}"
                elif isinstance(default, int | float):
                    ddl += f" DEFAULT {default}"
                elif isinstance(default, str):
                    ddl += " DEFAULT '" + default.replace("'", "''") + "'"
                conn.execute(text(ddl))
                added.append(f"{table.name}.{col.name}")
    return added


__all__ = [
    "JobStatus", "RoundStatus", "VersionStatus",
    "ApiKey", "AppSecret", "Feedback", "Generation", "Job", "JudgeCall", "Lease", "ModelVersion", "Prompt", "Round",
    "QueueScore",
    "SchemaInfo", "SignInThrottle", "Task", "TrainingExample", "User", "get_engine", "init_db", "session_scope",
    "database_url", "dispose_engine", "insert_ignore", "is_postgres", "is_url",
    "select", "utcnow", "SCHEMA_VERSION", "MIGRATIONS", "add_missing_columns",
]
