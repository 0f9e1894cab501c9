"""The annotation queue: which item an annotator gets next, under a lease, and how far a task has got.

``next_item`` hands out the generations of a task's open rounds in the order of its ``queue_strategy``
(``queue_order``), within the k-labels rule of ``annotation_limits``; ``upcoming`` shows that order to admins,
``progress`` counts it for one annotator, ``get_item`` reads back a leased item.
"""

from __future__ import annotations

import datetime as dt
import functools
import time

from sqlalchemy import bindparam, text
from sqlmodel import Session, select

from . import annotation_items as items
from .annotation_items import (
    AnnotationError,
    Item,
    Progress,
    _dt,
    _id,
    _item,
    _TaskRef,
    _tasks_in_order,
    _ts,
)
from .annotation_limits import _local_lock, _postgres, _take_write_lock, may_label
from .db import Lease, Task, session_scope
from .queue_order import PROMPT_LABELS, SCORE_JOIN, Strategy, order_by
from .users import UserInfo

_FROM = "FROM generation g JOIN round r ON r.id = g.round_id"
_WHERE = """
WHERE r.task_id = :task AND r.status IN ('sampling', 'labelling')
  AND NOT EXISTS (SELECT 1 FROM lease m WHERE m.generation_id = g.id AND m.user_id = :user)
  AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.generation_id = g.id AND f.kind = 'flag'
                  AND f.source LIKE 'human:%')
  AND (SELECT COUNT(*) FROM lease l WHERE l.generation_id = g.id
       AND (l.state = 'done' OR (l.state = 'open' AND l.expires_at > :now))) < :k
"""
_CANDIDATES = _FROM + _WHERE


def _params(task: _TaskRef, user: UserInfo, now: dt.datetime) -> dict:
    return {"task": task.id, "user": user.id, "now": _ts(now), "k": task.k, "floor": 0}


# The queue is scanned in generation order, so finished items pile up at its head; scanning past thousands of them
# on every request would cost ~10 ms under the write lock. ``_floor`` remembers, per task, the lowest generation id
# that is not finished (k done labels or a flag). Finishing is permanent except by undo (which resets the floor) or a
# larger k (part of the key), so the floor is a safe lower bound: it moves up from where it was every FLOOR_SECONDS
# and is recomputed from scratch every FLOOR_FULL_SECONDS (in case a round was reopened).
FLOOR_SECONDS, FLOOR_FULL_SECONDS = 2.0, 60.0
_floors: dict[tuple[str, int, int], tuple[int, float, float]] = {}  # key -> (floor, updated, fully computed)
_UNFINISHED = text("""
SELECT COALESCE(MIN(g.id), (SELECT MAX(id) + 1 FROM generation), 0)
FROM generation g JOIN round r ON r.id = g.round_id
WHERE r.task_id = :task AND r.status IN ('sampling', 'labelling') AND g.id >= :since
  AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.generation_id = g.id AND f.kind = 'flag'
                  AND f.source LIKE 'human:%')
  AND (SELECT COUNT(*) FROM lease l WHERE l.generation_id = g.id AND l.state = 'done') < :k
""")
# PostgreSQL: the candidate's row is locked as it is taken (``_passes(..., locked=True)``: ``FOR UPDATE OF g SKIP
# LOCKED``); one another annotator is taking is skipped, not waited for


TOP = 2.0  # above every stored score (0..1): the ceiling when nothing is known yet


def _scored(col: str) -> str:
    """Scored candidates in score order, walked from the ceiling down the index of (score DESC, id): CROSS JOIN
    makes SQLite's planner start from ``queuescore`` (no sort per request); PostgreSQL reads it as an inner join."""
    return ("SELECT g.id FROM queuescore q CROSS JOIN generation g CROSS JOIN round r" + _WHERE
            + f" AND g.id = q.generation_id AND r.id = g.round_id AND q.{col} IS NOT NULL AND q.{col} <= :ceiling")


@functools.lru_cache(maxsize=64)
def _passes(strategy: Strategy, locked: bool = False, skip: bool = False) -> tuple[tuple[object, bool], ...]:
    """The queries that hand out ``strategy``'s candidates, tried in turn: [(query, ordered by id)].

    fixed: generation order from the floor. uncertainty, disagreement: the scored items from the ceiling down
    (the highest score not yet finished), then the unscored ones in generation order. coverage, mix: their
    expression over every candidate (labels are counted live). ``skip``: leave out ``:skip`` ids (PostgreSQL
    passing over a candidate that filled meanwhile, when the order is not by id)."""
    tail = (" FOR UPDATE OF g SKIP LOCKED" if locked else "")
    skipped = " AND g.id NOT IN :skip" if skip else ""

    def query(sql: str, by_id: bool):
        q = text(sql + tail)
        return (q.bindparams(bindparam("skip", expanding=True)) if skip and not by_id else q), by_id

    by_id = "SELECT g.id " + _CANDIDATES + " AND g.id >= :floor"
    if strategy.name == "fixed":
        return (query(by_id + " ORDER BY g.id LIMIT :n", True),)
    if strategy.name in ("uncertainty", "disagreement"):
        col = strategy.name
        unscored = f" AND NOT EXISTS (SELECT 1 FROM queuescore q WHERE q.generation_id = g.id AND q.{col} IS NOT NULL)"
        return (query(_scored(col) + skipped + f" ORDER BY q.{col} DESC, q.generation_id LIMIT :n", False),
                query(by_id + unscored + " ORDER BY g.id LIMIT :n", True))
    return (query("SELECT g.id " + _FROM + SCORE_JOIN + _WHERE + " AND g.id >= :floor" + skipped
                  + f" ORDER BY {order_by(strategy)} LIMIT :n", False),)


