"""One ALT round, end to end: sample → feedback → pool → train → evaluate → promote.

``run_round`` drives the stages in order through the same engine functions the
CLI and the app call one by one; each stage reads and writes the database, so
a failed round can be inspected and its stages rerun. ``Round.status`` follows
the stages (sampling → feedback → training → evaluating → done | failed) and
``Round.notes`` holds a JSON record of the round (wall time per stage, feedback
counts, pool size, the new version, the promotion decision).

Sampling: from the served model; a trained (non-base) model is conditioned on
the exemplar feedback f̂ — the task's exemplar category, or for a free-text
task one of the best-scored feedback texts of earlier rounds, drawn per prompt.
A base model never saw the conditioning format, so it samples unconditioned
(this is round 1 in the usual loop).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from sqlalchemy import func
from sqlmodel import select

from . import conditioning, guidance
from .db import ModelVersion, ObjectiveName, Placement, Prompt, Round, RoundStatus, Task, session_scope
from .evaluation import (
    EvalConfig,
    compare,
    eval_max_new_tokens,
    evaluate_version,
    exemplar_feedback,
    is_better,
    is_worse,
)
from .feedback import LabelReport, Provider, label_generations, make_provider
from .openai_backend import publish_version
from .plan import PROMOTE, RoundConfig, TrainSpec
from .pool import pool_summary
from .prompts import task_prompts
from .sampling import SamplingParams, load_sampler, sample_prompts
from .settings import Settings
from .versions import promote as promote_version
from .versions import served_version

__all__ = ["PROMOTE", "STAGES", "RoundConfig", "RoundReport", "Trainer", "run_round"]
Log = Callable[[str], None]
STAGES = ("sample", "feedback", "evaluate_parent", "pool", "train", "evaluate", "promote")  # in the order they run
StageProgress = Callable[[int, str, float], None]  # (round id, stage, fraction of that stage done)
# ``jobs.train_version``'s signature: (db, settings, spec, background, *, log, progress) -> (job id, version id);
# given by the caller, so a stage never imports the job queue
Trainer = Callable[..., tuple[int, int | None]]


@dataclass
class RoundReport:
    task: str
    number: int
    round_id: int
    parent_version_id: int
    version_id: int | None = None
    job_id: int | None = None
    generations: int = 0
    conditioning: str | None = None
    feedback: dict = field(default_factory=dict)  # stored, skipped reasons, already
    pool_size: int = 0
    pool_feedback: dict = field(default_factory=dict)  # feedback text -> examples in the pool
    pool_truncated: int = 0  # truncated generations the pool took
    metrics: dict = field(default_factory=dict)
    parent_metrics: dict = field(default_factory=dict)
    promoted: bool = False
    decision: str = ""
    wall_s: dict = field(default_factory=dict)  # stage -> seconds

    def summary(self) -> str:
        times = "  ".join(f"{k}={v:.1f}s" for k, v in self.wall_s.items())
        return (f"round {self.number}: {self.generations} generations, pool {self.pool_size}, "
                f"version {self.version_id} — {self.decision}\n  wall time: {times}")


def next_round(session, task: Task, version: ModelVersion) -> Round:
    """A new Round row (status ``sampling``) numbered after the task's last one."""
    last = session.exec(select(func.max(Round.number)).where(Round.task_id == task.id)).one() or 0
    rnd = Round(task_id=task.id, number=last + 1, model_version_id=version.id)
    session.add(rnd)
    session.flush()
    return rnd


def set_round_status(db: str, round_id: int, status: str, notes: dict | None = None) -> None:
    with session_scope(db) as s:
        rnd = s.get(Round, round_id)
        rnd.status = status
        if notes is not None:
            rnd.notes = json.dumps(notes, default=str)


def draw_exemplars(db: str, task: Task, n_prompts: int, seed: int) -> list[str]:
    """One exemplar feedback per prompt: the best category, or drawn from the best-scored free texts."""
    texts = exemplar_feedback(db, task)
    if not texts:
        raise ValueError(f"task {task.name!r} has no exemplar feedback to condition sampling on")
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(n_prompts)]


def sampling_conditioning(db: str, task: Task, version: ModelVersion, n_prompts: int, seed: int) -> list[str | None]:
    """Per prompt: None for a base model (it never saw feedback) or an unconditioned objective's version
    (sft, cut, cnr: format placement ``none``), else an exemplar."""
    if version.objective == ObjectiveName.BASE or conditioning.format_of(version, task).placement == Placement.NONE:
        return [None] * n_prompts
    return draw_exemplars(db, task, n_prompts, seed)


