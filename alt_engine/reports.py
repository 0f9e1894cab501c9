"""What the console, the CLI and the API show: per-round counts, browsing prompts / generations / feedback,
and the small admin actions on tasks, prompt sets and rounds. The engine owns these queries; callers format.

Every reader first calls ``jobs.refresh`` so a job whose process died reads as failed (with its version and
round) wherever it is looked at.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import select

from .agreement import cohen_kappa, labels_by_rater
from .db import Feedback, Generation, Job, ModelVersion, Prompt, QueueScore, Round, RoundStatus, Task, session_scope
from .jobs import refresh
from .vocab import HUMAN_PREFIX, FeedbackKind, JobKind, ObjectiveName


def round_rows(db: str, task: str | None = None) -> list[dict]:
    """Per round: status, model, prompts, generations; generations labelled by people, by AI only, flagged
    (and not labelled), unlabelled; truncated."""
    refresh(db)
    with session_scope(db) as s:
        rows = []
        q = select(Round, Task).join(Task).order_by(Round.task_id, Round.number)
        if task:
            q = q.where(Task.name == task)
        for rnd, t in s.exec(q):
            gens = select(Generation.id).where(Generation.round_id == rnd.id)
            n_gen = s.exec(select(func.count()).select_from(gens.subquery())).one()
            labelled = select(Feedback.generation_id).where(Feedback.generation_id.in_(gens),
                                                            Feedback.kind != FeedbackKind.FLAG)
            human = s.exec(select(func.count(func.distinct(Feedback.generation_id))).where(
                Feedback.generation_id.in_(gens), Feedback.source.like(f"{HUMAN_PREFIX}%"),
                Feedback.kind != FeedbackKind.FLAG)).one()
            any_fb = s.exec(select(func.count(func.distinct(Feedback.generation_id))).where(
                Feedback.generation_id.in_(labelled))).one()
            flagged_only = s.exec(select(func.count(func.distinct(Feedback.generation_id))).where(
                Feedback.generation_id.in_(gens), Feedback.kind == FeedbackKind.FLAG,
                Feedback.generation_id.not_in(labelled))).one()
            trunc = s.exec(select(func.count()).where(Generation.round_id == rnd.id, Generation.truncated)).one()
            n_prompts = s.exec(select(func.count(func.distinct(Generation.prompt_id))).where(
                Generation.round_id == rnd.id)).one()
            version = s.get(ModelVersion, rnd.model_version_id) if rnd.model_version_id else None
            rows.append(dict(task=t.name, round=rnd.number, round_id=rnd.id, status=str(rnd.status),
                             model=version.name if version else "", prompts=n_prompts, generations=n_gen,
                             human=human, ai=any_fb - human, flagged=flagged_only,
                             unlabelled=n_gen - any_fb - flagged_only, truncated=trunc))
        return rows


def close_round(db: str, round_id: int) -> Round:
    """Close a round for annotation (its feedback stays usable for training)."""
    with session_scope(db) as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise ValueError(f"no round {round_id}")
        if rnd.status in (RoundStatus.SAMPLING, RoundStatus.TRAINING, RoundStatus.EVALUATING):
            raise ValueError(f"round {rnd.number} is {rnd.status}: wait for its job (or cancel it) first")
        rnd.status = RoundStatus.CLOSED
        return rnd


def version_rows(db: str) -> list[dict]:
    """Every model version with its parent, round, the job that made it, status and headline metrics."""
    refresh(db)
    with session_scope(db) as s:
        versions = list(s.exec(select(ModelVersion).order_by(ModelVersion.id)))
        names = {v.id: v.name for v in versions}
        makers = {j.version_id: j.id for j in s.exec(select(Job).where(Job.version_id.is_not(None),
                                                                       Job.kind == JobKind.TRAIN))}
        rounds = {r.id: r.number for r in s.exec(select(Round))}
        rows = []
        for v in versions:
            hp, m = v.hyperparameters or {}, v.metrics or {}
            job = makers.get(v.id) or hp.get("job_id")
            rows.append(dict(id=v.id, name=v.name, status=str(v.status), parent=names.get(v.parent_id, ""),
                             round=rounds.get(hp.get("round_id"), ""), objective=v.objective, job=job or "",
                             metrics=", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}"
                                               for k, x in m.items()
                                               if isinstance(x, int | float | str) and k != "error")[:300],
                             error=m.get("error", ""), path=v.path))
        return rows


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskSpec:
    """The editable parts of a task (the console's Tasks form)."""

    name: str
    categories: list[str]
    exemplar: str | None = None
    allow_free_text: bool = True
    allow_critique: bool = True
    allow_judgment: bool = True
    guidelines: str = ""
    annotations_per_item: int = 1
    description: str = ""
    conditioning: dict | None = None  # conditioning.Format fields; None = keep
    queue_strategy: str | None = None  # the annotation queue's order (queue_order.STRATEGIES); None = keep

    def check(self) -> None:
        from .conditioning import Format
        from .queue_order import parse_strategy

        if not self.name.strip():
            raise ValueError("a task needs a name")
        cats = [c.strip() for c in self.categories if c.strip()]
        if len(cats) < 2:
            raise ValueError("a task needs at least two categories, best first")
        if len(set(cats)) != len(cats):
            raise ValueError("categories must be distinct")
        if self.exemplar and self.exemplar not in cats:
            raise ValueError(f"the exemplar {self.exemplar!r} is not one of the categories")
        if not 1 <= int(self.annotations_per_item) <= 20:
            raise ValueError("overlap k (annotations per item) must be between 1 and 20")
        if self.conditioning is not None:
            Format.from_dict(self.conditioning)  # raises on a bad placement or template
        if self.queue_strategy is not None:
            self.queue_strategy = parse_strategy(self.queue_strategy).spec  # raises on an unknown one
        self.categories = cats


def save_task(db: str, spec: TaskSpec) -> Task:
    """Create the task ``spec.name`` or update it."""
    spec.check()
    with session_scope(db) as s:
        task = s.exec(select(Task).where(Task.name == spec.name.strip())).first()
        if task is None:
            task = Task(name=spec.name.strip())
            s.add(task)
        task.categories, task.exemplar = spec.categories, spec.exemplar or None
        task.allow_free_text, task.allow_critique = bool(spec.allow_free_text), bool(spec.allow_critique)
        task.allow_judgment, task.guidelines = bool(spec.allow_judgment), spec.guidelines or ""
        task.annotations_per_item, task.description = int(spec.annotations_per_item), spec.description or ""
        if spec.conditioning is not None:
            task.conditioning = dict(spec.conditioning)
        if spec.queue_strategy is not None:
            task.queue_strategy = spec.queue_strategy
        s.flush()
        return task


def duplicate_task(db: str, source: str, new_name: str) -> Task:
    """A copy of ``source`` (a task in the database or a built-in one) named ``new_name``."""
    from .tasks import BUILTIN_TASKS

    new_name = (new_name or "").strip()
    if not new_name:
        raise ValueError("give the copy a name")
    with session_scope(db) as s:
        if s.exec(select(Task).where(Task.name == new_name)).first() is not None:
            raise ValueError(f"a task named {new_name!r} exists already")
        src = s.exec(select(Task).where(Task.name == source)).first()
        if src is not None:
            fields = {k: getattr(src, k) for k in ("description", "categories", "exemplar", "allow_free_text",
                                                   "allow_critique", "allow_judgment", "guidelines",
                                                   "annotations_per_item", "conditioning", "show_conditioning",
                                                   "queue_strategy")}
        elif source in BUILTIN_TASKS:
            fields = dict(BUILTIN_TASKS[source])
        else:
            raise ValueError(f"no task {source!r}")
        task = Task(name=new_name, **fields)
        s.add(task)
        s.flush()
        return task


# --------------------------------------------------------------------------- prompts, generations, feedback


def prompt_sets(db: str, task: str | None = None) -> list[dict]:
    """Prompt sets (the file each prompt came from) per task: prompts, train/probe, used by a round or not."""
    with session_scope(db) as s:
        q = select(Prompt.task_id, Prompt.source, Prompt.split, func.count()).group_by(
            Prompt.task_id, Prompt.source, Prompt.split)
        tasks = {t.id: t.name for t in s.exec(select(Task))}
        sets: dict[tuple, dict] = {}
        for task_id, source, split, n in s.exec(q):
            if task and tasks.get(task_id) != task:
                continue
            row = sets.setdefault((task_id, source), dict(task=tasks.get(task_id, ""), source=source, prompts=0,
                                                          train=0, probe=0, used=False))
            row["prompts"] += n
            row[split if split in ("train", "probe") else "train"] += n
        used = set(s.exec(select(Prompt.task_id, Prompt.source).join(Generation, Generation.prompt_id == Prompt.id)
                          .distinct()))
        for key, row in sets.items():
            row["used"] = key in used
        return list(sets.values())


def delete_prompt_set(db: str, task: str, source: str) -> int:
    """Delete a prompt set no round sampled from; the number of prompts deleted."""
    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == task)).first()
        if t is None:
            raise ValueError(f"no task {task!r}")
        ids = list(s.exec(select(Prompt.id).where(Prompt.task_id == t.id, Prompt.source == source)))
        if not ids:
            raise ValueError(f"task {task!r} has no prompt set {source!r}")
        if s.exec(select(func.count()).where(Generation.prompt_id.in_(ids))).one():
            raise ValueError(f"prompt set {source!r} was sampled in a round: it cannot be deleted")
        for p in s.exec(select(Prompt).where(Prompt.id.in_(ids))):
            s.delete(p)
        return len(ids)


