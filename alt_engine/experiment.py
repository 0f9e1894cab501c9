"""``alt experiment``: R rounds from the same start, recorded as JSON and a self-contained HTML report.

Each objective gets its own database under the output folder, built the same way (task, prompt set,
base version), so every arm starts from the same model, prompts and seeds and differs only in how it
trains. Rounds go through ``rounds.run_round`` — the very code `alt round` runs — and the record keeps,
per round and version: shares and the exemplar share with 95% CIs, the steerability gap, the
label-learned diagnostic, mean reward, perplexity, dist-n, length, % truncated, the pool and the wall
time per stage. Round 0 is the untrained base evaluated as the objective evaluates its versions: in the
same conditioning format (the plain prompt for SFT, CUT and CnR) and, for CnR, after the same revision passes.

An arm is an objective, or ``objective@task`` for an arm on another task over the same prompt set (its demo
provider; e.g. ``alt@concise_score``: ``rule:free_text``'s information as categories). On a free-text task
fed by ``rule:free_text`` every version is evaluated under the rule's fixed texts, and after the last round
the ALT arm's last version and the base are sampled under the other texts too: per-attribute steering gaps and
the held-out combination (``round.holdout``, kept out of the pool), see ``steering.py``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .db import ObjectiveName, Placement, init_db, session_scope
from .experiment_report import PAIRED, comparisons, render_report, summary_rows
from .settings import Settings

__all__ = ["PAIRED", "ExperimentConfig", "base_as_objective", "comparisons", "merge_records", "render_report",
           "round_config", "run_arm", "run_experiment", "steer_by_text", "summary_rows"]

Log = Callable[[str], None]
SERIES = ("exemplar_share", "mean_score", "score3_share", "steerability_gap", "perplexity", "dist1", "dist2", "dist3",
          "mean_words", "mean_length", "pct_truncated")


@dataclass
class ExperimentConfig:
    """What to run. ``round`` and ``train`` are RoundConfig / training-config keyword overrides."""

    task: str = "concise"
    provider: str | None = None  # default: the demo task's own provider
    prompts: str | None = None  # a prompt file; default: the demo task's shipped set
    rounds: int = 3
    objectives: list[str] = field(default_factory=lambda: ["alt"])  # arms: objective or objective@task
    out: str = "runs/experiment"
    round: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    objective_policy: bool = True  # each arm's pool policy is its objective's own (Quark accumulates), not round's
    parallel: int = 1  # arms run at once, each in its own process


def _prepare(db: str, settings: Settings, cfg: ExperimentConfig, log: Log):
    from .modeling import resolve_model
    from .prompts import import_prompts
    from .tasks import DEMOS, builtin_prompt_file, get_or_create_task
    from .versions import ensure_base_version

    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, cfg.task)
    path = cfg.prompts or str(builtin_prompt_file(cfg.task))
    report = import_prompts(db, path, task=cfg.task)
    log(f"  prompts: {report}")
    with session_scope(db) as s:
        ensure_base_version(s, settings.model, resolve_model(settings.model, settings.cache_dir))
    provider = cfg.provider or (DEMOS[cfg.task].provider if cfg.task in DEMOS else None)
    if not provider:
        raise ValueError(f"task {cfg.task!r} is not a demo task: give --provider")
    return task, provider


def _train_config(objective: str, overrides: dict):
    from .training.config import AltTrainConfig

    if objective != ObjectiveName.ALT:
        try:
            from .training.objectives import make_config  # the objectives registry (issue 11)
        except ImportError:
            raise ValueError(f"objective {objective!r} is not available in this version (only 'alt')") from None
        return make_config(objective, **overrides)
    return AltTrainConfig(**overrides)


def run_arm(objective: str, cfg: ExperimentConfig, settings: Settings, log: Log = print,
            update: Callable[[dict], None] = lambda arm: None) -> dict:
    """One arm's rounds in its own database under ``cfg.out``; ``update(arm)`` after every round.

    ``objective``: an objective's name, or ``objective@task`` (that task, over the same prompts, with its demo
    provider)."""
    from .jobs import train_version
    from .rounds import run_round

    name, (objective, _, arm_task) = objective, objective.partition("@")
    if arm_task and arm_task != cfg.task:
        cfg = dataclasses.replace(cfg, task=arm_task, provider=None,
                                  prompts=cfg.prompts or str(_builtin_prompts(cfg.task)))
    out = Path(cfg.out)
    db = str(out / f"{name}.db")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    arm_settings = dataclasses.replace(settings, db=db, models_dir=str(out / f"models-{name}"))
    log(f"== {name}: {cfg.rounds} round(s) on task {cfg.task!r} → {db}")
    task, provider = _prepare(db, arm_settings, cfg, log)
    train_config = _train_config(objective, dict(cfg.train))
    arm_round = round_config(cfg)
    if cfg.objective_policy:
        from .training.objectives import get

        arm_round = dataclasses.replace(arm_round, policy=get(objective).pool_policy)
    from .guidance import FEEDBACK_FREE

    if objective in FEEDBACK_FREE and (arm_round.sampling.guidance or arm_round.eval.guidance):
        log(f"  {objective} reads no feedback: sampled and evaluated without guidance")
        arm_round = dataclasses.replace(arm_round, sampling=dataclasses.replace(arm_round.sampling, guidance=0.0),
                                        eval=dataclasses.replace(arm_round.eval, guidance=0.0))
    rule = _free_text_rule(provider, arm_settings, task, db)
    if rule is not None:  # every version under the rule's fixed texts: best vs its first attribute flipped
        from .steering import eval_pairs

        arm_round = dataclasses.replace(arm_round, eval=dataclasses.replace(
            arm_round.eval, conditions=eval_pairs(rule, arm_round.holdout)[0]))
    arm: dict = {"provider": provider, "task": cfg.task, "objective": objective,
                 "train_config": train_config.to_dict(), "policy": arm_round.policy, "rounds": []}
    t0 = time.perf_counter()
    for _ in range(cfg.rounds):
        report = run_round(db, arm_settings, task, provider, arm_round, train_config, log=log, train=train_version)
        if not arm["rounds"]:
            arm["rounds"].append({"round": 0, "version": "base", "metrics": report.parent_metrics})
        arm["rounds"].append({
            "round": report.number, "version_id": report.version_id, "promoted": report.promoted,
            "decision": report.decision, "generations": report.generations, "pool_size": report.pool_size,
            "pool_truncated": report.pool_truncated, "pool_feedback": report.pool_feedback,
            "feedback": report.feedback, "wall_s": report.wall_s, "metrics": report.metrics})
        provider = report.feedback.get("source") or provider  # resolved (e.g. auto thresholds) from now on
        arm["provider"] = provider
        arm["wall_s"] = time.perf_counter() - t0
        update(arm)
    # last, so that the rounds' label diagnostics all draw on the base's first evaluation
    if base := base_as_objective(objective, db, arm_settings, task, provider, arm_round.eval, log):
        arm["rounds"][0].update(metrics=base, evaluated_as=objective)
        update(arm)
    if rule is not None and arm["rounds"][-1].get("version_id"):
        arm["steering"] = steer_by_text(db, arm_settings, task, rule, arm, arm_round, log)
        update(arm)
    return arm


def _builtin_prompts(task: str):
    from .tasks import builtin_prompt_file

    return builtin_prompt_file(task)


def _free_text_rule(provider: str, settings: Settings, task, db: str):
    """The ``rule:free_text`` provider of a free-text task (no categories), else None."""
    from .feedback import make_provider
    from .feedback.free_text import FreeTextRule

    if task.categories or not provider.startswith("rule:free_text"):
        return None
    rule = make_provider(provider, settings, task, db)
    return rule if isinstance(rule, FreeTextRule) else None


def steer_by_text(db: str, settings: Settings, task, rule, arm: dict, round_cfg, log: Log = print) -> dict | None:
    """The last version and the base under the rule's other texts (``steering.py``); None for a version that
    reads no feedback (SFT)."""
    from sqlmodel import select

    from .conditioning import format_of
    from .db import ModelVersion
    from .evaluation import evaluate_version
    from .steering import evaluate_texts, gaps, summary_lines

    with session_scope(db) as s:
        last = s.get(ModelVersion, arm["rounds"][-1]["version_id"])
        base = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_(None)).order_by(ModelVersion.id)).first()
        if format_of(last, task).placement == Placement.NONE:
            return None
        last_id, base_id = last.id, base.id

    def evaluate(version_id: int):
        return lambda conds: evaluate_version(db, settings, version_id, task, rule,
                                              dataclasses.replace(round_cfg.eval, conditions=conds), log=log)

    log(f"  steering by text: version {last_id} and the base under {rule.name}'s texts")
    mine = evaluate_texts(evaluate(last_id), rule, round_cfg.holdout, done=arm["rounds"][-1]["metrics"])
    untrained = evaluate_texts(evaluate(base_id), rule, round_cfg.holdout, done=arm["rounds"][0]["metrics"])
    result = gaps(rule, mine, untrained, round_cfg.holdout)
    for line in summary_lines(result):
        log(line)
    return result


def base_as_objective(objective: str, db: str, settings: Settings, task, provider: str, eval_config,
                      log: Log = print) -> dict | None:
    """The untrained base evaluated as ``objective`` uses a model: in its conditioning format (the plain prompt
    for SFT, CUT and CnR, the attribute string for SteerLM) and, for CnR, after the same revision passes.

    Round 0 is then the same procedure without the training, so "round − base" is the training's effect. None
    when that is how a round evaluates the base anyway (ALT; Quark, whose control tokens the base does not
    have yet: the feedback text as written).
    """
    from sqlmodel import select

    from .conditioning import format_of
    from .db import ModelVersion
    from .evaluation import evaluate_version
    from .feedback import make_provider
    from .training.objectives import get

    fmt = get(objective).task_format(task)
    revise = objective == ObjectiveName.CNR and eval_config.revision_passes > 0
    with session_scope(db) as s:
        base = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_(None)).order_by(ModelVersion.id)).first()
    if fmt.placement == Placement.TOKENS:  # Quark's control tokens exist only once trained: the base reads the text
        fmt = format_of(base, task)
    if fmt.to_dict() == format_of(base, task).to_dict() and not revise:
        return None
    log(f"  base as {objective} evaluates: format {fmt.placement}{', revised' if revise else ''}")
    return evaluate_version(db, settings, base.id, task, make_provider(provider, settings, task, db), eval_config,
                            fmt=fmt, revise=revise, log=log)


def round_config(cfg: ExperimentConfig):
    """The experiment's RoundConfig (its ``round`` overrides over the defaults)."""
    from .evaluation import EvalConfig
    from .rounds import RoundConfig
    from .sampling import SamplingParams

    rc = dict(cfg.round)
    return RoundConfig(sampling=SamplingParams(**rc.pop("sampling", {})), eval=EvalConfig(**rc.pop("eval", {})),
                       **rc)


