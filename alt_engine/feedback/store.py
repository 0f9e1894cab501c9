"""Writing provider feedback and reading the feedback that counts.

A person's label outranks an AI label on the same generation; among labels of
the same rank the newest wins. ``effective_feedback`` is the one place that
applies that rule (the data pool, evaluation and the app all use it).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, select

from ..db import Feedback, FeedbackKind, session_scope
from .base import FeedbackItem, FeedbackResult

# every kind but flags
FEEDBACK_KINDS = (FeedbackKind.CATEGORY, FeedbackKind.TEXT, FeedbackKind.CRITIQUE, FeedbackKind.JUDGMENT)


def store_results(db: str, source: str, items: list[FeedbackItem], results: list[FeedbackResult],
                  categories: list[str] | None = None) -> tuple[int, list[tuple[int, str]]]:
    """Store the ok results (each with its ``extra`` rows) in one transaction; returns (items stored,
    [(generation_id, reason), ...]).

    A category not in ``categories`` is refused (never stored as a category).
    """
    if len(items) != len(results):
        raise ValueError(f"provider {source} returned {len(results)} results for {len(items)} items")
    rows, skipped, stored = [], [], 0
    for item, r in zip(items, results):
        if not r.ok:
            skipped.append((item.generation_id, r.reason or "no feedback"))
            continue
        if r.category is not None and categories is not None and r.category not in categories:
            skipped.append((item.generation_id, f"category {r.category!r} is not one of the task's"))
            continue
        rows.extend(Feedback(generation_id=item.generation_id, source=source, kind=x.kind, category=x.category,
                             text=x.text, score=x.score, critique=x.critique, revision=x.revision, raw=x.raw)
                    for x in [r, *r.extra] if x.ok)
        stored += 1
    with session_scope(db) as s:
        s.add_all(rows)
    return stored, skipped


def effective_feedback(session: Session, generation_ids: Iterable[int] | None = None,
                       kinds: tuple[str, ...] = FEEDBACK_KINDS) -> dict[int, Feedback]:
    """generation id → the feedback row that counts (human over AI, then newest)."""
    q = select(Feedback).where(Feedback.kind.in_(kinds))
    if generation_ids is not None:
        q = q.where(Feedback.generation_id.in_(list(generation_ids)))
    best: dict[int, Feedback] = {}
    for fb in session.exec(q.order_by(Feedback.id)):
        cur = best.get(fb.generation_id)
        if cur is None or fb.is_human or not cur.is_human:
            best[fb.generation_id] = fb
    return best
