"""The model lock: one job at a time, on a machine (a file lock next to the database) or across machines
(a PostgreSQL advisory lock). Re-entrant in this process, so a round job runs its train job inside it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..db import get_engine, is_postgres, is_url


def jobs_dir(db: str) -> Path:
    """Job logs and the job lock: next to a SQLite file; for a database URL, under the cache directory (one
    folder per database), so the lock is per machine: run one worker machine per database."""
    if not is_url(db):
        return Path(db).resolve().parent / "jobs"
    import hashlib

    from ..settings import Settings

    return Path(Settings.from_env().cache_dir) / "jobs" / hashlib.sha256(db.encode()).hexdigest()[:16]


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


def held_by_parent() -> None:
    """This process is a worker's child: the worker holds the lock for it, so a job it runs inline (a round's
    training) takes it without waiting."""
    global _lock_depth
    _lock_depth = 1
