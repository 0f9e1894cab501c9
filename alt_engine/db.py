"""The database: the one engine per process, transactions, the schema lock, migrations.

A database is named by a SQLite file path (the default, ``annotations.db``) or by a SQLAlchemy URL
(``ALT_DATABASE_URL``, e.g. ``postgresql+psycopg://user:pw@host/alt``): every function taking ``db``
takes either. SQLite runs in WAL mode with foreign keys on; PostgreSQL sessions run in UTC, so the
naive UTC timestamps both store compare alike. All writes go through ``session_scope``
so a multi-row write is one transaction. Schema changes are numbered
migrations in ``MIGRATIONS``; ``init_db`` creates a new database at the newest
version or upgrades an old one in place.

The tables are ``alt_engine.tables`` and the vocabulary (statuses, kinds, placements) ``alt_engine.vocab``; both are
re-exported here, so ``from alt_engine.db import Task, RoundStatus, session_scope`` is the one import the rest of the
code needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel, create_engine, select

# every table class, defined once in .tables: importing it fills SQLModel.metadata before create_all runs
from .tables import (
    ApiKey,
    AppSecret,
    Feedback,
    Generation,
    Job,
    JudgeCall,
    Lease,
    ModelVersion,
    Prompt,
    QueueScore,
    Round,
    SchemaInfo,
    SignInThrottle,
    StoredSetting,
    Task,
    TrainingExample,
    User,
    utcnow,
)
from .textpolicy import NulError
from .vocab import (
    HUMAN_PREFIX,
    OLD_ROUND_STATUSES,
    FeedbackKind,
    JobKind,
    JobStatus,
    ObjectiveName,
    Placement,
    RoundStatus,
    SubmitStatus,
    VersionStatus,
)

SCHEMA_VERSION = 2


# --------------------------------------------------------------------------- the NUL policy (alt_engine.textpolicy)
# (the tables' own NUL rules are mapper events in alt_engine.tables)


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
        for old, new in OLD_ROUND_STATUSES.items():
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
    "JobKind", "FeedbackKind", "Placement", "ObjectiveName", "SubmitStatus", "HUMAN_PREFIX",
    "ApiKey", "AppSecret", "Feedback", "Generation", "Job", "JudgeCall", "Lease", "ModelVersion", "Prompt", "Round",
    "QueueScore", "StoredSetting",
    "SchemaInfo", "SignInThrottle", "Task", "TrainingExample", "User", "get_engine", "init_db", "session_scope",
    "database_url", "dispose_engine", "insert_ignore", "is_postgres", "is_url",
    "select", "utcnow", "SCHEMA_VERSION", "MIGRATIONS", "add_missing_columns",
]