def browse_prompts(db: str, task: str | None = None, split: str | None = None, source: str | None = None,
                   limit: int = 200) -> list[dict]:
    from .conditioning import prompt_of, prompt_text

    with session_scope(db) as s:
        q = select(Prompt, Task.name).join(Task).order_by(Prompt.id)
        if task:
            q = q.where(Task.name == task)
        if split:
            q = q.where(Prompt.split == split)
        if source:
            q = q.where(Prompt.source == source)
        return [dict(id=p.id, task=name, split=p.split, source=p.source, prompt=prompt_text(prompt_of(p))[:500])
                for p, name in s.exec(q.limit(limit))]


def browse_generations(db: str, task: str | None = None, round_number: int | None = None,
                       state: str | None = None, limit: int = 200) -> list[dict]:
    """Generations with their feedback summary; ``state``: human | ai | unlabelled | flagged."""
    from .conditioning import prompt_of, prompt_text

    with session_scope(db) as s:
        q = (select(Generation, Prompt, Round, Task.name).join(Prompt, Generation.prompt_id == Prompt.id)
             .join(Round, Generation.round_id == Round.id).join(Task, Round.task_id == Task.id)
             .order_by(Generation.id))
        if task:
            q = q.where(Task.name == task)
        if round_number:
            q = q.where(Round.number == int(round_number))
        rows = []
        for g, p, r, tname in s.exec(q):
            fbs = list(s.exec(select(Feedback).where(Feedback.generation_id == g.id)))
            labels = [f for f in fbs if f.kind != FeedbackKind.FLAG]
            human = [f for f in labels if f.is_human]
            flagged = any(f.kind == FeedbackKind.FLAG for f in fbs)
            kind = "human" if human else "ai" if labels else "flagged" if flagged else "unlabelled"
            if state and state != kind and not (state == "flagged" and flagged):
                continue
            shown = (human or labels)
            rows.append(dict(id=g.id, task=tname, round=r.number, state=kind, flagged=flagged,
                             feedback="; ".join(f"{f.source}: {f.category or f.text or ''}" for f in shown)[:300],
                             conditioning=g.conditioning or "", prompt=prompt_text(prompt_of(p))[:300],
                             response=g.response[:500], truncated=g.truncated))
            if len(rows) >= limit:
                break
        return rows


