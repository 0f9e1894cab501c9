"""Training-ready datasets in TRL's formats, and what training counts (the pool; what a dataset left out).

- ``sft_rows``: conditional SFT as TRL's prompt/completion — the prompt is the conditioned input built by
  ``conditioning.build_training_example`` (what ``training.run.build_examples`` feeds the trainer), decoded
  to text, for the data pool ``pool.build_pool`` selects (the rows training would use).
- ``dpo_rows``: preference pairs within a prompt from the task's category order (best → worst):
  ``prompt`` / ``chosen`` / ``rejected`` in TRL's conversational format, the plain prompt (no feedback).
- ``kto_rows``: unpaired ``prompt`` / ``completion`` / ``label``: the better half of the categories is
  desirable, the worse half undesirable (the middle one of an odd count is left out).
- ``training_pool`` / ``left_out``: the pool options training counts with, and why a round's generations made no row.
"""

from __future__ import annotations

from collections import defaultdict

from sqlmodel import select

from . import conditioning
from .db import Feedback, FeedbackKind, Generation, JobKind, ModelVersion, Prompt, Round, Task, session_scope
from .feedback.store import effective_feedback


def _rounds_filter(session, task: Task | None, rounds: list[int] | None) -> list[int] | None:
    """Round numbers (of ``task``) → round ids; None = every round."""
    if rounds is None:
        return None
    q = select(Round.id).where(Round.number.in_(rounds))
    if task is not None:
        q = q.where(Round.task_id == task.id)
    return list(session.exec(q))


def _task(session, name: str | None) -> Task | None:
    if name is None:
        return None
    task = session.exec(select(Task).where(Task.name == name)).first()
    if task is None:
        raise ValueError(f"no task {name!r}")
    return task


def _round_ids(db: str, task: Task, rounds: list[int] | None) -> list[int]:
    with session_scope(db) as s:
        ids = _rounds_filter(s, task, rounds)
        return ids if ids is not None else list(s.exec(select(Round.id).where(Round.task_id == task.id)))


def _load_task(db: str, name: str | None) -> Task:
    with session_scope(db) as s:
        if name is None:
            tasks = list(s.exec(select(Task)))
            if len(tasks) != 1:
                raise ValueError(f"the database holds {len(tasks)} tasks: choose one with --task")
            return tasks[0]
        return _task(s, name)


def sft_rows(db: str, tokenizer, task: str | None = None, rounds: list[int] | None = None,
             fmt: conditioning.Format | None = None, config=None, **pool_kw) -> list[dict]:
    """The data pool as TRL prompt/completion rows, the prompt conditioned exactly as training conditions it.

    ``prompt`` = the decoded ``input_ids`` of ``build_training_example`` (feedback where ``fmt`` puts it,
    chat template applied); ``completion`` = the response (TRL appends EOS; ``truncated`` rows have none in
    our trainer). ``rounds`` None: the pool's own choice (latest round for flush).
    """
    from .pool import build_pool
    from .training.config import AltTrainConfig

    t = _load_task(db, task)
    config = config or AltTrainConfig()
    fmt = (fmt or conditioning.format_of(None, t)).for_tokenizer(tokenizer)
    round_ids = _round_ids(db, t, rounds) if rounds is not None else None
    rows = []
    for item in build_pool(db, t.id, round_ids, **pool_kw):
        ex = conditioning.build_training_example(tokenizer, item.prompt, item.feedback, item.response, item.truncated,
                                                 fmt, config.max_response_tokens, config.max_prompt_tokens)
        eos = tokenizer.eos_token_id
        response_ids = ex.response_ids[:-1] if ex.response_ids and ex.response_ids[-1] == eos else ex.response_ids
        rows.append({"prompt": tokenizer.decode(ex.input_ids), "completion": tokenizer.decode(response_ids),
                     "feedback": item.feedback, "truncated": item.truncated, "prompt_id": item.prompt_id,
                     "generation_id": item.generation_id, "feedback_id": item.feedback_id})
    return rows


