"""The annotation queue: leases, submissions, skip, flag, undo. No web framework here.

This module is the one entry point (``from alt_engine import annotation as ann``); the work is split by concern:
``annotation_items`` (the dataclasses, errors and validation; how an item is read), ``annotation_limits``
(the locks and the k-labels rule), ``annotation_queue`` (handing items out: ``next_item``, ``upcoming``,
``progress``) and ``annotation_writes`` (taking labels in: ``submit``, ``flag``, ``skip``, ``replace_label``,
``undo_last``).

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

from sqlmodel import select

from .annotation_items import (
    AI_PREFIXES,
    MAX_ID,
    MAX_TEXT,
    OPEN_ROUND_STATES,
    AnnotationError,
    Conflict,
    Item,
    Progress,
    Submission,
    SubmitResult,
    Suggestion,
    resolve_task,
)
from .annotation_limits import label_slots, may_label
from .annotation_queue import (
    FLOOR_FULL_SECONDS,
    FLOOR_SECONDS,
    _ceilings,
    _floors,
    _passes,
    get_item,
    next_item,
    progress,
    upcoming,
)
from .annotation_writes import flag, replace_label, skip, submit, undo_last
from .db import Task, session_scope


def task_names(db: str) -> list[str]:
    with session_scope(db) as s:
        return list(s.exec(select(Task.name).order_by(Task.id)))


__all__ = [
    "AI_PREFIXES", "MAX_ID", "MAX_TEXT", "OPEN_ROUND_STATES", "FLOOR_SECONDS", "FLOOR_FULL_SECONDS",
    "AnnotationError", "Conflict", "Item", "Progress", "Submission", "SubmitResult", "Suggestion",
    "resolve_task", "label_slots", "may_label", "get_item", "next_item", "progress", "upcoming",
    "flag", "replace_label", "skip", "submit", "undo_last", "task_names",
    "_floors", "_ceilings", "_passes",
]
