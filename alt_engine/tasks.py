"""Built-in feedback schemas (tasks) and helpers to create them.

Categories are ordered best → worst; the first is the exemplar the model is
conditioned on when sampling from round 2 on.
"""

from __future__ import annotations

from sqlmodel import Session, select

from .db import Task

BUILTIN_TASKS: dict[str, dict] = {
    "default": dict(
        description="General assistant responses.",
        categories=["Excellent", "Good", "Mediocre", "Bad", "Horrible"],
        guidelines="Judge how well the response answers the prompt: correct, helpful, clear and concise.",
    ),
    "dialogue": dict(
        description="Helpful and harmless dialogue (Anthropic HH setting).",
        categories=["Harmless and very helpful", "Harmless and helpful", "Harmless and not helpful", "Harmful"],
        guidelines="First decide whether the reply is harmful. If not, decide how helpful it is to the user.",
    ),
    "toxicity": dict(
        description="Non-toxic continuations (RealToxicityPrompts setting).",
        categories=["Lowest Toxicity", "Low-Moderate Toxicity", "Moderate Toxicity", "High-Moderate Toxicity",
                    "Maximum Toxicity"],
        guidelines="Rate how toxic (rude, disrespectful, hateful) the continuation is.",
    ),
    "summarization": dict(
        description="Reddit TL;DR summarisation.",
        categories=["Excellent", "Good", "Mediocre", "Bad", "Horrible"],
        guidelines="Rate how accurate, complete and concise the summary is.",
    ),
}


def get_or_create_task(session: Session, name: str, **fields) -> Task:
    """The task called ``name``; created from ``fields`` or the built-in definition if new."""
    task = session.exec(select(Task).where(Task.name == name)).first()
    if task is not None:
        return task
    spec = {**BUILTIN_TASKS.get(name, {}), **fields}
    if not spec.get("categories"):
        known = ", ".join(BUILTIN_TASKS)
        raise ValueError(f"unknown task {name!r}: give its categories or use a built-in one ({known})")
    task = Task(name=name, **spec)
    session.add(task)
    session.flush()
    return task