def browse_feedback(db: str, task: str | None = None, round_number: int | None = None, source: str | None = None,
                    category: str | None = None, limit: int = 200) -> list[dict]:
    """Feedback rows; ``source``: human | ai | flag or an exact source (``rule:concise``)."""
    with session_scope(db) as s:
        q = (select(Feedback, Generation, Round, Task.name).join(Generation, Feedback.generation_id == Generation.id)
             .join(Round, Generation.round_id == Round.id).join(Task, Round.task_id == Task.id)
             .order_by(Feedback.id.desc()))
        if task:
            q = q.where(Task.name == task)
        if round_number:
            q = q.where(Round.number == int(round_number))
        if source == "human":
            q = q.where(Feedback.source.like(f"{HUMAN_PREFIX}%"), Feedback.kind != FeedbackKind.FLAG)
        elif source == "ai":
            q = q.where(Feedback.source.not_like(f"{HUMAN_PREFIX}%"))
        elif source == "flag":
            q = q.where(Feedback.kind == FeedbackKind.FLAG)
        elif source:
            q = q.where(Feedback.source == source)
        if category:
            q = q.where(Feedback.category == category)
        return [dict(id=f.id, task=tname, round=r.number, generation=g.id, source=f.source, kind=f.kind,
                     category=f.category or "", text=(f.text or f.critique or "")[:300],
                     created=f.created_at.isoformat(timespec="seconds") if f.created_at else "")
                for f, g, r, tname in s.exec(q.limit(limit))]


