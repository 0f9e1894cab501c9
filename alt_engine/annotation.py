"""The annotation queue: leases, submissions, skip, flag, undo. No web framework here.

Rules (the web app's handlers and the JSON API both call these functions):

- The queue of a task is the generations of its open rounds (status ``sampling``
  or ``feedback``); generations without a round (evaluation samples) are never
  queued. Items are handed out in the order of the task's ``queue_strategy`` (``queue_order``: generation
  order by default; uncertainty, disagreement, coverage or a mix) — an order only: every rule below holds as is.
- ``next_item`` leases one generation to one annotator until ``expires_at``.
  An item is handed out while (done labels + unexpired open leases) < the task's
  ``annotations_per_item`` (k), never twice to the same annotator (a Lease row
  per (generation, user) is unique), and never after a person flagged it.
  An annotator who asks again gets back the lease they already hold.
- ``submit`` is one transaction and idempotent per lease: the lease goes
  open → done in the same transaction that writes the Feedback rows, so a double
  click writes nothing the second time.
- At most k labels per item, whatever the interleaving of leases, expiries, late
  submits and undo: ``may_label`` is the one rule, checked inside the writing
  transaction. Any submission is refused once others' finished labels reach k; a
  late one (lease expired) also yields to the live leases of others, so whoever
  holds the item now is never robbed of it (then ``Conflict``, nothing saved).
- ``undo_last`` takes back the user's last action — a submission (its rows are
  deleted, unless a model was already trained on them, and returned on the item
  as ``previous`` so no typed text is lost), a flag or a skip — and re-opens its
  lease, only while the item still has room for it (others' labels + live
  leases < k). Actions are ordered by ``Lease.acted_at``; ``skip`` gives the item
  to someone else; ``flag`` stores a ``flag`` row and takes the item out of the queue.
- A submission on a lease already done with *different* content (a stale second
  tab) saves nothing and says what is saved (``already_labelled``);
  ``replace_label`` then swaps the user's rows on that item for the new ones.

SQLite: every write transaction starts with a write statement so SQLite takes its write
lock before anything is read (no two annotators can read the same free item),
and an in-process lock keeps the server's own threads from waiting in SQLite's
sleeping busy handler. PostgreSQL (several app processes on one database): ``next_item``
takes the candidate row with ``SELECT … FOR UPDATE SKIP LOCKED`` (annotators asking at
once get different items without waiting for each other) and counts again once it holds
the lock; ``may_label`` locks the generation row ``FOR UPDATE`` before ``label_slots``
counts, so every lease or label added to a generation is serialised on that row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import threading
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import bindparam, text
from sqlmodel import Session, select

from .conditioning import PromptLike
from .db import Feedback, Lease, Task, TrainingExample, is_postgres, session_scope
from .queue_order import PROMPT_LABELS, SCORE_JOIN, Strategy, order_by, parse_strategy
from .users import UserInfo

OPEN_ROUND_STATES = ("sampling", "labelling")  # = db.RoundStatus.open()  # (spelled out in the SQL below)
AI_PREFIXES = ("llm:", "reward:", "rule:")
MAX_TEXT = 10_000
_write_lock = threading.Lock()


class AnnotationError(ValueError):
    """A request that cannot be honoured (bad lease, bad label); nothing was written."""


class Conflict(AnnotationError):
    """A late submission refused because the item got its labels meanwhile."""


@dataclass
class Suggestion:
    """An AI label on the item, shown to the annotator with its provenance."""

    feedback_id: int
    source: str
    kind: str
    category: str | None = None
    text: str | None = None
    score: float | None = None


@dataclass
class Item:
    """One leased generation as the annotator sees it."""

    lease_id: int
    generation_id: int
    task: str
    categories: list[str]
    allow_free_text: bool
    guidelines: str
    prompt: PromptLike
    response: str
    truncated: bool
    expires_at: str
    conditioning: str | None = None  # only when the task shows it
    suggestion: Suggestion | None = None
    round_number: int | None = None
    allow_critique: bool = True  # the task asks for critique & revision
    allow_judgment: bool = True  # the task asks for a judgment
    previous: dict | None = None  # after undo: what the undone submission said (category, text, critique, ...)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Submission:
    """What the annotator entered. At least one field (or an accepted suggestion) is required."""

    category: str | None = None
    text: str | None = None  # free-text feedback (with a category: a comment)
    critique: str | None = None  # Critique-and-Revise
    revision: str | None = None
    judgment: str | None = None  # CUT
    accept_suggestion: int | None = None  # Feedback id of the AI suggestion accepted as is


@dataclass
class SubmitResult:
    status: str  # saved | duplicate (the same again: nothing written) | already_labelled (differently: nothing written)
    feedback_ids: list[int] = field(default_factory=list)
    late: bool = False
    message: str = ""
    existing: dict | None = None  # already_labelled: what is saved (category, text, critique, revision, judgment)


@dataclass
class Progress:
    done: int  # this user's labels in the task's open rounds
    remaining: int  # items this user could still be given
    total: int  # items in the open rounds


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime) -> str:
    """How SQLite holds a datetime (UTC, no zone): for comparisons in raw SQL."""
    return _utc(t).strftime("%Y-%m-%d %H:%M:%S.%f")


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


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


MAX_ID = 2**63 - 1  # SQLite's INTEGER


def _id(value, what: str) -> int:
    """A row id from a request: a clear AnnotationError for anything SQLite cannot hold (not a 500)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise AnnotationError(f"{what} must be a whole number from 1 to {MAX_ID}, got {str(value)[:40]!r}")
    return value


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise AnnotationError(f"text too long ({len(value)} characters; at most {MAX_TEXT})")
    return value or None