_MINE = text("SELECT 1 FROM lease WHERE generation_id = :g AND user_id = :u")
_HELD = text("""
SELECT l.id, l.generation_id, l.expires_at FROM lease l
JOIN generation g ON g.id = l.generation_id JOIN round r ON r.id = g.round_id
WHERE l.user_id = :u AND l.state = 'open' AND r.status IN ('sampling', 'labelling') ORDER BY l.id
""")


# The same for a queue ordered by a stored score: the ceiling is the highest score of an unfinished item, so the
# scan starts there (an item re-scored above it meanwhile waits for the next full recompute, ≤ FLOOR_FULL_SECONDS).
_ceilings: dict[tuple[str, int, int, str], tuple[float, float, float]] = {}


def _unfinished_top(col: str):
    return text(f"""
SELECT q.{col} FROM queuescore q CROSS JOIN generation g CROSS JOIN round r
WHERE g.id = q.generation_id AND r.id = g.round_id AND r.task_id = :task AND r.status IN ('sampling', 'labelling')
  AND q.{col} IS NOT NULL AND q.{col} <= :since
  AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.generation_id = g.id AND f.kind = 'flag'
                  AND f.source LIKE 'human:%')
  AND (SELECT COUNT(*) FROM lease l WHERE l.generation_id = g.id AND l.state = 'done') < :k
ORDER BY q.{col} DESC LIMIT 1""")


def _ceiling(s: Session, db: str, task: _TaskRef, col: str) -> float:
    key, now = (db, task.id, task.k, col), time.monotonic()
    ceiling, updated, full = _ceilings.get(key, (TOP, -1e9, -1e9))
    if now - updated > FLOOR_SECONDS:
        since = TOP if now - full > FLOOR_FULL_SECONDS else ceiling
        top = s.connection().execute(_unfinished_top(col), {"task": task.id, "k": task.k, "since": since}).scalar()
        # nothing scored is unfinished: look from the top again next time (a new round's scores may come)
        _ceilings[key] = (-1.0, now, -1e9) if top is None else (top, now, now if since == TOP else full)
        ceiling = _ceilings[key][0]
    return ceiling


def _bounds(s: Session, db: str, task: _TaskRef) -> dict:
    """Where the queue's scans start: ``floor`` (generation id) and, for a score order, ``ceiling``."""
    bounds = {"floor": _floor(s, db, task)}
    if task.strategy.name in ("uncertainty", "disagreement"):
        bounds["ceiling"] = _ceiling(s, db, task, task.strategy.name)
    return bounds


def _floor(s: Session, db: str, task: _TaskRef) -> int:
    key, now = (db, task.id, task.k), time.monotonic()
    floor, updated, full = _floors.get(key, (0, -1e9, -1e9))
    if now - updated > FLOOR_SECONDS:
        since = 0 if now - full > FLOOR_FULL_SECONDS else floor
        floor = s.connection().execute(_UNFINISHED, {"task": task.id, "k": task.k, "since": since}).scalar_one()
        _floors[key] = (floor, now, now if since == 0 else full)
    return floor


def _forget_bounds() -> None:
    """After an undo the item is unfinished again: every floor and ceiling is recomputed from scratch."""
    _floors.clear()
    _ceilings.clear()


# --------------------------------------------------------------------------- queue


def next_item(db: str, user: UserInfo, task: str | int | None = None, lease_seconds: int = 300) -> Item | None:
    """The item this user should label now (their open lease, else a new one); None when nothing is left.

    ``task`` None = the first task (by id) with work for this user.
    """
    now = items._now()
    until = now + dt.timedelta(seconds=lease_seconds)
    with _local_lock(db), session_scope(db) as s:
        _take_write_lock(s)
        conn = s.connection()
        tasks = _tasks_in_order(s, task)
        names = {t.name for t in tasks}
        for lease_id, generation_id, expires_at in conn.execute(_HELD, {"u": user.id}).all():
            # resume what this user already holds (page reload, second tab)
            item = _item(s, lease_id, generation_id, until)
            if item.task not in names:
                continue
            if _dt(expires_at) > now or _capacity_left(s, generation_id, user.id, item.task, now):
                conn.execute(text("UPDATE lease SET expires_at = :e WHERE id = :id"), {"e": _ts(until), "id": lease_id})
                return item
            # the item was given to others meanwhile
            conn.execute(text("UPDATE lease SET state = 'expired' WHERE id = :id"), {"id": lease_id})
        for t in tasks:
            generation_id = _take_candidate(s, t, user, now, _bounds(s, db, t))
            if generation_id is None:
                continue
            lease_id = conn.execute(text("INSERT INTO lease (generation_id, user_id, expires_at, state) "
                                         "VALUES (:g, :u, :e, 'open') RETURNING id"),
                                    {"g": generation_id, "u": user.id, "e": _ts(until)}).scalar_one()
            return _item(s, lease_id, generation_id, until)
    return None


