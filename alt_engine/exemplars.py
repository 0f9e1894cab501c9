"""A task's feedback texts at either end: the exemplar f̂ that round ≥ 2 samples and evaluations condition on, and
the [best, worst] pair that steerability and guidance's negative take. A leaf below evaluation, guidance, rounds,
the queue and the playground, so each can ask without importing the others."""

from __future__ import annotations

from sqlmodel import select

from .db import Feedback, FeedbackKind, Generation, Prompt, Task, session_scope


def exemplar_feedback(db: str, task: Task) -> list[str]:
    """f̂: the exemplar category, or for a task without categories free-text feedback that scored 3 (the top
    score, ALT-LMU), else the best-scored texts there are."""
    if task.exemplar_category:
        return [task.exemplar_category]
    from .feedback.llm import exemplar_pool

    return exemplar_pool(db, task.id, top=64, min_score=3.0) or exemplar_pool(db, task.id)


def contrast_feedback(db: str, task: Task) -> list[str]:
    """[best, worst]: the first and last category, or the best- and worst-scored free texts."""
    if task.categories:
        return [task.exemplar_category, task.categories[-1]]
    with session_scope(db) as s:
        rows = s.exec(select(Feedback.text, Feedback.score).join(Generation).join(Prompt).where(
            Prompt.task_id == task.id, Feedback.kind == FeedbackKind.TEXT, Feedback.score.is_not(None),
            Feedback.text.is_not(None))).all()
    if not rows:
        return exemplar_feedback(db, task)[:1]
    rows = sorted(rows, key=lambda r: r[1])
    return [rows[-1][0], rows[0][0]] if rows[-1][1] > rows[0][1] else [rows[-1][0]]
