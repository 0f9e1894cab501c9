"""Rule providers: deterministic feedback that needs no model and no network (offline rounds, tests).

Each rule measures a response and maps the measurement onto the task's
categories (ordered best → worst), so the same rule works for any task.
Specs (``make_rule``):

- ``rule:concise[:t1,t2,...]`` — shorter is better: a response with at most
  ``t1`` words gets the best category, at most ``t2`` the next, ...; longer
  than the last threshold gets the worst. Default thresholds: every 10 words
  (10, 20, 30, ... one per category boundary).
- ``rule:concise:auto`` — thresholds at the quantiles of the model's own
  first-round distribution: the K-1 cut points (K categories) of the word
  counts of the task's round-1 generations, read from the database, so every
  later round and every evaluation uses the same cuts; with no round-1
  generations yet, the cuts come from the first batch it labels.
- ``rule:length[:t1,t2,...|auto]`` — the reverse: longer is better (same buckets, best ↔ worst).

A rule's ``name`` (its provenance, ``Feedback.source``) is its full resolved
spec — ``rule:concise:40,77,97,105``, never ``rule:concise`` or ``…:auto`` — so
feedback and evaluations under different thresholds never look comparable.
- ``rule:banned_words[:w1,w2,...]`` — a response containing a banned word
  (whole word, case-insensitive) gets the worst category, others the best.
- ``rule:keyword:w1[,w2,...]`` — a response containing a keyword gets the best category, others the worst.
- ``rule:free_text:<attributes>`` — a stand-in for people who write sentences (``free_text.py``): a
  paraphrased sentence naming each attribute's level, with a score 0–3.
- ``rule:critique:<rule>`` — any rule above, plus what an annotator would write offline on a response it
  rates below the best: the rule's reason as a judgment (``kind="judgment"``, CUT's negatives) and, where
  the rule can mend the response, a critique + revision (``kind="critique"``, Critique-and-Revise's
  records): ``concise`` cuts the answer to its first sentences within the best bucket's word count,
  ``banned_words`` deletes the words; ``length`` and ``keyword`` write a judgment only. Its categories are
  the inner rule's, so ALT, Quark, SteerLM and SFT train on the same labels in a comparison.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..db import Task
from .base import FeedbackItem, FeedbackResult, count_words

DEFAULT_BANNED = ("stupid", "idiot", "hate", "kill", "damn", "shut up")
def _contains_any(text: str, words: tuple[str, ...]) -> str | None:
    for w in words:
        if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, flags=re.IGNORECASE):
            return w
    return None


def quantile_thresholds(word_counts: list[int], k: int) -> tuple[int, ...]:
    """The K-1 cut points splitting ``word_counts`` into K equal shares, strictly increasing.

    Cut i is the smallest count with at least i/K of the counts at or below it. A cut at the
    maximum would separate nothing, so it moves down to the largest count below the maximum;
    equal cuts (ties in the distribution) then collapse into one, so some categories may stay
    empty. Raises when every count is the same (nothing to cut).
    """
    counts = sorted(word_counts)
    n = len(counts)
    if n == 0:
        raise ValueError("auto thresholds need some responses to measure, got none")
    below_max = [c for c in counts if c < counts[-1]]
    if not below_max:
        raise ValueError(f"auto thresholds: the {n} responses measured all have {counts[0]} words, nothing to "
                         f"cut into {k} categories; give thresholds explicitly, e.g. rule:concise:20,40")
    cuts = [counts[math.ceil(i * n / k) - 1] for i in range(1, k)]
    return tuple(sorted({c if c < counts[-1] else below_max[-1] for c in cuts}))


def shorten(text: str, limit: int) -> str:
    """``text`` cut to its first sentences within ``limit`` words (else its first ``limit`` words, closed by a
    full stop): a rule's revision of a too-long answer."""
    kept = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        longer = f"{kept} {sentence}".strip()
        if count_words(longer) > limit:
            break
        kept = longer
    if kept:
        return kept
    words: list[str] = []
    for token in text.split():
        if count_words(" ".join(words + [token])) > limit:
            break
        words.append(token)
    return " ".join(words).rstrip(",;:-") + "." if words else ""


