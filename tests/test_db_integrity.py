"""Writes survive other SQLite clients; 64-bit values and NUL characters behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text

from alt_engine import db as dbm
from alt_engine.db import Generation, Prompt, Task, get_engine, init_db, is_postgres, session_scope


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


@pytest.fixture
def kind_db(dbkind, make_db):
    """A fresh database on SQLite and on PostgreSQL."""
    return make_db("integrity")


def _prompt(db: str) -> int:
    with session_scope(db) as s:
        t = Task(name="t", categories=["a"])
        s.add(t)
        s.flush()
        p = Prompt(task_id=t.id, text="hello")
        s.add(p)
        s.flush()
        return p.id


def test_63_bit_seeds_are_stored_after_the_bigint_migration(kind_db):
    """Item 2: ``sampling.sequence_seed`` is 63-bit; a v1 database (INTEGER seed, 32-bit on PostgreSQL) is
    upgraded in place to BIGINT and keeps its rows."""
    from alt_engine.sampling import sequence_seed

    seed = max(sequence_seed(0, i, j) for i in range(4) for j in range(4))
    assert seed > 2**62
    pid = _prompt(kind_db)
    with session_scope(kind_db) as s:
        s.add(Generation(prompt_id=pid, response="old", seed=7))
    with get_engine(kind_db).begin() as conn:  # back to the v1 schema
        if is_postgres(kind_db):
            conn.execute(text("ALTER TABLE generation ALTER COLUMN seed TYPE INTEGER"))
        conn.execute(text("UPDATE schemainfo SET version=1 WHERE id=1"))
    init_db(kind_db)
    with session_scope(kind_db) as s:  # PostgreSQL before the fix: NumericValueOutOfRange (integer out of range)
        s.add(Generation(prompt_id=pid, response="new", seed=seed))
    assert dbm.schema_version(kind_db) == dbm.SCHEMA_VERSION == 2
    with session_scope(kind_db) as s:
        assert sorted((g.response, g.seed) for g in s.exec(dbm.select(Generation))) == [("new", seed), ("old", 7)]


def test_nul_policy_is_one_for_both_databases(kind_db, tmp_path):
    """Item 3: a generation with NUL is stored (NUL → U+FFFD, counted in its provenance) instead of failing the
    round on PostgreSQL; a person's text with NUL is refused on both; an import names the line."""
    from alt_engine.db import Feedback
    from alt_engine.prompts import ImportError_, import_prompts
    from alt_engine.textpolicy import NulError

    pid = _prompt(kind_db)
    with session_scope(kind_db) as s:
        s.add(Generation(prompt_id=pid, response="a\x00b\x00", sampling_params={"temperature": 1.0}))
        s.add(Generation(prompt_id=pid, response="clean"))
    with session_scope(kind_db) as s:
        rows = {g.response: g for g in s.exec(dbm.select(Generation))}
        gid = rows["clean"].id
    assert rows["a\ufffdb\ufffd"].sampling_params == {"temperature": 1.0, "nul_replaced": 2}
    assert "nul_replaced" not in rows["clean"].sampling_params
    with pytest.raises(NulError):
        with session_scope(kind_db) as s:
            s.add(Feedback(generation_id=gid, source="human:alice", kind="text", text="ok\x00"))
    with session_scope(kind_db) as s:  # an AI judge's reply is model output: replaced, not refused
        s.add(Feedback(generation_id=gid, source="llm:judge", kind="text", text="fine\x00", raw="r\x00"))
    with session_scope(kind_db) as s:
        fb = s.exec(dbm.select(Feedback)).all()
        assert [(f.source, f.text, f.raw) for f in fb] == [("llm:judge", "fine\ufffd", "r\ufffd")]
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "fine"}\n{"prompt": "bad\\u0000"}\n')
    with pytest.raises(ImportError_, match=r"line 2: .*NUL"):
        import_prompts(kind_db, str(f), task="t")
    with session_scope(kind_db) as s:
        assert len(s.exec(dbm.select(Prompt)).all()) == 1  # nothing imported


def test_jsonl_duplicate_keys_are_refused(tmp_path):
    """Item 15: a JSONL line naming a key twice silently kept the last value (CSV duplicate columns are refused)."""
    from alt_engine.prompts import ImportError_, read_rows

    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b", "prompt": "c"}\n')
    with pytest.raises(ImportError_, match=r"d.jsonl line 2: duplicate key 'prompt'"):
        read_rows(str(f))
