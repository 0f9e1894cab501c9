"""Writes survive other SQLite clients; 64-bit values and NUL characters behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

from alt_engine import db as dbm
from alt_engine.db import Task, init_db, session_scope


def _count(db: str) -> int:
    with session_scope(db) as s:
        return len(s.exec(dbm.select(Task)).all())


def _other_client_count(db: str) -> int:
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from task')"
            ".fetchone()[0]); c.close()")
    return int(subprocess.run([sys.executable, "-c", code, db], check=True, timeout=60, capture_output=True,
                              text=True).stdout)


def test_another_sqlite_client_does_not_lose_the_servers_writes(tmp_path):
    """Item 1: ``init_db`` (run by every ``create_app``) must not drop this process's WAL locks; a second client
    that opens and closes the database cleanly must then leave the -wal file alone, and no write is lost."""
    db = str(tmp_path / "live.db")
    init_db(db)
    with session_scope(db) as s:
        s.add(Task(name="before", categories=["a"]))
    init_db(db)  # as create_app does, with this process's pooled connection open
    with session_scope(db) as s:
        s.add(Task(name="first", categories=["a"]))
    assert _other_client_count(db) == 2  # e.g. `sqlite3 db "select count(*) from task"`, a backup, a script
    for i in range(5):  # answered "saved" on the server's connection
        with session_scope(db) as s:
            s.add(Task(name=f"after-{i}", categories=["a"]))
    assert _count(db) == 7
    # what any other process (a restart after a crash, a backup) sees while the server still runs
    assert _other_client_count(db) == 7, "writes after another client's visit went to an unlinked WAL"
    dbm.dispose_engine(db)
    assert _count(db) == 7
    with session_scope(db) as s:
        s.add(Task(name="later", categories=["a"]))  # no 'disk I/O error'
    dbm.dispose_engine(db)