def first_round_word_counts(db: str, task: Task) -> list[int]:
    """Word counts of the task's round-1 generations (the model's own first distribution); [] if none."""
    if not db or not Path(db).exists() or task.id is None:
        return []
    from sqlmodel import select

    from ..db import Generation, Round, session_scope

    with session_scope(db) as s:
        q = (select(Generation.response).join(Round, Generation.round_id == Round.id)
             .where(Round.task_id == task.id, Round.number == 1))
        return [count_words(r) for r in s.exec(q)]


@dataclass
class LengthRule:
    """Word-count buckets → categories. ``shorter_is_better`` picks the direction.

    ``auto``: thresholds not given but taken from the task's round-1 generations in ``db`` (or,
    before any exist, from the first batch labelled); until resolved, ``name`` ends in ``:auto``
    and the rule takes every item in one call.
    """

    name: str
    thresholds: tuple[int, ...] = ()  # increasing word counts; () = every 10 words, one per category boundary
    shorter_is_better: bool = True
    chunk_size: int | None = 256
    auto: bool = False
    db: str | None = None

    def __post_init__(self):
        self.base = self.name  # rule:concise | rule:length
        if self.auto:
            self.chunk_size = None
            self.name = f"{self.base}:auto"
        elif self.thresholds:
            self.name = f"{self.base}:{_join(self.thresholds)}"

    def resolve(self, task: Task, items: list[FeedbackItem] | None = None) -> None:
        """Fix the thresholds (auto: from round 1 in the database, else from ``items``) and the name."""
        if self.auto and not self.thresholds:
            counts = first_round_word_counts(self.db, task) or [count_words(it.response) for it in items or []]
            if not counts:
                return  # nothing to measure yet: resolved on the first call
            self.thresholds = quantile_thresholds(counts, len(_categories(task, self.name)))
        elif not self.thresholds and len(task.categories) >= 2:  # the default: every 10 words
            self.thresholds = tuple(10 * (i + 1) for i in range(len(task.categories) - 1))
        if self.thresholds:
            self.name, self.chunk_size = f"{self.base}:{_join(self.thresholds)}", 256

    def bucket(self, words: int, k: int) -> int:
        """0 = best category, k-1 = worst."""
        cuts = self.thresholds or tuple(10 * (i + 1) for i in range(k - 1))
        rank = sum(words > t for t in cuts)  # 0 .. len(cuts): shortest bucket first
        rank = min(rank, k - 1)
        return rank if self.shorter_is_better else k - 1 - rank

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        cats = _categories(task, self.name)
        if not self.thresholds:
            self.resolve(task, items)
        out = []
        for item in items:
            words = count_words(item.response)
            out.append(FeedbackResult(category=cats[self.bucket(words, len(cats))], score=None, raw=f"words={words}"))
        return out

    def explain(self, response: str, task: Task) -> tuple[str, str | None]:
        """(judgment, revision or None) for a response rated below the best."""
        words, k = count_words(response), len(_categories(task, self.name))
        cuts = self.thresholds or tuple(10 * (i + 1) for i in range(k - 1))
        if self.shorter_is_better:
            revision = shorten(response, cuts[0])
            return f"Too long ({words} words): keep to the point in at most {cuts[0]} words.", revision or None
        return f"Too short ({words} words): give more detail, over {cuts[-1]} words.", None


