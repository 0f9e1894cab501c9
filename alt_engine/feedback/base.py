"""The feedback-provider contract.

A provider has a ``name`` that is its provenance (``rule:length``,
``reward:<model>``, ``llm:<model>``; people are ``human:<user>``) and is
called on a batch of items, returning one ``FeedbackResult`` per item: a
category, a text and/or a score — or nothing, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from ..conditioning import PromptLike
from ..db import Task


@dataclass
class FeedbackItem:
    """What a provider judges: one generation and its (unconditioned) prompt."""

    generation_id: int
    prompt: PromptLike
    response: str
    prompt_id: int | None = None
    truncated: bool = False


@dataclass
class FeedbackResult:
    """One provider answer. ``ok`` is False when the provider gave no feedback (see ``reason``)."""

    category: str | None = None
    text: str | None = None
    score: float | None = None
    kind: str = "category"  # category | text | critique | judgment
    critique: str | None = None
    revision: str | None = None
    raw: str | None = None  # the provider's raw reply, for audit
    reason: str | None = None  # why there is no feedback
    # more rows on the same generation from the same source (e.g. a rule's category + judgment + critique)
    extra: list[FeedbackResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None and any(v is not None for v in (self.category, self.text, self.score,
                                                                    self.critique))


class Provider(Protocol):
    name: str  # provenance stored in Feedback.source

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]: ...


_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def count_words(text: str) -> int:
    """Words as every rule, evaluation and report counts them (letters, digits, inner apostrophes)."""
    return len(_WORD.findall(text))