def _ranked(db: str, task: Task, rounds: list[int] | None, include_truncated: bool) -> dict[int, list[dict]]:
    """prompt id → its labelled generations with the category's rank (0 = best); flagged ones left out."""
    order = {c: i for i, c in enumerate(task.categories)}
    if not order:
        raise ValueError(f"task {task.name!r} has no categories: preference exports need an order")
    round_ids = _round_ids(db, task, rounds)
    with session_scope(db) as s:
        found = s.exec(select(Generation, Prompt).join(Prompt, Generation.prompt_id == Prompt.id)
                       .where(Prompt.task_id == task.id, Generation.round_id.in_(round_ids))
                       .order_by(Generation.id)).all()
        chosen = effective_feedback(s, [g.id for g, _ in found], kinds=(FeedbackKind.CATEGORY,))
        flagged = set(s.exec(select(Feedback.generation_id).where(
            Feedback.generation_id.in_([g.id for g, _ in found]), Feedback.kind == FeedbackKind.FLAG)))
        per_prompt: dict[int, list[dict]] = defaultdict(list)
        for g, p in found:
            fb = chosen.get(g.id)
            if fb is None or fb.category not in order or g.id in flagged or (g.truncated and not include_truncated):
                continue
            per_prompt[p.id].append({"prompt": conditioning.as_messages(conditioning.prompt_of(p)),
                                     "response": g.response, "rank": order[fb.category], "category": fb.category,
                                     "generation_id": g.id, "feedback_id": fb.id, "prompt_id": p.id})
    return per_prompt


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def dpo_rows(db: str, task: str | None = None, rounds: list[int] | None = None, include_truncated: bool = False,
             max_pairs_per_prompt: int | None = None) -> list[dict]:
    """Every pair within a prompt whose categories differ: the better-ranked one is ``chosen``."""
    t = _load_task(db, task)
    rows = []
    for prompt_id, gens in sorted(_ranked(db, t, rounds, include_truncated).items()):
        pairs = [(a, b) for a in gens for b in gens if a["rank"] < b["rank"]]
        pairs.sort(key=lambda ab: (ab[0]["rank"] - ab[1]["rank"], ab[0]["generation_id"], ab[1]["generation_id"]))
        for a, b in pairs[:max_pairs_per_prompt]:  # widest gaps first
            rows.append({"prompt": a["prompt"], "chosen": _assistant(a["response"]),
                         "rejected": _assistant(b["response"]), "chosen_category": a["category"],
                         "rejected_category": b["category"], "prompt_id": prompt_id,
                         "chosen_generation_id": a["generation_id"], "rejected_generation_id": b["generation_id"]})
    return rows


def kto_rows(db: str, task: str | None = None, rounds: list[int] | None = None,
             include_truncated: bool = False) -> list[dict]:
    """Unpaired rows: the better half of the categories desirable, the worse half not, an odd middle left out."""
    t = _load_task(db, task)
    k = len(t.categories)
    rows = []
    for prompt_id, gens in sorted(_ranked(db, t, rounds, include_truncated).items()):
        for g in gens:
            if k % 2 and g["rank"] == k // 2:
                continue
            rows.append({"prompt": g["prompt"], "completion": _assistant(g["response"]),
                         "label": g["rank"] < k / 2, "category": g["category"], "prompt_id": prompt_id,
                         "generation_id": g["generation_id"], "feedback_id": g["feedback_id"]})
    return rows


def training_pool(db: str, task: Task, version: ModelVersion | None = None):
    """The pool options training counts with: those ``version``'s training job used, else the planner's defaults
    for ``task`` (``plan.pool_options``: the same as ``alt train`` and the console's Training)."""
    from .db import Job
    from .plan import TrainSpec, pool_options

    if version is not None:
        with session_scope(db) as s:
            job = s.exec(select(Job).where(Job.kind == JobKind.TRAIN, Job.version_id == version.id)).first()
        if job is not None and job.params.get("task_id") == task.id:
            return TrainSpec.from_params(job.params).pool
    return pool_options(task)


def _pool_rounds(db: str, task: Task, pool) -> list[int]:
    """The rounds a pool with no explicit rounds draws from (flush: the latest; accumulate: all)."""
    ids = _round_ids(db, task, None)
    return ids[-1:] if pool.policy == "flush" else ids


def left_out(db: str, task: Task, round_ids: list[int], used: set[int], kind: str, pool) -> dict[str, int]:
    """Why the rounds' generations that made no ``kind`` row were left out: reason → how many."""
    with session_scope(db) as s:
        gens = s.exec(select(Generation).where(Generation.round_id.in_(round_ids))).all()
        ids = [g.id for g in gens]
        labelled = effective_feedback(s, ids,
                                      kinds=(FeedbackKind.CATEGORY,) if kind != "sft" else FeedbackKind.labels())
        flagged = set(s.exec(select(Feedback.generation_id).where(Feedback.generation_id.in_(ids),
                                                                  Feedback.kind == FeedbackKind.FLAG)))
    by_prompt: dict[int, set] = defaultdict(set)
    for g in gens:
        if g.id in labelled and g.id not in flagged and (pool.truncated != "exclude" or not g.truncated):
            by_prompt[g.prompt_id].add(labelled[g.id].category)
    reasons: dict[str, int] = defaultdict(int)
    for g in gens:
        if g.id in used:
            continue
        if g.id in flagged:
            reasons["flagged"] += 1
        elif g.id not in labelled:
            reasons["unlabelled"] += 1
        elif g.truncated and pool.truncated == "exclude":
            reasons["truncated (no EOS; truncated = exclude)"] += 1
        elif kind == "dpo" and len(by_prompt[g.prompt_id]) < 2:
            reasons["in prompts with one category only (no pair)"] += 1
        elif kind == "kto" and len(task.categories) % 2 and labelled[g.id].category == \
                task.categories[len(task.categories) // 2]:
            reasons["of the middle category (neither desirable nor not)"] += 1
        elif kind == "sft":
            cap = f"at most {pool.max_per_prompt} per prompt, " if pool.max_per_prompt else ""
            reasons[f"not drawn ({cap}{pool.k_per_category} per category)"] += 1
        else:
            reasons["not used"] += 1
    return dict(reasons)
