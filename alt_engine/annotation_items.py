"""What the annotation queue hands out and takes in, and how one item is read from the database.

The shared vocabulary of ``annotation_queue`` (handing items out) and ``annotation_writes`` (taking labels in):
the errors, the dataclasses the web app and the JSON API see, the few task fields the hot path reads with plain
SQL, the validation of request values, and the clock (``_now``: the other modules call it as
``annotation_items._now()``, so a test's fake clock reaches every caller).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

from sqlalchemy import text
from sqlmodel import Session, select

from .conditioning import PromptLike
from .db import Task
from .queue_order import Strategy, parse_strategy

OPEN_ROUND_STATES = ("sampling", "labelling")  # = db.RoundStatus.open()  # (spelled out in the SQL)
AI_PREFIXES = ("llm:", "reward:", "rule:")
MAX_TEXT = 10_000


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
    """The queue's clock; callers elsewhere look it up on this module (a test's fake clock replaces it here)."""
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime) -> str:
    """How SQLite holds a datetime (UTC, no zone): for comparisons in raw SQL."""
    return _utc(t).strftime("%Y-%m-%d %H:%M:%S.%f")


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _dt(value) -> dt.datetime:
    return _utc(value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value))


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