def resolve_task(s: Session, task: str | int | None) -> Task | None:
    if task is None or task == "":
        return None
    row = s.get(Task, task) if isinstance(task, int) else s.exec(select(Task).where(Task.name == task)).first()
    if row is None:
        raise AnnotationError(f"no task {task!r}")
    return row


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


@dataclass(frozen=True)
class _TaskRef:
    """The few task fields the hot path needs (read with plain SQL: the ORM costs more than the queries)."""

    id: int
    name: str
    k: int
    categories: tuple[str, ...] = ()
    allow_free_text: bool = True
    allow_critique: bool = True
    allow_judgment: bool = True
    strategy: Strategy = Strategy()


@dataclass(frozen=True)
class _LeaseRef:
    id: int
    generation_id: int


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
_ITEM = text("""
SELECT g.id, g.response, g.truncated, g.conditioning, p.text, p.messages, t.name, t.categories, t.allow_free_text,
       t.guidelines, t.show_conditioning, r.number, t.allow_critique, t.allow_judgment
FROM generation g JOIN prompt p ON p.id = g.prompt_id JOIN task t ON t.id = p.task_id
LEFT JOIN round r ON r.id = g.round_id WHERE g.id = :g
""")
_SUGGESTION = text("""
SELECT id, source, kind, category, text, score FROM feedback
WHERE generation_id = :g AND kind IN ('category', 'text')
  AND (source LIKE 'llm:%' OR source LIKE 'reward:%' OR source LIKE 'rule:%')
ORDER BY id DESC LIMIT 1
""")
_TASK_OF = text("""
SELECT t.id, t.name, t.annotations_per_item, t.categories, t.allow_free_text, t.allow_critique, t.allow_judgment,
       t.queue_strategy
FROM task t JOIN prompt p ON p.task_id = t.id JOIN generation g ON g.prompt_id = p.id WHERE g.id = :g
""")
_TASKS = text("SELECT id, name, annotations_per_item, categories, allow_free_text, allow_critique, allow_judgment, "
              "queue_strategy FROM task ORDER BY id")
_HELD = text("""
SELECT l.id, l.generation_id, l.expires_at FROM lease l
JOIN generation g ON g.id = l.generation_id JOIN round r ON r.id = g.round_id
WHERE l.user_id = :u AND l.state = 'open' AND r.status IN ('sampling', 'labelling') ORDER BY l.id
""")


def _json_col(value):
    return json.loads(value) if isinstance(value, str) else value


def _task_ref(row) -> _TaskRef:
    return _TaskRef(id=row[0], name=row[1], k=max(1, row[2] or 1), categories=tuple(_json_col(row[3]) or ()),
                    allow_free_text=bool(row[4]), allow_critique=bool(row[5]), allow_judgment=bool(row[6]),
                    strategy=_strategy(row[7]))


def _strategy(spec: str | None) -> Strategy:
    """A task's stored order; one no longer valid (edited by hand) falls back to generation order."""
    try:
        return parse_strategy(spec)
    except ValueError:
        return Strategy()


def _dt(value) -> dt.datetime:
    return _utc(value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value))


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


