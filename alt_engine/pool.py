"""The data pool: which (prompt, feedback, response) triples a training round uses.

Per prompt (keyed by prompt id — prompt texts repeat) we keep a balanced draw:
``k`` generations per feedback text, then fill any shortfall up to ``k × K``
(K = the task's categories; for scored free-text feedback, ALT-LMU's balance over the
scores 0–3: ``k`` per score; unscored free text: the distinct texts) from the leftovers.
Generations without feedback, and those a person flagged, are dropped.

A truncated generation (stopped at max_new_tokens, no EOS) would teach the model not to stop
(docs/design.md §1: P(EOS) at the end of short answers fell 0.72 → 0.59 when 91 of 120 examples were
truncated), so the pool has a truncation policy (``truncated``):

- ``exclude`` (default) — never use them;
- ``last`` — use them only when complete generations cannot fill the quota;
- ``worst`` — keep them, but under the task's worst category whatever they were labelled, so
  "not stopping" is only ever learned as what the worst feedback means (categorical tasks only;
  free-text feedback has no worst text, so there it acts as ``exclude``). The feedback that counts is
``feedback.store.effective_feedback`` (a person outranks an AI). Policy
``flush`` (ALT) uses the latest round only, ``accumulate`` (Quark) every round.

``holdout`` (``"length=short,subject=off"``, ``feedback/free_text.py``'s attributes): generations whose
response measures to that combination of attribute levels stay out of the pool, whatever their feedback
says, so an experiment can test steering to a combination never seen in training.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from sqlmodel import select

from .conditioning import PromptLike, prompt_of
from .db import HUMAN_PREFIX, Feedback, FeedbackKind, Generation, Prompt, Round, Task, session_scope
from .feedback.store import effective_feedback

POLICIES = ("flush", "accumulate")
TRUNCATION = ("exclude", "last", "worst")


@dataclass
class PoolItem:
    """One training example's sources, with provenance ids."""

    generation_id: int
    feedback_id: int
    prompt_id: int
    prompt: PromptLike
    feedback: str  # the text the model is conditioned on (category text or free text)
    response: str
    truncated: bool
    category: str | None = None
    score: float | None = None
    negative: bool = False  # CUT: ``feedback`` is a negative judgment of ``response``
    revision: str | None = None  # Critique-and-Revise: ``feedback`` is the critique, this the revised response


@dataclass(frozen=True)
class PoolOptions:
    """Which labelled generations a training run takes: ``build_pool``'s keywords, typed. One value for the CLI,
    the console and rounds (``plan.py`` fills in the defaults), so the same choices give the same pool."""

    round_ids: tuple[int, ...] | None = None  # None: the latest round (flush) or every round (accumulate)
    k_per_category: int = 2
    policy: str = "flush"  # flush (ALT) | accumulate (Quark)
    max_per_prompt: int | None = 2  # cap per prompt (None: k × categories); 2 = the most different pair
    truncated: str = "exclude"  # exclude | last | worst
    seed: int = 0
    holdout: str | None = None  # attribute levels kept out (``"length=short,subject=off"``), free-text tasks

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"pool policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.truncated not in TRUNCATION:
            raise ValueError(f"truncation policy must be one of {', '.join(TRUNCATION)}, got {self.truncated!r}")
        if self.k_per_category < 1:
            raise ValueError("samples per category must be >= 1")
        if self.round_ids is not None:
            object.__setattr__(self, "round_ids", tuple(int(r) for r in self.round_ids))

    def kwargs(self) -> dict:
        """The keywords of ``build_pool`` (and of an objective's ``items``)."""
        return dict(round_ids=list(self.round_ids) if self.round_ids is not None else None,
                    k_per_category=self.k_per_category, seed=self.seed, policy=self.policy,
                    max_per_prompt=self.max_per_prompt, truncated=self.truncated,
                    **({"holdout": self.holdout} if self.holdout else {}))

    @classmethod
    def from_kwargs(cls, kw: dict) -> PoolOptions:
        """The options among ``kw`` (a job's params): the inverse of ``kwargs``."""
        names = ("round_ids", "k_per_category", "policy", "max_per_prompt", "truncated", "seed", "holdout")
        return cls(**{k: kw[k] for k in names if k in kw})


def check_pool(db: str, task: Task, objective, options: PoolOptions) -> list:
    """The objective's training items for ``options``, or a ValueError that says why there are none usable and
    what to change (e.g. "40 of 48 labelled generations truncated at 64 tokens ..."), before any job exists.
    ``objective``: a ``training.objectives.Objective`` (its ``items`` and ``check_items``)."""
    items = objective.items(db, task, **options.kwargs())
    try:
        objective.check_items(items)
    except ValueError as e:
        cause = truncation_cause(db, task, options)
        raise ValueError(f"{e}. {cause}" if cause else str(e)) from None
    return items


