"""Which item the annotation queue hands out next: the strategies, their scores, and why (for admins).

A task's ``queue_strategy`` orders its queue; ``annotation.next_item`` applies the order inside the same
lease query, so leases, overlap k, flags and ``may_label`` stay the one rule whatever the order:

- ``fixed``: generation order (the default).
- ``uncertainty``: where the current model's own label-likelihood is least decisive. For each item y the
  summed log p(y | f, x) under every feedback text f of the task (its categories; for a free-text task
  the best- and worst-scored texts) — the label-learned diagnostic's scoring (``evaluation.label_logprobs``)
  — read as p(f | x, y) ∝ p(y | f, x); the score is its entropy / log K (1: no label fits better than
  another, 0: one label decides). The least decisive first.
- ``disagreement``: where the labels already on the item (AI providers, people) are furthest apart: the mean
  pairwise distance of their category ranks / (K − 1) (of their scores / the scores' range for free text).
- ``coverage``: the prompts with the fewest labels first (done and live leases on any of its generations).
- ``mix`` (``mix:uncertainty=2,coverage=1``): a weighted sum of the three, each in 0..1 (coverage as
  1 / (1 + labels of the prompt)); by default equal weights.

Ties and unscored items go in generation order, after the scored ones. Uncertainty and disagreement are
computed by the ``score`` job (queued after sampling, batched, written a chunk per transaction so the
queue never waits on it) and stored per generation in ``QueueScore``; coverage is counted live. The
scores are shown to admins (``reports.explain_queue``: why this item is next), never to annotators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlmodel import select

from .db import Feedback, FeedbackKind, Generation, Prompt, QueueScore, Round, RoundStatus, Task, session_scope, utcnow

STRATEGIES = ("fixed", "uncertainty", "disagreement", "coverage", "mix")
SCORES = ("uncertainty", "disagreement", "coverage")  # what a mix weighs
CHUNK = 64  # generations scored (and written) per transaction


@dataclass(frozen=True)
class Strategy:
    """A parsed ``queue_strategy``: its name and, for ``mix``, a weight per score."""

    name: str = "fixed"
    weights: tuple[tuple[str, float], ...] = ()

    @property
    def spec(self) -> str:
        if self.name != "mix" or dict(self.weights) == dict.fromkeys(SCORES, 1.0):
            return self.name
        return "mix:" + ",".join(f"{k}={v:g}" for k, v in self.weights)

    def weight(self, score: str) -> float:
        return dict(self.weights).get(score, 0.0) if self.name == "mix" else float(self.name == score)

    @property
    def needs_scores(self) -> bool:
        """Whether the order reads stored scores (a ``score`` job after sampling)."""
        return self.weight("uncertainty") > 0 or self.weight("disagreement") > 0


def parse_strategy(spec: str | None) -> Strategy:
    """``fixed`` | ``uncertainty`` | ``disagreement`` | ``coverage`` | ``mix[:score=weight,...]``; ValueError else."""
    spec = (spec or "fixed").strip()
    name, _, args = spec.partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown queue strategy {spec!r} ({' | '.join(STRATEGIES)}; mix:uncertainty=2,coverage=1)")
    if name != "mix":
        if args:
            raise ValueError(f"queue strategy {name!r} takes no arguments, got {spec!r}")
        return Strategy(name)
    weights = dict.fromkeys(SCORES, 1.0) if not args else {}
    for part in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if key.strip() not in SCORES or not eq or not math.isfinite(w) or w < 0:
            raise ValueError(f"bad mix weight {part!r}: score=weight with a score from {', '.join(SCORES)} "
                             "and a weight ≥ 0")
        weights[key.strip()] = w
    if not any(weights.values()):
        raise ValueError(f"a mix needs a weight above 0, got {spec!r}")
    return Strategy("mix", tuple((k, weights.get(k, 0.0)) for k in SCORES))


# --------------------------------------------------------------------------- the order, as SQL

# labels on the prompt of generation ``g``: finished and live leases on any of its generations (``:now`` bound)
PROMPT_LABELS = ("(SELECT COUNT(*) FROM lease pl JOIN generation pg ON pg.id = pl.generation_id "
                 "WHERE pg.prompt_id = g.prompt_id AND (pl.state = 'done' "
                 "OR (pl.state = 'open' AND pl.expires_at > :now)))")
SCORE_JOIN = " LEFT JOIN queuescore q ON q.generation_id = g.id "


def order_by(strategy: Strategy) -> str:
    """The ORDER BY expression over the queue's candidates (``g`` = generation, ``q`` = its QueueScore)."""
    if strategy.name == "fixed":
        return "g.id"
    if strategy.name == "coverage":
        return f"{PROMPT_LABELS}, g.id"
    if strategy.name in ("uncertainty", "disagreement"):
        return f"COALESCE(q.{strategy.name}, -1.0) DESC, g.id"
    wu, wd, wc = (strategy.weight(s) for s in SCORES)
    terms = [f"{wu!r} * COALESCE(q.uncertainty, 0.0)" if wu else "", f"{wd!r} * COALESCE(q.disagreement, 0.0)"
             if wd else "", f"{wc!r} / (1.0 + {PROMPT_LABELS})" if wc else ""]
    return "(" + " + ".join(t for t in terms if t) + ") DESC, g.id"


# --------------------------------------------------------------------------- scores


def label_entropy(logliks: Sequence[float]) -> float:
    """Entropy of softmax(``logliks``) / log K: 1 when every feedback explains y as well, 0 when one decides."""
    if len(logliks) < 2:
        return 0.0
    top = max(logliks)
    weights = [math.exp(v - top) for v in logliks]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0) / math.log(len(logliks))