def empty_queue_message(db: str, task: str | None, done_by_user: int = 0) -> str:
    """Why an annotator has nothing to label: done, nothing sampled yet, a round being sampled or trained."""
    refresh(db)
    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == task)).first() if task else None
        rounds = list(s.exec(select(Round).where(Round.task_id == t.id).order_by(Round.number))) if t else []
    if not rounds:
        return ("### Nothing sampled yet\nNo round has been sampled for this task. An admin starts one in "
                "**Admin → Rounds → Start sampling**; then press **Refresh**.")
    busy = {RoundStatus.SAMPLING: "being sampled", RoundStatus.TRAINING: "being trained on",
            RoundStatus.EVALUATING: "being evaluated"}
    for rnd in reversed(rounds):
        if rnd.status in busy:
            return (f"### Round {rnd.number} is {busy[RoundStatus(rnd.status)]}\nNothing to label until the next "
                    "round is sampled; press **Refresh** later.")
    if any(r.status in RoundStatus.open() for r in rounds):
        if done_by_user:
            return (f"### You are done\nYou labelled {done_by_user} items; every item of the open rounds has all "
                    "the labels it needs. Thank you!")
        return "### Nothing left for you right now\nThe remaining items are being labelled by others."
    return ("### No open round\nThe last round is closed. An admin samples the next one in **Admin → Rounds**; "
            "then press **Refresh**.")


# --------------------------------------------------------------------------- the dashboard (alignment per round)
# round_metrics: one row per evaluated version at its round (the base version at round 0): category shares with
# intervals, exemplar share, steerability gap, mean reward, perplexity, dist-1/2/3, length, % truncated;
# throughput: human labels per annotator and round; agreement_by_round: human (majority) vs each AI source.

SCALARS = ("exemplar_share", "steerability_gap", "mean_score", "perplexity", "dist1", "dist2", "dist3",
           "mean_words", "mean_length", "pct_truncated")


def _task_named(session, name: str) -> Task:
    task = session.exec(select(Task).where(Task.name == name)).first()
    if task is None:
        raise ValueError(f"no task {name!r}")
    return task