@dataclass
class WordListRule:
    """A word list decides between the best and the worst category."""

    name: str
    words: tuple[str, ...] = field(default=DEFAULT_BANNED)
    present_is_bad: bool = True  # banned words; False = required keywords
    chunk_size: int = 256

    def __post_init__(self):
        self.name = f"{self.name}:{','.join(self.words)}"

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        cats = _categories(task, self.name)
        out = []
        for item in items:
            hit = _contains_any(item.response, self.words)
            bad = (hit is not None) == self.present_is_bad
            out.append(FeedbackResult(category=cats[-1] if bad else cats[0], raw=f"match={hit}"))
        return out

    def explain(self, response: str, task: Task) -> tuple[str, str | None]:
        """(judgment, revision or None) for a response rated below the best."""
        if not self.present_is_bad:
            return f"It does not mention {' or '.join(map(repr, self.words))}.", None
        hit = _contains_any(response, self.words)
        revision = response
        for w in self.words:
            revision = re.sub(rf"(?<!\w){re.escape(w)}(?!\w)", "", revision, flags=re.IGNORECASE)
        revision = re.sub(r"\s+([,.!?;:])", r"\1", " ".join(revision.split()))
        return f"It uses the word {hit!r}.", revision or None


@dataclass
class CritiqueRule:
    """``rule:critique:<rule>``: the inner rule's categories, and on a response below the best its judgment and,
    where the rule can mend it, a critique + revision (extra rows of the same source)."""

    inner: LengthRule | WordListRule

    @property
    def name(self) -> str:  # follows the inner rule's resolution (``…:auto`` → its thresholds)
        return "rule:critique:" + self.inner.name.removeprefix("rule:")

    @property
    def chunk_size(self) -> int | None:
        return self.inner.chunk_size

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        results = self.inner(items, task)
        best = _categories(task, self.name)[0]
        for item, r in zip(items, results):
            if r.ok and r.category != best:
                judgment, revision = self.inner.explain(item.response, task)
                r.extra.append(FeedbackResult(kind="judgment", text=judgment, score=0.0))
                if revision:
                    r.extra.append(FeedbackResult(kind="critique", critique=judgment, revision=revision))
        return results


def _categories(task: Task, name: str) -> list[str]:
    if len(task.categories) < 2:
        raise ValueError(f"{name} needs a task with at least two categories; task {task.name!r} has "
                         f"{len(task.categories)}")
    return list(task.categories)


def _join(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


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


def _length_rule(rule: str, arg: str, db: str | None) -> LengthRule:
    auto = arg.strip() == "auto"
    return LengthRule(f"rule:{rule}", () if auto else _ints(arg, rule), shorter_is_better=rule == "concise",
                      auto=auto, db=db)


RULES: dict[str, Callable[[str, str | None], object]] = {
    "concise": lambda arg, db: _length_rule("concise", arg, db),
    "length": lambda arg, db: _length_rule("length", arg, db),
    "banned_words": lambda arg, db: WordListRule("rule:banned_words", _words(arg) or DEFAULT_BANNED, True),
    "keyword": lambda arg, db: WordListRule("rule:keyword", _words(arg), False),
    "free_text": lambda arg, db: _free_text(arg),
}


def _free_text(arg: str):
    from .free_text import make_free_text

    return make_free_text(arg)


def make_rule(spec: str, task: Task | None = None, db: str | None = None):
    """The rule for ``<name>[:<argument>]`` (the part after ``rule:``).

    With ``task`` the rule's thresholds and name are resolved now where they can be (defaults
    from the task's number of categories; ``auto`` from its round-1 generations in ``db``).
    """
    name, _, arg = spec.partition(":")
    if name == "critique":
        if arg.partition(":")[0] in ("critique", ""):
            raise ValueError("rule:critique wraps another rule: rule:critique:concise:auto, rule:critique:banned_words")
        return CritiqueRule(make_rule(arg, task, db))
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}, critique:<rule>")
    if name == "keyword" and not _words(arg):
        raise ValueError("rule:keyword needs its words: rule:keyword:word1,word2")
    rule = RULES[name](arg, db)
    if task is not None and isinstance(rule, LengthRule):
        rule.resolve(task)
    return rule