def label_distance(labels: Sequence[float], span: float) -> float | None:
    """Mean pairwise |a − b| / ``span`` of label positions (category ranks, or scores); None under two labels."""
    if len(labels) < 2 or span <= 0:
        return None
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    return min(1.0, sum(abs(a - b) for a, b in pairs) / len(pairs) / span)


def feedback_texts(db: str, task: Task) -> list[str]:
    """The feedback the uncertainty compares: the task's categories, else the best- and worst-scored free texts."""
    if len(task.categories) >= 2:
        return list(task.categories)
    from .exemplars import contrast_feedback

    return contrast_feedback(db, task)


def open_generations(db: str, task: Task, round_ids: Sequence[int] | None = None) -> list[int]:
    """The generations of ``round_ids`` (default: the task's open rounds), in order."""
    with session_scope(db) as s:
        q = select(Generation.id).join(Round, Round.id == Generation.round_id).where(Round.task_id == task.id)
        q = q.where(Round.id.in_(list(round_ids))) if round_ids else q.where(Round.status.in_(RoundStatus.open()))
        return list(s.exec(q.order_by(Generation.id)))


def _upsert(s, generation_id: int, **values) -> None:
    row = s.get(QueueScore, generation_id) or QueueScore(generation_id=generation_id)
    detail = {**(row.detail or {}), **values.pop("detail", {})}
    for k, v in values.items():
        setattr(row, k, v)
    row.detail, row.scored_at = detail, utcnow()
    s.add(row)


def score_uncertainty(db: str, settings, task: Task, generation_ids: Sequence[int], version=None,
                      progress: Callable[[int, int], None] | None = None) -> int:
    """Score ``generation_ids`` by the label entropy of ``version`` (default: the served one); rows written."""
    from . import conditioning
    from .evaluation import label_logprobs, reference_model
    from .versions import served_version

    texts = feedback_texts(db, task)
    if len(texts) < 2:
        raise ValueError(f"task {task.name!r} has fewer than two feedback texts: nothing to be uncertain between")
    with session_scope(db) as s:
        version = version or served_version(s)
        if version is None:
            raise ValueError("no served model version to score the queue with")
    model, tokenizer = reference_model(version.path, settings)  # the version's fp32 weights, cached per process
    fmt = conditioning.format_of(version, task).for_tokenizer(tokenizer)
    done = 0
    for start in range(0, len(generation_ids), CHUNK):
        with session_scope(db) as s:
            rows = s.exec(select(Generation, Prompt).join(Prompt, Prompt.id == Generation.prompt_id)
                          .where(Generation.id.in_(list(generation_ids[start:start + CHUNK])))
                          .order_by(Generation.id)).all()
        batch = [(conditioning.prompt_of(p), g.response, g.truncated, f) for g, p in rows for f in texts]
        lps = label_logprobs(model, tokenizer, fmt, batch)  # (len(rows) * K) lists of token log-probs
        with session_scope(db) as s:
            for i, (g, _) in enumerate(rows):
                ll = [sum(lp) for lp in lps[i * len(texts):(i + 1) * len(texts)]]
                _upsert(s, g.id, uncertainty=label_entropy(ll), guess=texts[ll.index(max(ll))],
                        model_version_id=version.id, detail={"loglik": dict(zip(texts, ll))})
        done += len(rows)
        if progress:
            progress(done, len(generation_ids))
    return done


def score_disagreement(db: str, task: Task, generation_ids: Sequence[int]) -> int:
    """Score ``generation_ids`` by how far apart their labels are (the newest per source); rows written."""
    cats = list(task.categories)
    with session_scope(db) as s:
        rows = s.exec(select(Feedback).where(Feedback.generation_id.in_(list(generation_ids)),
                                             Feedback.kind.in_(FeedbackKind.labels())).order_by(Feedback.id)).all()
    labels: dict[int, dict[str, float]] = {}
    shown: dict[int, dict[str, str]] = {}
    for f in rows:  # newest per source wins (ordered by id)
        if f.category in cats:
            value = float(cats.index(f.category))
        elif f.score is not None and not cats:
            value = float(f.score)
        else:
            continue
        labels.setdefault(f.generation_id, {})[f.source] = value
        shown.setdefault(f.generation_id, {})[f.source] = f.category or f"{f.text} ({f.score:g})"
    values = [v for per in labels.values() for v in per.values()]
    span = (len(cats) - 1) if cats else (max(values) - min(values) if values else 0.0)
    with session_scope(db) as s:
        for gid in generation_ids:
            _upsert(s, gid, disagreement=label_distance(list(labels.get(gid, {}).values()), span),
                    detail={"labels": shown.get(gid, {})})
    return len(generation_ids)


def score_queue(db: str, settings, task: Task, round_ids: Sequence[int] | None = None, uncertainty: bool = True,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """The ``score`` job's work: disagreement (no model) and, with ``uncertainty``, the served model's label
    entropy, for the generations of ``round_ids`` (default: the task's open rounds)."""
    ids = open_generations(db, task, round_ids)
    score_disagreement(db, task, ids)
    scored = score_uncertainty(db, settings, task, ids, progress=progress) if uncertainty and ids else 0
    return {"generations": len(ids), "uncertainty_scored": scored}


def set_strategy(db: str, task: str, spec: str) -> Task:
    """Set ``task``'s queue order (the CLI's ``alt queue set``; the console saves it with the task's form)."""
    strategy = parse_strategy(spec)
    with session_scope(db) as s:
        row = s.exec(select(Task).where(Task.name == task)).first()
        if row is None:
            raise ValueError(f"no task {task!r}")
        row.queue_strategy = strategy.spec
        s.flush()
        return row


__all__ = ["STRATEGIES", "Strategy", "label_distance", "label_entropy", "order_by", "parse_strategy",
           "score_disagreement", "score_queue", "score_uncertainty", "set_strategy"]