def _suggestion(s: Session, generation_id: int) -> Suggestion | None:
    """The newest AI label (category or text) on the generation."""
    row = s.connection().execute(_SUGGESTION, {"g": generation_id}).first()
    if row is None or not row[1].startswith(AI_PREFIXES):
        return None
    return Suggestion(feedback_id=row[0], source=row[1], kind=row[2], category=row[3], text=row[4], score=row[5])


def _task_of(s: Session, generation_id: int) -> _TaskRef:
    return _task_ref(s.connection().execute(_TASK_OF, {"g": generation_id}).one())


def _item(s: Session, lease_id: int, generation_id: int, expires_at: dt.datetime) -> Item:
    (gid, response, truncated, conditioning, p_text, p_messages, task, categories, free, guidelines, show,
     number, critique, judgment) = s.connection().execute(_ITEM, {"g": generation_id}).one()
    messages = _json_col(p_messages)
    return Item(lease_id=lease_id, generation_id=gid, task=task, categories=list(_json_col(categories) or []),
                allow_free_text=bool(free), guidelines=guidelines or "", prompt=messages if messages else p_text,
                response=response, truncated=bool(truncated), expires_at=_utc(expires_at).isoformat(),
                conditioning=conditioning if show else None, suggestion=_suggestion(s, gid), round_number=number,
                allow_critique=bool(critique), allow_judgment=bool(judgment))


def _tasks_in_order(s: Session, task: str | int | None) -> list[_TaskRef]:
    one = resolve_task(s, task)
    if one is not None:
        return [_TaskRef(id=one.id, name=one.name, k=max(1, one.annotations_per_item),
                         categories=tuple(one.categories), allow_free_text=one.allow_free_text,
                         allow_critique=one.allow_critique, allow_judgment=one.allow_judgment,
                         strategy=_strategy(one.queue_strategy))]
    return [_task_ref(r) for r in s.connection().execute(_TASKS)]


# --------------------------------------------------------------------------- queue


def next_item(db: str, user: UserInfo, task: str | int | None = None, lease_seconds: int = 300) -> Item | None:
    """The item this user should label now (their open lease, else a new one); None when nothing is left.

    ``task`` None = the first task (by id) with work for this user.
    """
    now = _now()
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


def upcoming(db: str, task: str | int, limit: int = 20) -> list[tuple[int, int]]:
    """The next ``limit`` items of ``task``'s queue, in its order, as someone who has labelled none of them
    would get them: [(generation id, labels on its prompt)] (the admin's "why this item is next")."""
    now = _now()
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
    now = _now()
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


# --------------------------------------------------------------------------- writes


def _feedback_rows(task: _TaskRef, lease: _LeaseRef, user: UserInfo, sub: Submission, s: Session) -> list[Feedback]:
    category, free_text = sub.category or None, _clean(sub.text)
    raw = None
    if sub.accept_suggestion is not None:
        fb = s.get(Feedback, _id(sub.accept_suggestion, "accept_suggestion"))
        if fb is None or fb.generation_id != lease.generation_id or not fb.source.startswith(AI_PREFIXES):
            raise AnnotationError(f"suggestion {sub.accept_suggestion} is not an AI label on this item")
        category, free_text = fb.category, fb.text if fb.kind == "text" else free_text
        raw = json.dumps({"accepted_suggestion": fb.id, "from": fb.source})
    if category is not None and category not in task.categories:
        raise AnnotationError(f"{category!r} is not a category of task {task.name!r} ({', '.join(task.categories)})")
    critique, revision, judgment = _clean(sub.critique), _clean(sub.revision), _clean(sub.judgment)
    if category is None and free_text and not task.allow_free_text:
        raise AnnotationError(f"task {task.name!r} takes a category, not free text alone")
    if (critique or revision) and not task.allow_critique:
        raise AnnotationError(f"task {task.name!r} does not take a critique or revision")
    if judgment and not task.allow_judgment:
        raise AnnotationError(f"task {task.name!r} does not take a judgment")
    if category is None and not (free_text or critique or revision or judgment):
        raise AnnotationError("nothing to submit: choose a category or write feedback")
    base = dict(generation_id=lease.generation_id, source=user.source, user_id=user.id)
    rows = []
    if critique or revision:
        rows.append(Feedback(**base, kind="critique", critique=critique, revision=revision,
                             request_key=f"lease:{lease.id}:critique"))
    if judgment:
        rows.append(Feedback(**base, kind="judgment", text=judgment, request_key=f"lease:{lease.id}:judgment"))
    if category is not None or free_text:  # the main label last: it is the newest, so it is the one that counts
        rows.append(Feedback(**base, kind="category" if category is not None else "text", category=category,
                             text=free_text, raw=raw, request_key=f"lease:{lease.id}:main"))
    return rows