def start_round(db: str, task: Task, version: ModelVersion, split: str = "train",
                limit: int | None = None) -> tuple[Round, list[Prompt]]:
    """A new round sampled from ``version`` and the prompts it samples (clear error when there are none)."""
    with session_scope(db) as s:
        task_prompts(s, task, split, limit)  # none: a clear error before the round exists
        rnd = next_round(s, task, version)
        return rnd, task_prompts(s, task, split, limit, window=rnd.number - 1)


def sample_round(db: str, settings: Settings, task: Task, rnd: Round, version: ModelVersion, prompts: list[Prompt],
                 params: SamplingParams, feedback: str | None | list[str | None] = None,
                 backend: str | None = None, sampler=None, progress=None) -> list[int]:
    """The sampling stage of a round: ``params.n`` generations per prompt from ``version``, stored.

    ``sampler``: an already loaded backend for ``version`` (a round reuses it for the parent's evaluation).
    ``progress(done, total)``: per finished sequence. ``params.guidance`` > 0 guides the conditioned prompts away
    from ``params.negative`` (``guidance.py``).
    """
    sampler = sampler or load_sampler(settings, version, backend)
    conds = feedback if isinstance(feedback, list) else [feedback] * len(prompts)
    negs = guidance.negatives(db, task, params.negative, conds) if params.guidance else None
    return sample_prompts(db, sampler, prompts, params, conditioning_text=conds, negative_text=negs,
                          fmt=conditioning.format_of(version, task), round_id=rnd.id, model_version_id=version.id,
                          progress=progress)


def explore_conditioning(db: str, task: Task, spec: str, conds: list[str | None]) -> list[str | None]:
    """What the exploration samples are conditioned on: per prompt, ``spec``'s feedback (``guidance.negatives``'
    reading of it: worst | plain | a text) where the prompt is conditioned, else None."""
    return guidance.negatives(db, task, spec, conds)



def comparable(metrics: dict, cfg: EvalConfig, provider: Provider | None, fmt: conditioning.Format,
               max_new_tokens: int) -> bool:
    """Whether stored metrics came from the same evaluation (config, provider, format, length): reusable."""
    stored = (metrics or {}).get("eval") or {}
    wanted = {**cfg.key(), "max_new_tokens": max_new_tokens, "provider": provider.name if provider else None,
              "format": fmt.to_dict()}
    return all(stored.get(k) == v for k, v in wanted.items()) and "per_prompt" in (metrics or {})