def run_experiment(cfg: ExperimentConfig, settings: Settings, log: Log = print) -> dict:
    """Run every objective's rounds; writes ``record.json`` and ``report.html`` under ``cfg.out``.

    With ``cfg.parallel`` > 1 the arms run that many at a time, each in its own process with its share of
    the threads (on 2 cores two 1-thread arms sample 1.6× as fast in all as one 2-thread arm after another);
    an arm's log then goes to ``OBJECTIVE.log`` next to its database.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"config": dataclasses.asdict(cfg), "round_config": dataclasses.asdict(round_config(cfg)),
                    "model": settings.model, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": {}}
    if cfg.parallel > 1 and len(cfg.objectives) > 1:
        failed = _run_parallel(cfg, settings, record, log)
    else:
        failed = []
        for objective in cfg.objectives:
            def update(arm: dict, objective: str = objective) -> None:
                record["arms"][objective] = arm
                _write(record, out)

            run_arm(objective, cfg, settings, log, update)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(record, out)
    log(f"record: {out / 'record.json'}\nreport: {out / 'report.html'}")
    if failed:
        raise RuntimeError(f"objective(s) failed: {', '.join(failed)} (see their logs under {out})")
    return record


def _arm_process(objective: str, cfg: ExperimentConfig, settings: Settings) -> dict:
    """One arm in a worker process: log and per-round progress to files next to its database."""
    from .modeling import set_threads

    set_threads(settings.threads)
    out = Path(cfg.out)
    with (out / f"{objective}.log").open("w") as f:
        def log(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        def update(arm: dict) -> None:
            (out / f"{objective}.json").write_text(json.dumps(arm, default=str))

        return run_arm(objective, cfg, settings, log, update)


def _run_parallel(cfg: ExperimentConfig, settings: Settings, record: dict, log: Log) -> list[str]:
    """The arms ``cfg.parallel`` at a time (spawned processes: torch and fork do not mix); the failed ones."""
    import multiprocessing as mp
    import os
    import traceback
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = Path(cfg.out)
    threads = max(1, (settings.threads or os.cpu_count() or 1) // cfg.parallel)
    arm_settings = dataclasses.replace(settings, threads=threads)
    arms, failed = {}, []
    with ProcessPoolExecutor(min(cfg.parallel, len(cfg.objectives)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_arm_process, o, cfg, arm_settings): o for o in cfg.objectives}
        for o in cfg.objectives:
            log(f"== {o}: {cfg.rounds} round(s), {threads} thread(s), log {out / f'{o}.log'}")
        for future in as_completed(futures):
            o = futures[future]
            try:
                arms[o] = future.result()
                log(f"== {o}: done in {arms[o]['wall_s']:.0f} s")
            except Exception as exc:  # the others go on; what the arm reached is kept
                progress = out / f"{o}.json"
                arms[o] = json.loads(progress.read_text()) if progress.exists() else {"rounds": []}
                arms[o]["error"] = "".join(traceback.format_exception_only(exc)).strip()
                failed.append(o)
                log(f"== {o}: failed: {arms[o]['error']}")
            record["arms"] = {k: arms[k] for k in cfg.objectives if k in arms}
            _write(record, out)
    return failed


def _write(record: dict, out: Path) -> None:
    record["comparisons"] = comparisons(record)
    (out / "record.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "report.html").write_text(render_report(record))


def merge_records(folders: list[str], out: str) -> dict:
    """One record and report from several experiment folders (e.g. arms run on several machines), writing
    ``record.json`` and ``report.html`` under ``out``. Per-prompt values a record lacks (made before they
    were kept) are read back from the arm's database, where every evaluated version stores them."""
    from sqlmodel import select

    from .db import ModelVersion

    merged: dict | None = None
    for folder in folders:
        path = Path(folder) / "record.json"
        if not path.exists():
            raise ValueError(f"{folder}: no record.json (not an `alt experiment` folder)")
        record = json.loads(path.read_text())
        for objective, arm in record["arms"].items():
            db = Path(folder) / f"{objective}.db"
            missing = [r for r in arm.get("rounds") or [] if "per_prompt" not in r["metrics"]]
            if missing and db.exists():
                with session_scope(str(db)) as s:
                    versions = {v.id: v for v in s.exec(select(ModelVersion))}
                first = next((r for r in arm["rounds"] if r.get("version_id")), None)
                base = versions.get(first["version_id"]).parent_id if first else None
                for r in missing:
                    v = versions.get(r.get("version_id") or base)
                    if v is not None and (v.metrics or {}).get("per_prompt"):
                        r["metrics"]["per_prompt"] = v.metrics["per_prompt"]
        if merged is None:
            merged = {**record, "arms": {}, "merged_from": []}
        clash = set(record["arms"]) & set(merged["arms"])
        if clash:
            raise ValueError(f"{folder}: objective(s) {', '.join(sorted(clash))} already merged from another folder")
        merged["arms"].update(record["arms"])
        merged["merged_from"].append({"folder": str(folder), "config": record["config"],
                                      "started": record.get("started"), "finished": record.get("finished")})
    if merged is None:
        raise ValueError("nothing to merge: give at least one folder")
    merged["config"] = {**merged["config"], "objectives": list(merged["arms"])}
    Path(out).mkdir(parents=True, exist_ok=True)
    _write(merged, Path(out))
    return merged