def truncation_cause(db: str, task: Task, options: PoolOptions) -> str:
    """When truncated generations explain an unusable pool: how many, at how many tokens, and the fix."""
    from .sampling import SamplingParams

    with session_scope(db) as s:
        round_ids = list(options.round_ids) if options.round_ids is not None else None
        if round_ids is None:
            rounds = list(s.exec(select(Round.id).where(Round.task_id == task.id).order_by(Round.number)))
            round_ids = rounds[-1:] if options.policy == "flush" else rounds
        gens = s.exec(select(Generation).where(Generation.round_id.in_(round_ids))).all()
        labelled = effective_feedback(s, [g.id for g in gens], kinds=FeedbackKind.labels())
        used = [g for g in gens if g.id in labelled]
        cut = [g for g in used if g.truncated]
        if not cut or len(cut) * 4 < len(used):  # a few truncated ones explain nothing
            return ""
        tokens = max(((g.sampling_params or {}).get("max_new_tokens") or 0) for g in cut)
    more = max(SamplingParams.max_new_tokens, 2 * tokens) if tokens else SamplingParams.max_new_tokens
    at = f" at {tokens} new tokens" if tokens else ""
    if options.truncated == "exclude":
        fix = f"sample with {more} max new tokens, or set Truncated generations to 'last' (--truncated last)"
        how = "the pool leaves them out (truncated = exclude)"
    elif options.truncated == "worst":
        fix = f"sample with {more} max new tokens, or set Truncated generations to 'last' (--truncated last)"
        how = f"the pool counts them all as {task.categories[-1]!r} (truncated = worst)" if task.categories \
            else "free-text feedback leaves them out (truncated = worst)"
    else:
        fix = f"sample with {more} max new tokens"
        how = "they are used only last"
    return f"Cause: {len(cut)} of {len(used)} labelled generations were truncated{at} and {how}. Fix: {fix}."


def _balance_key(it: PoolItem, categorical: bool):
    """What the draw balances over: the category, or for free-text feedback its score 0–3 (ALT-LMU: 8 per
    prompt over scores 0–3), or the text itself when it has no score."""
    return it.feedback if categorical or it.score is None else it.score


def _draw(items: list[PoolItem], k: int, quota: int, rng: random.Random, categorical: bool = True) -> list[PoolItem]:
    """Up to k complete generations per feedback text (score), then leftovers (complete before truncated)."""
    rng.shuffle(items)
    items.sort(key=lambda it: it.truncated)  # stable: complete first, shuffled order kept within each
    rank: dict[int, int] = {}  # generation id -> its place within its feedback text's draw
    seen: dict = defaultdict(int)
    for it in items:
        key = _balance_key(it, categorical)
        if not it.truncated and seen[key] < k:
            rank[it.generation_id] = seen[key]
            seen[key] += 1
    picked = sorted((it for it in items if it.generation_id in rank), key=lambda it: rank[it.generation_id])
    leftovers = [it for it in items if it.generation_id not in rank]
    return (picked + leftovers)[:quota]  # round-robin order: a smaller quota stays balanced


def build_pool(db: str, task_id: int, round_ids: list[int] | None = None, k_per_category: int = 2, seed: int = 0,
               policy: str = "flush", max_per_prompt: int | None = None,
               truncated: str = "exclude", holdout: str | None = None) -> list[PoolItem]:
    """The training pool for ``task_id``: explicit ``round_ids``, else the latest round (flush) or all (accumulate)."""
    from .feedback.free_text import holds, parse_combination

    combo = parse_combination(holdout) if holdout else None
    if policy not in POLICIES:
        raise ValueError(f"unknown pool policy {policy!r} ({' | '.join(POLICIES)})")
    if truncated not in TRUNCATION:
        raise ValueError(f"unknown truncation policy {truncated!r} ({' | '.join(TRUNCATION)})")
    if k_per_category < 1:
        raise ValueError("k_per_category must be >= 1")
    with session_scope(db) as s:
        task = s.get(Task, task_id)
        if task is None:
            raise ValueError(f"no task {task_id}")
        if round_ids is None:
            rounds = list(s.exec(select(Round.id).where(Round.task_id == task_id).order_by(Round.number)))
            round_ids = rounds[-1:] if policy == "flush" else rounds
        rows = s.exec(select(Generation, Prompt).join(Prompt, Generation.prompt_id == Prompt.id).where(
            Prompt.task_id == task_id, Generation.round_id.in_(round_ids)).order_by(Generation.id)).all()
        gen_ids = [g.id for g, _ in rows]
        chosen = effective_feedback(s, gen_ids, kinds=FeedbackKind.labels())
        flagged = set(s.exec(select(Feedback.generation_id).where(
            Feedback.generation_id.in_(gen_ids), Feedback.kind == FeedbackKind.FLAG,
            Feedback.source.like(f"{HUMAN_PREFIX}%"))))
        per_prompt: dict[int, list[PoolItem]] = defaultdict(list)
        for g, p in rows:
            fb = chosen.get(g.id)
            text = (fb.text if fb.kind == FeedbackKind.TEXT else fb.category) if fb else None
            if not (text or "").strip() or g.id in flagged:
                continue  # no usable feedback (none, empty, or the judge's reply did not parse): not in the pool
            if combo and holds(combo, prompt_of(p), g.response, g.truncated):
                continue  # the held-out combination
            category = fb.category
            if g.truncated and (truncated == "exclude" or (truncated == "worst" and not task.categories)):
                continue
            if g.truncated and truncated == "worst":
                text = category = task.categories[-1]
            per_prompt[p.id].append(PoolItem(g.id, fb.id, p.id, prompt_of(p), text, g.response, g.truncated,
                                              category, fb.score))
        n_categories = len(task.categories)
    pool: list[PoolItem] = []
    for prompt_id in sorted(per_prompt):
        items = per_prompt[prompt_id]
        categorical = bool(n_categories)
        quota = k_per_category * (n_categories or len({_balance_key(it, False) for it in items}))
        if max_per_prompt is not None:
            quota = min(quota, max_per_prompt)
        pool += _draw(items, k_per_category, quota, random.Random(f"{seed}:{prompt_id}"), categorical)
    return pool


def pool_summary(items: list[PoolItem]) -> dict:
    """What a pool holds: examples, examples per feedback text (free text: per score), truncated examples (for
    reports and logs)."""
    counts: dict[str, int] = defaultdict(int)
    for it in items:
        counts[it.feedback if it.category or it.score is None else f"score {it.score:g}"] += 1
    return {"examples": len(items), "prompts": len({it.prompt_id for it in items}),
            "truncated": sum(it.truncated for it in items), "per_feedback": dict(counts)}
