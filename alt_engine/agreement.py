"""Inter-annotator agreement: Cohen's κ, Fleiss' κ, and how often people agree with the AI labels.

κ = (p_o − p_e) / (1 − p_e): observed agreement corrected for the agreement
expected by chance from each rater's label frequencies (Cohen) or from the pooled
frequencies (Fleiss). When chance agreement is already 1 (everyone used one
label) κ is undefined and returned as NaN.

``agreement_report`` reads the categorical labels of one task from the database:
people's labels are ``human:*`` Feedback rows of kind ``category``; AI labels
are ``llm:*``, ``reward:*`` and ``rule:*`` rows.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from sqlmodel import select

from .db import HUMAN_PREFIX, Feedback, FeedbackKind, Generation, Prompt, Task, session_scope


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's κ of two raters over the same items (``a[i]`` and ``b[i]`` label item i)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' κ; ``ratings[i]`` is the list of labels item i received (≥ 2 each).

    Items may have different numbers of raters: P_i = Σ_j n_ij(n_ij − 1) / (n_i(n_i − 1)),
    p_j = Σ_i n_ij / Σ_i n_i — the textbook formula when every n_i is equal.
    """
    items = [list(r) for r in ratings if len(r) >= 2]
    if not items:
        return math.nan
    totals: Counter = Counter()
    p_items = []
    for labels in items:
        counts = Counter(labels)
        n_i = len(labels)
        totals.update(counts)
        p_items.append(sum(c * (c - 1) for c in counts.values()) / (n_i * (n_i - 1)))
    n_all = sum(totals.values())
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((c / n_all) ** 2 for c in totals.values())
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)


@dataclass
class PairAgreement:
    a: str
    b: str
    items: int  # items both labelled
    agreement: float  # share of those items with the same label
    kappa: float


@dataclass
class AIAgreement:
    source: str  # e.g. llm:gpt-4o-mini
    items: int  # items with both a human and this AI label
    agreement: float
    kappa: float


@dataclass
class AgreementReport:
    task: str
    annotators: dict[str, int] = field(default_factory=dict)  # name → labelled items
    overlap_items: int = 0  # items with ≥ 2 human labels
    fleiss: float = math.nan
    pairs: list[PairAgreement] = field(default_factory=list)
    human_vs_ai: list[AIAgreement] = field(default_factory=list)


def _pair(a_labels: dict[int, str], b_labels: dict[int, str]) -> tuple[int, float, float]:
    shared = sorted(set(a_labels) & set(b_labels))
    xs, ys = [a_labels[i] for i in shared], [b_labels[i] for i in shared]
    agree = sum(x == y for x, y in zip(xs, ys)) / len(shared) if shared else math.nan
    return len(shared), agree, cohen_kappa(xs, ys)


def labels_by_rater(db: str, task: str | int) -> tuple[str, dict[str, dict[int, str]]]:
    """(task name, {source → {generation id → category}}), the newest label per rater and item."""
    with session_scope(db) as s:
        t = s.get(Task, task) if isinstance(task, int) else s.exec(select(Task).where(Task.name == task)).first()
        if t is None:
            raise ValueError(f"no task {task!r}")
        q = (select(Feedback.source, Feedback.generation_id, Feedback.category)
             .join(Generation, Generation.id == Feedback.generation_id).join(Prompt, Prompt.id == Generation.prompt_id)
             .where(Prompt.task_id == t.id, Feedback.kind == FeedbackKind.CATEGORY, Feedback.category.is_not(None))
             .order_by(Feedback.id))
        by_rater: dict[str, dict[int, str]] = defaultdict(dict)
        for source, gen_id, category in s.exec(q):
            by_rater[source][gen_id] = category
        return t.name, dict(by_rater)


def agreement_report(db: str, task: str | int) -> AgreementReport:
    """Per-annotator counts, Fleiss' κ and pairwise Cohen's κ on overlapping items, and human-vs-AI per source."""
    name, by_rater = labels_by_rater(db, task)
    humans = {src.removeprefix(HUMAN_PREFIX): labels for src, labels in by_rater.items()
              if src.startswith(HUMAN_PREFIX)}
    ais = {src: labels for src, labels in by_rater.items() if not src.startswith(HUMAN_PREFIX)}
    report = AgreementReport(task=name, annotators={u: len(lbl) for u, lbl in sorted(humans.items())})
    per_item: dict[int, list[str]] = defaultdict(list)
    for labels in humans.values():
        for gen_id, category in labels.items():
            per_item[gen_id].append(category)
    overlapping = [v for v in per_item.values() if len(v) >= 2]
    report.overlap_items = len(overlapping)
    report.fleiss = fleiss_kappa(overlapping)
    for a, b in itertools.combinations(sorted(humans), 2):
        n, agree, kappa = _pair(humans[a], humans[b])
        if n:
            report.pairs.append(PairAgreement(a=a, b=b, items=n, agreement=agree, kappa=kappa))
    # the human side of human-vs-AI: one label per item, the majority (ties broken deterministically)
    majority: dict[int, str] = {}
    for gen_id, labels in per_item.items():
        majority[gen_id] = Counter(reversed(labels)).most_common(1)[0][0]
    for src, labels in sorted(ais.items()):
        n, agree, kappa = _pair(majority, labels)
        if n:
            report.human_vs_ai.append(AIAgreement(source=src, items=n, agreement=agree, kappa=kappa))
    return report