def _take_candidate(s: Session, task: _TaskRef, user: UserInfo, now: dt.datetime, bounds: dict) -> int | None:
    """The first generation (in the task's order) this user may lease now, or None.

    SQLite: the first candidate (the write lock is held). PostgreSQL: the first candidate no one else is
    taking, locked (``FOR UPDATE SKIP LOCKED``), then counted again — the query's snapshot may predate a lease
    committed just before the lock was granted — and passed over if it has filled meanwhile.
    """
    conn = s.connection()
    params = {**_params(task, user, now), **bounds, "n": 1}
    if not _postgres(s):
        for query, _ in _passes(task.strategy):
            row = conn.execute(query, params).first()
            if row is not None:
                return row[0]
        return None
    for index, (_, by_id) in enumerate(_passes(task.strategy, locked=True)):
        passed: list[int] = []
        floor = bounds["floor"]
        while True:
            query = _passes(task.strategy, locked=True, skip=bool(passed))[index][0]
            row = conn.execute(query, {**params, "floor": floor, "skip": passed}).first()
            if row is None:
                break
            if (may_label(s, row[0], user.id, task.k, now, late=True)
                    and conn.execute(_MINE, {"g": row[0], "u": user.id}).first() is None):
                return row[0]
            if by_id:
                floor = row[0] + 1
            else:
                passed.append(row[0])
    return None


def _capacity_left(s: Session, generation_id: int, user_id: int, task_name: str, now: dt.datetime) -> bool:
    """Whether another label by ``user_id`` still fits: labels by others + others' live leases < k."""
    k = s.exec(select(Task.annotations_per_item).where(Task.name == task_name)).one()
    return may_label(s, generation_id, user_id, max(1, k), now, late=True)


def upcoming(db: str, task: str | int, limit: int = 20) -> list[tuple[int, int]]:
    """The next ``limit`` items of ``task``'s queue, in its order, as someone who has labelled none of them
    would get them: [(generation id, labels on its prompt)] (the admin's "why this item is next")."""
    now = items._now()
    with session_scope(db) as s:
        (t,) = _tasks_in_order(s, task)
        params = {**_params(t, UserInfo(id=0, name="", role="admin"), now), **_bounds(s, db, t)}
        ids: list[int] = []
        for query, _ in _passes(t.strategy):
            ids += [r[0] for r in s.connection().execute(query, {**params, "n": int(limit) - len(ids)})]
            if len(ids) >= limit:
                break
        counts = dict(s.connection().execute(text(f"SELECT g.id, {PROMPT_LABELS} FROM generation g "
                                                  "WHERE g.id IN :ids").bindparams(bindparam("ids", expanding=True)),
                                             {"ids": ids, "now": _ts(now)}).all()) if ids else {}
        return [(g, int(counts.get(g, 0))) for g in ids]


def get_item(db: str, user: UserInfo, lease_id: int) -> Item:
    """The item behind one of this user's leases (any state)."""
    with session_scope(db) as s:
        lease = s.get(Lease, _id(lease_id, "lease_id"))
        if lease is None or lease.user_id != user.id:
            raise AnnotationError(f"no lease {lease_id} for {user.name}")
        return _item(s, lease.id, lease.generation_id, lease.expires_at)


def progress(db: str, user: UserInfo, task: str | int) -> Progress:
    now = items._now()
    with session_scope(db) as s:
        (t,) = _tasks_in_order(s, task)
        conn = s.connection()
        params = {**_params(t, user, now), "floor": _floor(s, db, t)}
        remaining = conn.execute(text("SELECT COUNT(*) " + _CANDIDATES + " AND g.id >= :floor"), params).scalar_one()
        scope = ("FROM generation g JOIN round r ON r.id = g.round_id "
                 "WHERE r.task_id = :task AND r.status IN ('sampling', 'labelling')")
        total = conn.execute(text("SELECT COUNT(*) " + scope), {"task": t.id}).scalar_one()
        mine = ("SELECT COUNT(*) FROM lease l JOIN generation g ON g.id = l.generation_id "
                "JOIN round r ON r.id = g.round_id WHERE r.task_id = :task AND r.status IN ('sampling', 'labelling') "
                "AND l.user_id = :u AND l.state = :state")
        done = conn.execute(text(mine), {"task": t.id, "u": user.id, "state": "done"}).scalar_one()
        # an open lease of this user is "remaining" too: it is the item on screen
        held = conn.execute(text(mine), {"task": t.id, "u": user.id, "state": "open"}).scalar_one()
        return Progress(done=done, remaining=remaining + held, total=total)
