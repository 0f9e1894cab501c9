"""Running a provider over stored generations: the ``feedback`` stage of a round.

Generations that already have feedback from the same provider (same ``source``,
and same ``kind`` where the provider declares one) are left alone, so the stage
can be rerun or resumed. Each chunk of results is
stored in one transaction. A provider declares ``chunk_size`` to be called in
chunks (rules); without it (reward quantiles, the LLM judge with its own
concurrency, budget and progress bar) it gets every item in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlmodel import select
from tqdm.auto import tqdm

from ..conditioning import prompt_of
from ..db import Feedback, Generation, Prompt, Task, session_scope
from .base import FeedbackItem, Provider
from .store import store_results


@dataclass
class LabelReport:
    source: str
    stored: int = 0
    already: int = 0  # generations this provider had labelled before
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (generation id, reason)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, reason in self.skipped:
            out[reason] = out.get(reason, 0) + 1
        return out

    def __str__(self) -> str:
        why = "; ".join(f"{n}× {r}" for r, n in sorted(self.reasons().items(), key=lambda x: -x[1]))
        return (f"{self.source}: stored {self.stored}, skipped {len(self.skipped)}{' (' + why + ')' if why else ''}, "
                f"already labelled {self.already}")


def items_for(db: str, generation_ids: Sequence[int]) -> list[FeedbackItem]:
    """Provider inputs for these generations, with their unconditioned prompts, in id order."""
    with session_scope(db) as s:
        rows = s.exec(select(Generation, Prompt).join(Prompt, Generation.prompt_id == Prompt.id)
                      .where(Generation.id.in_(list(generation_ids))).order_by(Generation.id)).all()
        return [FeedbackItem(generation_id=g.id, prompt=prompt_of(p), response=g.response, prompt_id=p.id,
                             truncated=g.truncated) for g, p in rows]


def label_generations(db: str, provider: Provider, task: Task, generation_ids: Sequence[int],
                      progress: Callable[[int, int], None] | None = None, show_progress: bool = True) -> LabelReport:
    """Ask ``provider`` about every generation it has not labelled yet and store its answers."""
    report = LabelReport(provider.name)
    with session_scope(db) as s:
        q = select(Feedback.generation_id).where(Feedback.source == provider.name,
                                                 Feedback.generation_id.in_(list(generation_ids)))
        if getattr(provider, "kind", None):  # an LLM judge's categorical and free-text modes share a source
            q = q.where(Feedback.kind == provider.kind)
        done = set(s.exec(q).all())
    report.already = len(done)
    items = items_for(db, [g for g in generation_ids if g not in done])
    chunk = getattr(provider, "chunk_size", None) or max(1, len(items))
    categories = list(task.categories) or None
    with tqdm(total=len(items), desc=f"feedback {provider.name}", unit="gen", disable=not show_progress) as bar:
        for start in range(0, len(items), chunk):
            batch = items[start:start + chunk]
            results = provider(batch, task)  # first: a rule:…:auto provider names its thresholds on its first call
            stored, skipped = store_results(db, provider.name, batch, results, categories)
            report.stored += stored
            report.skipped.extend(skipped)
            bar.update(len(batch))
            if progress:
                progress(start + len(batch), len(items))
    report.source = provider.name
    return report