def run_round(db: str, settings: Settings, task: Task, provider: str | Provider, config: RoundConfig | None = None,
              train_config=None, log: Log = print, progress: StageProgress | None = None, *,
              train: Trainer) -> RoundReport:
    """Run one full round for ``task`` with feedback from ``provider`` (a spec or a provider object).

    ``train``: runs the training stage's job (``jobs.train_version``). ``progress(round_id, stage, fraction)``:
    each stage of ``STAGES`` as it starts (0.0) and, for sampling (per sequence) and training, as it goes."""
    def report_progress(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(rnd.id, stage, fraction)

    from .training.config import AltTrainConfig

    cfg = config or RoundConfig()
    train_config = train_config or AltTrainConfig()
    provider = make_provider(provider, settings, task, db) if isinstance(provider, str) else provider
    with session_scope(db) as s:
        served = served_version(s)
    if served is None:
        raise ValueError("no served model version: run `alt init` first")
    rnd, prompts = start_round(db, task, served, "train", cfg.limit)
    report = RoundReport(task.name, rnd.number, rnd.id, served.id)
    t_start = time.perf_counter()

    @contextmanager
    def stage(name: str, status: str | None = None):
        if status:
            set_round_status(db, rnd.id, status)
        log(f"round {rnd.number}: {name} …")
        report_progress(name, 0.0)
        t0 = time.perf_counter()
        yield
        report.wall_s[name] = time.perf_counter() - t0

    try:
        with stage("sample"):
            params = replace(cfg.sampling, seed=cfg.sampling.seed + 1000 * rnd.number)
            conds = sampling_conditioning(db, task, served, len(prompts), params.seed)
            if conds[0] is None:  # a base model samples the plain prompt: nothing to guide or explore
                params = replace(params, guidance=0.0)
            sampler = load_sampler(settings, served)  # one load: sampling, then the parent's evaluation
            explore = min(int(cfg.explore * params.n), params.n - 1) if conds[0] is not None else 0  # floor
            gen_ids = sample_round(db, settings, task, rnd, served, prompts, replace(params, n=params.n - explore),
                                   conds, sampler=sampler,
                                   progress=lambda done, total: report_progress("sample", done / max(total, 1)))
            if explore:
                log(f"  exploration: {explore} of {params.n} samples per prompt under {cfg.explore_with!r}, unguided")
                gen_ids += sample_round(db, settings, task, rnd, served, prompts,
                                        replace(params, n=explore, guidance=0.0, seed=params.seed + 500),
                                        explore_conditioning(db, task, cfg.explore_with, conds), sampler=sampler)
            report.generations, report.conditioning = len(gen_ids), conds[0]
        with stage("feedback", RoundStatus.LABELLING):
            labels: LabelReport = label_generations(db, provider, task, gen_ids)
            report.feedback = dict(source=labels.source, stored=labels.stored, skipped=labels.reasons(),
                                   already=labels.already)
            log(f"  {labels}")
        with session_scope(db) as s:
            parent_metrics = s.get(ModelVersion, served.id).metrics
        max_new = eval_max_new_tokens(db, task, cfg.eval)
        fmt = conditioning.format_of(served, task)
        if not comparable(parent_metrics, cfg.eval, provider, fmt, max_new):  # once per parent: reused next round
            with stage("evaluate_parent"):  # first, so the label diagnostic's held-out set is the base's
                parent_metrics = evaluate_version(db, settings, served.id, task, provider, cfg.eval, backend=sampler,
                                                  log=log)
        del sampler
        if served.parent_id is not None:  # sampled and evaluated: free it (the root stays, the reference)
            from .modeling import release, resolve_model

            release(resolve_model(served.path, settings.cache_dir))
        report.parent_metrics = parent_metrics
        with stage("pool", RoundStatus.TRAINING):
            from .training.objectives import get

            objective = get(train_config.objective)
            pool = cfg.pool([rnd.id] if cfg.policy == "flush" else None, train_config.seed)
            items = objective.items(db, task, **pool.kwargs())
            summary = pool_summary(items)
            report.pool_size, report.pool_feedback = len(items), summary["per_feedback"]
            report.pool_truncated = summary["truncated"]
            log(f"  pool: {len(items)} examples ({summary['truncated']} truncated, policy {cfg.truncated}) "
                f"{report.pool_feedback}")
        with stage("train"):
            spec = TrainSpec(task_id=task.id, parent_version_id=served.id, objective=objective.name,
                             config=train_config.to_dict(), conditioning=objective.task_format(task).to_dict(),
                             pool=pool, round_id=rnd.id)
            report.job_id, report.version_id = train(db, settings, spec, cfg.background_training, log=log,
                                                     progress=lambda f: report_progress("train", f))
        if settings.backend == "openai":  # the new version must reach the sampling server before evaluation
            with session_scope(db) as s:
                published = publish_version(settings, s.get(ModelVersion, report.version_id))
            log(f"  sampling server: {published.message}")
        with stage("evaluate", RoundStatus.EVALUATING):
            report.metrics = evaluate_version(db, settings, report.version_id, task, provider, cfg.eval, log=log)
        with stage("promote"):
            metric = cfg.metric if cfg.metric != "auto" else \
                "mean_score" if report.metrics.get("mean_score") is not None else "exemplar_share"
            report.promoted = cfg.promote == "always" or \
                (cfg.promote == "if_better" and is_better(report.metrics, parent_metrics, metric)) or \
                (cfg.promote == "unless_worse" and not is_worse(report.metrics, parent_metrics, metric))
            diff = compare(report.metrics, parent_metrics, metric)
            a, b = report.metrics.get(metric), parent_metrics.get(metric)
            detail = f"; difference {diff}" if diff is not None else ""
            report.decision = (f"{'promoted' if report.promoted else 'not promoted'} "
                               f"(--promote {cfg.promote}; {metric} {_fmt(a)}, parent {_fmt(b)}{detail})")
            if report.promoted:
                with session_scope(db) as s:
                    promote_version(s, report.version_id)
    except BaseException as exc:
        report.wall_s["total"] = time.perf_counter() - t_start
        set_round_status(db, rnd.id, RoundStatus.FAILED, {**_notes(report), "error": f"{type(exc).__name__}: {exc}"})
        raise
    report.wall_s["total"] = time.perf_counter() - t_start
    set_round_status(db, rnd.id, RoundStatus.CLOSED if report.promoted else RoundStatus.TRAINED, _notes(report))
    with session_scope(db) as s:
        version = s.get(ModelVersion, report.version_id)
        version.metrics = {**version.metrics, "round": {"number": rnd.number, "wall_s": report.wall_s}}
    log(report.summary())
    return report


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _notes(report: RoundReport) -> dict:
    return {k: v for k, v in asdict(report).items() if k not in ("metrics", "parent_metrics")}
