"""Database: WAL, foreign keys, one transaction per write, schema version and migrations."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from alt_engine import db as dbm
from alt_engine.db import Generation, Task, get_engine, init_db, schema_version, session_scope


def test_wal_foreign_keys_and_version(db):
    with get_engine(db).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert schema_version(db) == dbm.SCHEMA_VERSION
    with pytest.raises(IntegrityError):
        with session_scope(db) as s:
            s.add(Generation(prompt_id=999, response="orphan"))


def test_failed_transaction_writes_nothing(db):
    with pytest.raises(RuntimeError):
        with session_scope(db) as s:
            s.add(Task(name="a", categories=["x", "y"]))
            s.flush()
            raise RuntimeError("boom")
    with session_scope(db) as s:
        assert s.exec(dbm.select(Task)).all() == []


def test_migration_path_upgrades_in_place(db, monkeypatch):
    with session_scope(db) as s:
        s.add(Task(name="kept", categories=["a", "b"]))

    def add_column(conn):
        conn.execute(text("ALTER TABLE task ADD COLUMN colour VARCHAR DEFAULT 'blue'"))

    monkeypatch.setattr(dbm, "SCHEMA_VERSION", dbm.SCHEMA_VERSION + 1)
    monkeypatch.setitem(dbm.MIGRATIONS, dbm.SCHEMA_VERSION, add_column)
    assert init_db(db) == dbm.SCHEMA_VERSION
    with get_engine(db).connect() as conn:
        assert conn.execute(text("SELECT name, colour FROM task")).all() == [("kept", "blue")]
    assert schema_version(db) == dbm.SCHEMA_VERSION


def test_newer_database_is_refused(db, monkeypatch):
    monkeypatch.setattr(dbm, "SCHEMA_VERSION", 0)
    with pytest.raises(RuntimeError, match="newer than this code"):
        init_db(db)


def test_new_columns_are_added_without_a_migration(db, monkeypatch):
    """A column added to a model reaches an existing database on the next init, old rows keep theirs."""
    from sqlalchemy import Column, Integer

    with session_scope(db) as s:
        s.add(Task(name="old", categories=["a", "b"]))
    col = Column("colour_rank", Integer, default=7)
    Task.__table__.append_column(col)
    try:
        init_db(db)
        with get_engine(db).connect() as conn:
            assert conn.execute(text("SELECT name, colour_rank FROM task")).all() == [("old", 7)]
    finally:
        Task.__table__._columns.remove(col)
