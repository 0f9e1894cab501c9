"""At most k labels per item: the locks every writer takes and the count it checks before writing.

SQLite: every write transaction starts with a write statement (``_take_write_lock``) so SQLite takes its write
lock before anything is read, and an in-process lock (``_local_lock``) keeps the server's own threads from
waiting in SQLite's sleeping busy handler. PostgreSQL: ``may_label`` locks the generation row ``FOR UPDATE``
before ``label_slots`` counts, so every lease or label added to a generation is serialised on that row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

from sqlalchemy import text
from sqlmodel import Session

from .annotation_items import _ts
from .db import is_postgres

_write_lock = threading.Lock()


def _local_lock(db: str):
    """SQLite: this process's threads take turns (none sleeps in SQLite's busy handler). PostgreSQL: none —
    its row locks serialise the writers of one item, whatever process they are in."""
    return contextlib.nullcontext() if is_postgres(db) else _write_lock


def _postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _take_write_lock(s: Session) -> None:
    """SQLite: take the database's write lock before reading. PostgreSQL: nothing — row locks instead."""
    if not _postgres(s):
        s.connection().execute(text("UPDATE lease SET state = state WHERE 0"))


_LOCK_GENERATION = text("SELECT id FROM generation WHERE id = :g FOR UPDATE")


def _lock_generation(s: Session, generation_id: int) -> None:
    """PostgreSQL: lock the generation row until commit, so the leases and labels on it cannot change between
    counting them and writing. Every transaction that adds a lease or a label to a generation takes this lock
    first (in ``may_label``, or ``FOR UPDATE … SKIP LOCKED`` in ``next_item``). SQLite: the write lock did it."""
    if _postgres(s):
        s.connection().execute(_LOCK_GENERATION, {"g": generation_id})


# --------------------------------------------------------------------------- the overlap rule

_SLOTS = text("""
SELECT COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state = 'open' AND expires_at > :now THEN 1 ELSE 0 END), 0)
FROM lease WHERE generation_id = :g AND user_id <> :u
""")


def label_slots(s: Session, generation_id: int, user_id: int, now: dt.datetime) -> tuple[int, int]:
    """(finished labels, live leases) of everyone but ``user_id`` on one generation.

    Call it inside the transaction that then writes (SQLite: after the write lock is taken; PostgreSQL: after
    ``SELECT … FROM generation WHERE id = :g FOR UPDATE``), so nothing can change between count and write.
    A done lease is one label (submit or flag) — the Feedback rows are written in the same transaction.
    """
    done, live = s.connection().execute(_SLOTS, {"g": generation_id, "u": user_id, "now": _ts(now)}).one()
    return int(done), int(live)


def may_label(s: Session, generation_id: int, user_id: int, k: int, now: dt.datetime, late: bool) -> bool:
    """The rule that keeps every item at ≤ k labels: may ``user_id`` add one now?

    Never once others' finished labels reach k. A late submit (its lease expired; an undo or a resumed lease,
    whose holder was not counted meanwhile) also yields to others' live leases: they were handed out while
    this user's lease did not count, so each holds one of the k places.
    """
    _lock_generation(s, generation_id)
    done, live = label_slots(s, generation_id, user_id, now)
    return done < k and (not late or done + live < k)
