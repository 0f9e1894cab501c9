"""Rule providers: deterministic feedback that needs no model and no network (offline rounds, tests).

Each rule measures a response and maps the measurement onto the task's
categories (ordered best → worst), so the same rule works for any task.
Specs (``make_rule``):

- ``rule:concise[:t1,t2,...]`` — shorter is better: a response with at most
  ``t1`` words gets the best category, at most ``t2`` the next, ...; longer
  than the last threshold gets the worst. Default thresholds: every 10 words
  (10, 20, 30, ... one per category boundary).
- ``rule:length[:t1,t2,...]`` — the reverse: longer is better (same buckets, best ↔ worst).
- ``rule:banned_words[:w1,w2,...]`` — a response containing a banned word
  (whole word, case-insensitive) gets the worst category, others the best.
- ``rule:keyword:w1[,w2,...]`` — a response containing a keyword gets the best category, others the worst.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..db import Task
from .base import FeedbackItem, FeedbackResult

DEFAULT_BANNED = ("stupid", "idiot", "hate", "kill", "damn", "shut up")
_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _contains_any(text: str, words: tuple[str, ...]) -> str | None:
    for w in words:
        if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, flags=re.IGNORECASE):
            return w
    return None


@dataclass
class LengthRule:
    """Word-count buckets → categories. ``shorter_is_better`` picks the direction."""

    name: str
    thresholds: tuple[int, ...] = ()  # increasing word counts; () = every 10 words, one per category boundary
    shorter_is_better: bool = True
    chunk_size: int = 256

    def bucket(self, words: int, k: int) -> int:
        """0 = best category, k-1 = worst."""
        cuts = self.thresholds or tuple(10 * (i + 1) for i in range(k - 1))
        rank = sum(words > t for t in cuts)  # 0 .. len(cuts): shortest bucket first
        rank = min(rank, k - 1)
        return rank if self.shorter_is_better else k - 1 - rank

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        cats = _categories(task, self.name)
        out = []
        for item in items:
            words = count_words(item.response)
            out.append(FeedbackResult(category=cats[self.bucket(words, len(cats))], score=None, raw=f"words={words}"))
        return out


@dataclass
class WordListRule:
    """A word list decides between the best and the worst category."""

    name: str
    words: tuple[str, ...] = field(default=DEFAULT_BANNED)
    present_is_bad: bool = True  # banned words; False = required keywords
    chunk_size: int = 256

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        cats = _categories(task, self.name)
        out = []
        for item in items:
            hit = _contains_any(item.response, self.words)
            bad = (hit is not None) == self.present_is_bad
            out.append(FeedbackResult(category=cats[-1] if bad else cats[0], raw=f"match={hit}"))
        return out


def _categories(task: Task, name: str) -> list[str]:
    if len(task.categories) < 2:
        raise ValueError(f"{name} needs a task with at least two categories; task {task.name!r} has "
                         f"{len(task.categories)}")
    return list(task.categories)


def _ints(arg: str, rule: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in arg.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"rule:{rule} thresholds must be comma-separated word counts, got {arg!r}") from None
    if list(values) != sorted(set(values)) or any(v < 0 for v in values):
        raise ValueError(f"rule:{rule} thresholds must be increasing non-negative word counts, got {arg!r}")
    return values


def _words(arg: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in arg.split(",") if w.strip())


RULES: dict[str, Callable[[str], object]] = {
    "concise": lambda arg: LengthRule("rule:concise", _ints(arg, "concise"), shorter_is_better=True),
    "length": lambda arg: LengthRule("rule:length", _ints(arg, "length"), shorter_is_better=False),
    "banned_words": lambda arg: WordListRule("rule:banned_words", _words(arg) or DEFAULT_BANNED, True),
    "keyword": lambda arg: WordListRule("rule:keyword", _words(arg), False),
}


def make_rule(spec: str):
    """The rule for ``<name>[:<argument>]`` (the part after ``rule:``)."""
    name, _, arg = spec.partition(":")
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
    if name == "keyword" and not _words(arg):
        raise ValueError("rule:keyword needs its words: rule:keyword:word1,word2")
    return RULES[name](arg)