def _take_open_lease(s, user: UserInfo, lease_id: int, state: str) -> Lease | None:
    """Move this user's open lease to ``state`` (atomically); None if done, else the lease as it stands."""
    _id(lease_id, "lease_id")
    won = s.connection().execute(
        text("UPDATE lease SET state = :state, acted_at = :now WHERE id = :id AND user_id = :u AND state = 'open'"),
        {"state": state, "id": lease_id, "u": user.id, "now": _ts(_now())}).rowcount
    if won:
        return None
    lease = s.get(Lease, lease_id)
    if lease is None or lease.user_id != user.id:
        raise AnnotationError(f"no lease {lease_id} for {user.name}")
    return lease


def _saved(rows: list[Feedback]) -> dict:
    """What a lease's feedback rows say, as the fields of a ``Submission`` (flag: its reason as ``flag``)."""
    out = dict(category=None, text=None, critique=None, revision=None, judgment=None, flag=None)
    for r in rows:
        if r.kind == "critique":
            out.update(critique=r.critique, revision=r.revision)
        elif r.kind == "judgment":
            out["judgment"] = r.text
        elif r.kind == "flag":
            out["flag"] = r.text
        else:
            out.update(category=r.category, text=r.text)
    return out


def _lease_rows(s: Session, lease_id: int) -> list[Feedback]:
    return list(s.exec(select(Feedback).where(Feedback.request_key.like(f"lease:{lease_id}:%"))
                       .order_by(Feedback.id)))


def _close_lease(db: str, user: UserInfo, lease_id: int, make_rows) -> SubmitResult:
    """Move the lease open → done and write ``make_rows(task, lease, session)`` in one transaction."""
    now = _now()
    refused = None
    with _local_lock(db), session_scope(db) as s:
        lease = _take_open_lease(s, user, lease_id, "done")
        if lease is not None:
            if lease.state == "done":
                rows = _lease_rows(s, lease_id)
                saved = _saved(rows)
                try:
                    wanted = _saved(make_rows(_task_of(s, lease.generation_id),
                                              _LeaseRef(id=lease.id, generation_id=lease.generation_id), s))
                except AnnotationError:
                    wanted = saved
                ids = [r.id for r in rows]
                if wanted != saved:  # a stale second tab: say what is saved, write nothing (replace_label swaps)
                    return SubmitResult(status="already_labelled", feedback_ids=ids, existing=saved,
                                        message="you already labelled this item; nothing was saved")
                return SubmitResult(status="duplicate", feedback_ids=ids, message="already saved")
            if lease.state == "expired":
                raise Conflict("this item got its labels while your lease was expired; nothing was saved")
            raise AnnotationError(f"you skipped this item (lease {lease_id}); nothing was saved")
        generation_id, expires_at = s.connection().execute(
            text("SELECT generation_id, expires_at FROM lease WHERE id = :id"), {"id": lease_id}).one()
        lease = _LeaseRef(id=lease_id, generation_id=generation_id)
        task = _task_of(s, generation_id)
        late = _dt(expires_at) <= now
        if not may_label(s, generation_id, user.id, task.k, now, late):
            s.connection().execute(text("UPDATE lease SET state = 'expired' WHERE id = :id"), {"id": lease_id})
            refused = (f"your lease expired and the item went to others (it takes {task.k} label(s)); "
                       "nothing was saved" if late else
                       f"the item got its {task.k} label(s) meanwhile; nothing was saved")
        else:
            rows = make_rows(task, lease, s)
            s.add_all(rows)
            s.flush()
            result = SubmitResult(status="saved", feedback_ids=[r.id for r in rows], late=late,
                                  message="saved (after the lease expired)" if late else "saved")
    if refused:
        raise Conflict(refused)
    return result


def submit(db: str, user: UserInfo, lease_id: int, submission: Submission) -> SubmitResult:
    """Save the annotator's feedback on a leased item (idempotent per lease)."""
    if submission.accept_suggestion is not None:
        _id(submission.accept_suggestion, "accept_suggestion")
    return _close_lease(db, user, lease_id, lambda task, lease, s: _feedback_rows(task, lease, user, submission, s))


