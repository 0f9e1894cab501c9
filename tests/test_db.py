"""Database: WAL, foreign keys, one transaction per write, schema version and migrations — on SQLite and
on PostgreSQL (a cluster of the tests' own; skipped with the reason when PostgreSQL is not installed)."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from alt_engine import db as dbm
from alt_engine.db import Generation, Task, get_engine, init_db, is_postgres, schema_version, session_scope
from alt_engine.settings import Settings

pytestmark = pytest.mark.usefixtures("dbkind")


def test_wal_foreign_keys_and_version(db):
    with get_engine(db).connect() as conn:
        if is_postgres(db):
            assert conn.execute(text("SHOW timezone")).scalar() == "UTC"
        else:
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


def test_database_url_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("ALT_DATABASE_URL", "postgresql+psycopg://u@h/alt")
    assert Settings.from_env().db == "postgresql+psycopg://u@h/alt"
    assert Settings.from_env(db=str(tmp_path / "x.db")).db == str(tmp_path / "x.db")  # --db wins
    monkeypatch.delenv("ALT_DATABASE_URL")
    assert Settings.from_env().db == "annotations.db"  # SQLite stays the default
    assert dbm.database_url("a.db").startswith("sqlite:///") and dbm.is_postgres("postgresql+psycopg://u@h/d")


def test_several_processes_initialise_one_database_at_once(db, tmp_path):
    """Two app processes starting together on a fresh database: one creates the schema, neither fails."""
    import os
    import subprocess
    import sys

    code = "import sys; from alt_engine.db import init_db; print(init_db(sys.argv[1]))"
    target = str(tmp_path / "fresh.db")
    if is_postgres(db):  # an empty database of its own
        from sqlalchemy import create_engine

        base, _, _ = db.rpartition("/")
        name = "fresh_" + os.urandom(4).hex()
        engine = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        target = f"{base}/{name}"
    procs = [subprocess.Popen([sys.executable, "-c", code, target], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert schema_version(target) == dbm.SCHEMA_VERSION
    with get_engine(target).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM schemainfo")).scalar() == 1
    dbm.dispose_engine(target)
