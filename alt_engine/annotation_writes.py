"""Taking labels in: submit, flag, skip, replace a label, undo the last action — each one transaction.

``submit`` and ``flag`` move the lease open → done in the transaction that writes the Feedback rows (idempotent
per lease: a double click writes nothing the second time), after ``annotation_limits.may_label`` says the item
still has room; ``_feedback_rows`` validates what the annotator entered against the task.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import text
from sqlmodel import Session, select

from . import annotation_items as items
from .annotation_items import (
    AI_PREFIXES,
    AnnotationError,
    Conflict,
    Item,
    Submission,
    SubmitResult,
    _clean,
    _dt,
    _id,
    _item,
    _LeaseRef,
    _task_of,
    _TaskRef,
    _ts,
)
from .annotation_limits import _local_lock, _take_write_lock, may_label
from .annotation_queue import _forget_bounds
from .db import Feedback, FeedbackKind, Lease, TrainingExample, session_scope
from .users import UserInfo


def _feedback_rows(task: _TaskRef, lease: _LeaseRef, user: UserInfo, sub: Submission, s: Session) -> list[Feedback]:
    category, free_text = sub.category or None, _clean(sub.text)
    raw = None
    if sub.accept_suggestion is not None:
        fb = s.get(Feedback, _id(sub.accept_suggestion, "accept_suggestion"))
        if fb is None or fb.generation_id != lease.generation_id or not fb.source.startswith(AI_PREFIXES):
            raise AnnotationError(f"suggestion {sub.accept_suggestion} is not an AI label on this item")
        category, free_text = fb.category, fb.text if fb.kind == FeedbackKind.TEXT else free_text
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
        {"state": state, "id": lease_id, "u": user.id, "now": _ts(items._now())}).rowcount
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
        if r.kind == FeedbackKind.CRITIQUE:
            out.update(critique=r.critique, revision=r.revision)
        elif r.kind == FeedbackKind.JUDGMENT:
            out["judgment"] = r.text
        elif r.kind == FeedbackKind.FLAG:
            out["flag"] = r.text
        else:
            out.update(category=r.category, text=r.text)
    return out


def _lease_rows(s: Session, lease_id: int) -> list[Feedback]:
    return list(s.exec(select(Feedback).where(Feedback.request_key.like(f"lease:{lease_id}:%"))
                       .order_by(Feedback.id)))


def _close_lease(db: str, user: UserInfo, lease_id: int, make_rows) -> SubmitResult:
    """Move the lease open → done and write ``make_rows(task, lease, session)`` in one transaction."""
    now = items._now()
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
        lease.acted_at = items._now()
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
    now = items._now()
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
        _forget_bounds()  # the item is unfinished again
        item = _item(s, lease.id, lease.generation_id, lease.expires_at)
        item.previous = previous
        return item