def _version_rounds(session, task: Task) -> dict[int, int]:
    """version id → the number of the round it was trained on (its ``metrics["round"]`` or training record)."""
    rounds = {r.id: r.number for r in session.exec(select(Round).where(Round.task_id == task.id))}
    out = {}
    for v in session.exec(select(ModelVersion)):
        number = ((v.metrics or {}).get("round") or {}).get("number")
        round_id = (v.hyperparameters or {}).get("round_id")
        if round_id in rounds:
            out[v.id] = rounds[round_id]
        elif number is not None and round_id is None and v.objective != ObjectiveName.BASE:
            out[v.id] = number
        elif v.objective == ObjectiveName.BASE and v.parent_id is None:
            out[v.id] = 0
    return out


def round_metrics(db: str, task: str) -> list[dict]:
    """One row per version of ``task`` with evaluation metrics, by round (base = 0), then version id."""
    with session_scope(db) as s:
        t = _task_named(s, task)
        at = _version_rounds(s, t)
        versions = [v for v in s.exec(select(ModelVersion).order_by(ModelVersion.id)) if v.id in at]
        rows = []
        for v in versions:
            m = v.metrics or {}
            if not any(k in m for k in SCALARS + ("category_share",)):
                continue  # never evaluated
            row = {"round": at[v.id], "version": v.name, "status": v.status,
                   "provider": (m.get("eval") or {}).get("provider")}
            for k in SCALARS:
                row[k] = m.get(k)
                ci = m.get(f"{k}_ci")
                row[f"{k}_low"], row[f"{k}_high"] = (ci[0], ci[1]) if ci else (None, None)
            cis = m.get("category_share_ci") or {}
            for c in t.categories:
                row[f"share:{c}"] = (m.get("category_share") or {}).get(c)
                low, high = cis.get(c) or (None, None)
                row[f"share:{c}_low"], row[f"share:{c}_high"] = low, high
            rows.append(row)
    return sorted(rows, key=lambda r: (r["round"], r["version"]))


def throughput(db: str, task: str) -> list[dict]:
    """Human labels (flags and undone ones excluded) per annotator and round: {round, annotator, labels}."""
    with session_scope(db) as s:
        t = _task_named(s, task)
        q = (select(Round.number, Feedback.source).join(Generation, Generation.id == Feedback.generation_id)
             .join(Prompt, Prompt.id == Generation.prompt_id).join(Round, Round.id == Generation.round_id)
             .where(Prompt.task_id == t.id, Feedback.source.like(f"{HUMAN_PREFIX}%"),
                    Feedback.kind != FeedbackKind.FLAG))
        counts = Counter((number, source.removeprefix(HUMAN_PREFIX)) for number, source in s.exec(q))
    return [{"round": r, "annotator": a, "labels": n} for (r, a), n in sorted(counts.items())]


def agreement_by_round(db: str, task: str) -> list[dict]:
    """Per round and AI source: items with both labels, share agreeing, Cohen's κ (human side: the majority)."""
    _, by_rater = labels_by_rater(db, task)
    with session_scope(db) as s:
        t = _task_named(s, task)
        round_of = {g: n for g, n in s.exec(select(Generation.id, Round.number)
                                             .join(Round, Round.id == Generation.round_id)
                                             .where(Round.task_id == t.id)).all()}
    human: dict[int, list[str]] = defaultdict(list)
    for src, labels in by_rater.items():
        if src.startswith("human:"):
            for g, c in labels.items():
                human[g].append(c)
    majority = {g: Counter(reversed(v)).most_common(1)[0][0] for g, v in human.items()}
    rows = []
    for src, labels in sorted(by_rater.items()):
        if src.startswith("human:"):
            continue
        per_round: dict[int, list[int]] = defaultdict(list)
        for g in labels.keys() & majority.keys():
            if g in round_of:
                per_round[round_of[g]].append(g)
        for r, gens in sorted(per_round.items()):
            a, b = [majority[g] for g in gens], [labels[g] for g in gens]
            rows.append({"round": r, "ai_source": src, "items": len(gens),
                         "agreement": sum(x == y for x, y in zip(a, b)) / len(gens), "kappa": cohen_kappa(a, b)})
    return rows


