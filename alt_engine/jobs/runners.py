"""The job kinds: one handler per stage (sample, score, feedback, train, eval, round), each calling the stage's
engine function with the job's params."""

from __future__ import annotations

from ..db import ModelVersion, Round, RoundStatus, select, session_scope
from .context import JobContext
from .queue import JOB_KINDS, start_job, train_rounds
from .trainer import train_version


def _task(db: str, task_id: int):
    from ..db import Task

    with session_scope(db) as s:
        task = s.get(Task, task_id)
        if task is None:
            raise ValueError(f"no task {task_id}")
        return task


def _version(db: str, version_id: int | None) -> ModelVersion:
    from ..versions import served_version

    with session_scope(db) as s:
        version = s.get(ModelVersion, version_id) if version_id is not None else served_version(s)
        if version is None:
            raise ValueError(f"no model version {version_id}" if version_id is not None else "no served version")
        return version


def _set_rounds(db: str, round_ids, status: RoundStatus, only_from: tuple | None = None) -> None:
    with session_scope(db) as s:
        for rid in round_ids or []:
            rnd = s.get(Round, rid)
            if rnd is not None and (only_from is None or rnd.status in only_from):
                rnd.status = status


def _sample(ctx: JobContext) -> dict:
    """A sampling round. params: task_id; version_id (default: served); split, limit; sampling (SamplingParams
    fields); condition: ``auto`` (None for a base model, else the exemplar), ``exemplar``, ``none`` or a text."""
    from ..db import Generation
    from ..plan import SampleSpec
    from ..rounds import draw_exemplars, sample_round, sampling_conditioning, start_round

    spec, db = SampleSpec.from_params(ctx.params), ctx.db
    settings = ctx.settings()
    task, version = _task(db, spec.task_id), _version(db, spec.version_id)
    params = spec.sampling
    rnd, prompts = start_round(db, task, version, spec.split, spec.limit)
    ctx.link(round_id=rnd.id)
    cond = spec.condition
    if cond == "auto":
        conds = sampling_conditioning(db, task, version, len(prompts), params.seed)
    elif cond == "exemplar":
        conds = draw_exemplars(db, task, len(prompts), params.seed)
    elif cond in (None, "none", ""):
        conds = None
    else:
        conds = cond
    ctx.stage(f"sampling {len(prompts)} prompts × {params.n} from {version.name}")
    # per finished sequence, as the CLI's bar counts them (the backend reports about once a second)
    ids = sample_round(db, settings, task, rnd, version, prompts, params, conds, spec.backend,
                       progress=lambda done, total: ctx(done / max(total, 1)))
    _set_rounds(db, [rnd.id], RoundStatus.LABELLING)
    with session_scope(db) as s:
        truncated = len(s.exec(select(Generation.id).where(Generation.round_id == rnd.id, Generation.truncated)).all())
    ctx.log(f"round {rnd.number}: {len(ids)} generations from {version.name}", echo=False)
    return {"round_id": rnd.id, "round": rnd.number, "generations": len(ids), "prompts": len(prompts),
            "truncated": truncated, "score_job": _queue_scoring(db, task, rnd.id, ctx.params),
            "conditioning": conds[0] if isinstance(conds, list) and conds else conds}


def _queue_scoring(db: str, task, round_id: int, params: dict) -> int | None:
    """After sampling: queue the ``score`` job the task's queue order reads (uncertainty, disagreement)."""
    from ..queue_order import parse_strategy

    if not parse_strategy(task.queue_strategy).needs_scores:
        return None
    return start_job(db, "score", {"task_id": task.id, "round_ids": [round_id],
                                   "settings": params.get("settings", {})})


def _score(ctx: JobContext) -> dict:
    """Score generations for the annotation queue (``queue_order.score_queue``). params: task_id; round_ids
    (default: the task's open rounds); uncertainty (default: when the task's order uses it)."""
    from ..queue_order import parse_strategy, score_queue

    db, p = ctx.db, ctx.params
    task = _task(db, p["task_id"])
    uncertainty = p.get("uncertainty", parse_strategy(task.queue_strategy).weight("uncertainty") > 0)
    ctx.stage(f"scoring the queue of {task.name}" + (" (uncertainty: the served model)" if uncertainty else ""))
    result = score_queue(db, ctx.settings(), task, p.get("round_ids"), uncertainty,
                         progress=lambda done, total: ctx(done / max(total, 1)))
    ctx.log(f"queue scores: {result}", echo=False)
    return result


def unlabelled_generations(db: str, round_id: int) -> list[int]:
    """The round's generations with no feedback at all (a flagged one is not unlabelled)."""
    from ..db import Feedback, Generation

    with session_scope(db) as s:
        has = select(Feedback.generation_id).where(Feedback.generation_id == Generation.id).exists()
        return list(s.exec(select(Generation.id).where(Generation.round_id == round_id, ~has)
                           .order_by(Generation.id)))