def flag(db: str, user: UserInfo, lease_id: int, reason: str = "") -> SubmitResult:
    """Mark the item problematic (kind ``flag``); it leaves everyone's queue."""
    reason = _clean(reason) or "flagged"
    return _close_lease(db, user, lease_id, lambda task, lease, s: [Feedback(
        generation_id=lease.generation_id, source=user.source, user_id=user.id, kind="flag", text=reason,
        request_key=f"lease:{lease.id}:flag")])


def _trained_on(s: Session, rows: list[Feedback]) -> int | None:
    """The model version trained on any of ``rows``, if one was."""
    return s.exec(select(TrainingExample.model_version_id).where(
        TrainingExample.feedback_id.in_([r.id for r in rows]))).first() if rows else None


def replace_label(db: str, user: UserInfo, lease_id: int, submission: Submission) -> SubmitResult:
    """Swap this user's saved feedback on a done lease for ``submission`` (after ``already_labelled``), in one
    transaction; refused once a model was trained on the old label."""
    _id(lease_id, "lease_id")
    with _local_lock(db), session_scope(db) as s:
        _take_write_lock(s)
        lease = s.get(Lease, lease_id)
        if lease is None or lease.user_id != user.id:
            raise AnnotationError(f"no lease {lease_id} for {user.name}")
        if lease.state != "done":
            raise AnnotationError(f"lease {lease_id} is {lease.state}; only a saved label can be replaced")
        rows = _lease_rows(s, lease_id)
        if (used := _trained_on(s, rows)) is not None:
            raise AnnotationError(f"that label was already used to train model version {used}; it stays")
        ref = _LeaseRef(id=lease.id, generation_id=lease.generation_id)
        new = _feedback_rows(_task_of(s, lease.generation_id), ref, user, submission, s)
        for r in rows:
            s.delete(r)
        s.flush()
        s.add_all(new)
        lease.acted_at = _now()
        s.flush()
        return SubmitResult(status="saved", feedback_ids=[r.id for r in new], message="replaced")


def skip(db: str, user: UserInfo, lease_id: int) -> None:
    """Give the item back for others; this user will not be offered it again."""
    with _local_lock(db), session_scope(db) as s:
        lease = _take_open_lease(s, user, lease_id, "skipped")
        if lease is not None:
            if lease.state != "skipped":
                raise AnnotationError(f"lease {lease_id} is {lease.state}; only an open item can be skipped")


def _last_action(s: Session, user: UserInfo) -> Lease | None:
    """The lease of this user's last submit, flag or skip (by ``acted_at``; older rows without it: the newest
    submission by feedback id)."""
    lease = s.exec(select(Lease).where(Lease.user_id == user.id, Lease.state.in_(("done", "skipped")),
                                       Lease.acted_at.is_not(None))
                   .order_by(Lease.acted_at.desc(), Lease.id.desc()).limit(1)).first()
    if lease is not None:
        return lease
    key = s.exec(select(Feedback.request_key).where(Feedback.user_id == user.id, Feedback.request_key.like("lease:%"))
                 .order_by(Feedback.id.desc()).limit(1)).first()
    return s.get(Lease, int(key.split(":")[1])) if key else None


def undo_last(db: str, user: UserInfo, lease_seconds: int = 300) -> Item:
    """Take back this user's last action (submit, flag or skip) and hand the item back under a fresh lease; the
    item's ``previous`` holds what the undone submission said (its text is offered again, never lost)."""
    now = _now()
    with _local_lock(db), session_scope(db) as s:
        _take_write_lock(s)
        lease = _last_action(s, user)
        if lease is None:
            raise AnnotationError("nothing to undo")
        rows = _lease_rows(s, lease.id)
        if (used := _trained_on(s, rows)) is not None:
            raise AnnotationError(f"that label was already used to train model version {used}; it cannot be undone")
        task = _task_of(s, lease.generation_id)
        if not may_label(s, lease.generation_id, user.id, task.k, now, late=True):
            raise AnnotationError(f"item #{lease.generation_id} went to others since (it takes {task.k} label(s)); "
                                  + ("your label stays" if lease.state == "done" else "it cannot come back"))
        previous = _saved(rows) if rows else None
        for r in rows:
            s.delete(r)
        lease.state, lease.acted_at = "open", None
        lease.expires_at = now + dt.timedelta(seconds=lease_seconds)
        s.flush()
        _floors.clear()  # the item is unfinished again
        _ceilings.clear()
        item = _item(s, lease.id, lease.generation_id, lease.expires_at)
        item.previous = previous
        return item


def task_names(db: str) -> list[str]:
    with session_scope(db) as s:
        return list(s.exec(select(Task.name).order_by(Task.id)))