def exemplar_rows(db: str, task: str) -> list[dict]:
    """What round ≥ 2 samples are conditioned on (and the playground offers): the task's exemplar category, or for
    a free-text task the score-3 texts of its rounds (ALT-LMU's pool; one drawn per prompt), newest first."""
    from .evaluation import exemplar_feedback

    with session_scope(db) as s:
        t = _task_named(s, task)
        s.expunge(t)
    if t.categories:
        return [{"exemplar": t.exemplar_category, "kind": "category"}]
    return [{"exemplar": text, "kind": "free text, score 3"} for text in exemplar_feedback(db, t)]


# --------------------------------------------------------------------------- why this item is next (admins)


def explain_queue(db: str, task: str | int, limit: int = 20) -> list[dict]:
    """The next ``limit`` items of the task's queue in order, with the scores that put them there."""
    from .annotation import resolve_task, upcoming
    from .queue_order import parse_strategy

    with session_scope(db) as s:
        row = resolve_task(s, task)
        if row is None:
            raise ValueError("give a task")
        strategy = parse_strategy(row.queue_strategy)
    order = upcoming(db, row.id, limit)  # [(generation id, labels of its prompt)]
    with session_scope(db) as s:
        scores = {q.generation_id: q for q in s.exec(select(QueueScore).where(
            QueueScore.generation_id.in_([g for g, _ in order])))}
        gens = {g.id: g for g in s.exec(select(Generation).where(Generation.id.in_([g for g, _ in order])))}
    out = []
    for position, (gid, prompt_labels) in enumerate(order, 1):
        q, g = scores.get(gid), gens[gid]
        out.append(dict(position=position, generation=gid, prompt=g.prompt_id, response=g.response[:120],
                        uncertainty=q.uncertainty if q else None, guess=q.guess if q else None,
                        disagreement=q.disagreement if q else None, prompt_labels=prompt_labels,
                        why=_why(strategy, q, prompt_labels)))
    return out


def _why(strategy, q: QueueScore | None, prompt_labels: int) -> str:
    """Why an item stands where it does in the queue, in words (``strategy``: the task's ``queue_order.Strategy``)."""
    parts = []
    if strategy.weight("uncertainty"):
        if q is None or q.uncertainty is None:
            parts.append("not scored yet (after the scored items)")
        else:
            ll = (q.detail or {}).get("loglik") or {}
            spread = max(ll.values()) - min(ll.values()) if ll else 0.0
            parts.append(f"uncertainty {q.uncertainty:.2f}: the model's likeliest label {q.guess!r}, log p(y | f, x) "
                         f"spread {spread:.2f} nats over {len(ll)} feedback texts")
    if strategy.weight("disagreement"):
        labels = (q.detail or {}).get("labels") if q else None
        if q is None or q.disagreement is None:
            parts.append("fewer than two labels to compare" + (f" ({', '.join(labels.values())})" if labels else ""))
        else:
            said = "; ".join(f"{k} says {v!r}" for k, v in labels.items())
            parts.append(f"disagreement {q.disagreement:.2f}: {said}")
    if strategy.weight("coverage"):
        parts.append(f"its prompt has {prompt_labels} label(s)")
    return " · ".join(parts) or "generation order"


def latest_task(db: str) -> str | None:
    """The task of the newest round (what a Dashboard opens on), None before any round."""
    with session_scope(db) as s:
        return s.exec(select(Task.name).join(Round, Round.task_id == Task.id).order_by(Round.id.desc())).first()