def _feedback(ctx: JobContext) -> dict:
    """An AI provider on a round's unlabelled generations. params: round_id, provider (spec)."""
    from ..feedback import label_generations, make_provider

    db, p = ctx.db, ctx.params
    with session_scope(db) as s:
        rnd = s.get(Round, p["round_id"])
        if rnd is None:
            raise ValueError(f"no round {p['round_id']}")
    ctx.link(round_id=rnd.id)
    task = _task(db, rnd.task_id)
    if p.get("all"):  # every generation (the provider skips what it labelled before): the CLI's way
        with session_scope(db) as s:
            from ..db import Generation

            gen_ids = list(s.exec(select(Generation.id).where(Generation.round_id == rnd.id).order_by(Generation.id)))
    else:
        gen_ids = unlabelled_generations(db, rnd.id)
    provider = make_provider(p["provider"], ctx.settings(), task)
    ctx.stage(f"feedback from {provider.name} on {len(gen_ids)} unlabelled generations")
    report = label_generations(db, provider, task, gen_ids, progress=lambda done, total: ctx(done / max(total, 1)),
                               show_progress=False)
    from ..queue_order import parse_strategy, score_disagreement

    if parse_strategy(task.queue_strategy).weight("disagreement"):  # new AI labels: the queue's order changes
        score_disagreement(db, task, gen_ids)
    ctx.log(f"round {rnd.number}: {report}", echo=False)
    return {"round_id": rnd.id, "source": report.source, "stored": report.stored, "skipped": report.reasons(),
            "already": report.already}


def _train(ctx: JobContext) -> dict:
    """Train a model version. params: objective (default alt), config (its config's fields), and either
    ``items`` (PoolItem dicts) or a pool to build with the objective's data (``Objective.items``): task_id +
    any ``build_pool`` keyword (round_ids, k_per_category, policy, seed, ...);
    optional parent_version_id (default: the served version), objective, round_id, conditioning (a Format dict),
    settings (Settings overrides, e.g. models_dir). The rounds trained on are closed for annotation
    (``training``) and become ``trained`` (or ``failed``)."""
    from ..conditioning import Format
    from ..pool import PoolItem
    from ..training.objectives import get, make_config
    from ..versions import train_model_version

    db, job_id, params = ctx.db, ctx.job_id, ctx.params
    settings = ctx.settings()
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    objective = get(params.get("objective", "alt"))
    config = make_config(objective.name, **params.get("config", {}))
    rounds = train_rounds(params)
    if "items" in params:
        items = [PoolItem(**row) for row in params["items"]]
    elif "task_id" not in params:
        raise ValueError("a train job needs 'items' or a 'task_id' to build the pool from")
    else:
        from ..plan import TrainSpec

        items = objective.items(db, _task(db, params["task_id"]), **TrainSpec.from_params(params).pool.kwargs())
    parent_id = _version(db, params.get("parent_version_id")).id
    _set_rounds(db, rounds, RoundStatus.TRAINING)
    ctx.stage(f"training on {len(items)} examples")
    version_id = train_model_version(
        db, settings, items, config, parent_id, objective=objective.name,
        round_id=params.get("round_id") or (rounds[-1] if rounds else None), job_id=job_id,
        fmt=Format.from_dict(params.get("conditioning")), progress=ctx)
    ctx.link(version_id=version_id)
    _set_rounds(db, rounds, RoundStatus.TRAINED, only_from=(RoundStatus.TRAINING,))
    with session_scope(db) as session:
        metrics = session.get(ModelVersion, version_id).metrics
    return {"version_id": version_id, "metrics": metrics}


def _eval(ctx: JobContext) -> dict:
    """Evaluate a version on the task's probes. params: task_id, version_id (default served), provider, eval."""
    from ..evaluation import evaluate_version
    from ..feedback import make_provider
    from ..plan import EvalSpec

    db, spec = ctx.db, EvalSpec.from_params(ctx.params)
    settings = ctx.settings()
    task, version = _task(db, spec.task_id), _version(db, spec.version_id)
    provider = make_provider(spec.provider, settings, task) if spec.provider else None
    ctx.stage(f"evaluating {version.name}")
    metrics = evaluate_version(db, settings, version.id, task, provider, spec.eval, reference=spec.reference)
    return {"version_id": version.id, "metrics": metrics}


def _round(ctx: JobContext) -> dict:
    """A whole round (``rounds.run_round``). params: task_id, provider, round (RoundConfig fields, sampling and
    eval as dicts), objective (default alt), config (its config's fields)."""
    from ..plan import RoundSpec
    from ..rounds import STAGES, run_round
    from ..training.objectives import make_config

    db, p = ctx.db, ctx.params
    task = _task(db, p["task_id"])
    spec = RoundSpec.from_params(p)
    linked, current = [None], [None]

    def progress(round_id: int, stage: str, fraction: float) -> None:
        """The round's stage and overall progress on the job row (each of ``STAGES`` an equal share)."""
        if round_id != linked[0]:
            ctx.link(round_id=round_id)
            linked[0] = round_id
        at = (STAGES.index(stage) + max(0.0, min(fraction, 1.0))) / len(STAGES)
        if stage != current[0]:
            ctx.stage(stage, at)
            current[0] = stage
        else:
            ctx(at)

    report = run_round(db, ctx.settings(), task, spec.provider, spec.round, make_config(spec.objective, **spec.config),
                       log=ctx.log, progress=progress, train=train_version)
    ctx.link(round_id=report.round_id, version_id=report.version_id)
    return {"round_id": report.round_id, "version_id": report.version_id, "promoted": report.promoted,
            "decision": report.decision, "metrics": report.metrics}


JOB_KINDS.update({  # the queue's kinds: what create_job accepts and _run dispatches to
    "sample": _sample, "feedback": _feedback, "train": _train, "eval": _eval, "round": _round, "score": _score})
