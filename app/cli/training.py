"""``alt feedback | train | eval | round``: thin commands over the engine (feedback, pool, jobs, evaluation, rounds).

Training options (``--learning_rate``, ``--epochs``, ``--lora`` ...) come from the objectives' configs
(``TrainingArguments`` subclasses, ``alt_engine.training.objectives``) through
``transformers.HfArgumentParser``; ``--objective`` picks the config, and an option of another objective
is refused. Our own options use dashes (``--k-per-category``) so the two never collide.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from sqlalchemy import func
from sqlmodel import select

from alt_engine.db import Generation, ModelVersion, ObjectiveName, Round, Task, init_db, session_scope
from alt_engine.guidance import EVAL_GUIDANCE, EXPLORE, ROUND_GUIDANCE
from alt_engine.pool import POLICIES, TRUNCATION

from . import CLIError, command_help, settings_from

PROMOTE_CHOICES = ("always", "if-better", "unless-worse", "never")


def _train_options() -> list[argparse.ArgumentParser]:
    from transformers import HfArgumentParser

    from alt_engine.training.objectives import options_dataclass

    return [HfArgumentParser(options_dataclass(), add_help=False)]


def _objective_option(p: argparse.ArgumentParser, full: bool) -> None:
    """``--objective``; its choices (the registry, which imports torch) only when this command runs."""
    choices = None
    if full:
        from alt_engine.training.objectives import names

        choices = names()
    p.add_argument("--objective", choices=choices, default="alt",
                   help="training objective; its config's options apply (see README, Objectives)")


def _pool_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k-per-category", type=int, default=None, help="pool: generations per category per prompt "
                                                                    "(default 2)")
    p.add_argument("--policy", choices=POLICIES, default=None,
                   help="pool: latest round (flush, ALT) or all (accumulate, Quark); default: the objective's")
    p.add_argument("--max-per-prompt", type=int, default=None,
                   help="pool: cap per prompt (default 2: two of different categories where the samples allow, so "
                        "every prompt contrasts, at half the training cost of n = 4; 0 = no cap)")
    p.add_argument("--truncated", choices=TRUNCATION, default=None,
                   help="pool: truncated generations (no EOS) — exclude them, use them last, or as the worst category "
                        "(default: exclude; a demo task's own, e.g. worst for concise)")


def _eval_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}n", dest="eval_n", type=int, default=4,
                   help="generations per probe prompt and conditioning (≥ 4 to resolve a 15-point change)")
    p.add_argument(f"--{prefix}max-new-tokens", dest="eval_max_new_tokens", type=int, default=None,
                   help="default: what the task's latest round sampled with")
    p.add_argument(f"--{prefix}seed", dest="eval_seed", type=int, default=0, help="evaluation sampling seed")
    p.add_argument(f"--{prefix}limit", dest="eval_limit", type=int, default=None,
                   help="at most this many probe prompts (default: all)")
    p.add_argument(f"--{prefix}no-steer", dest="eval_steer", action="store_false",
                   help="skip the worst-feedback samples (no steerability gap)")
    p.add_argument(f"--{prefix}revision-passes", dest="eval_revision_passes", type=int, default=0,
                   help="Critique-and-Revise versions: score each answer after this many revision passes (0 = the "
                        "first answer)")
    _guidance_options(p, prefix, "eval_", EVAL_GUIDANCE, "evaluation")


def _guidance_options(p: argparse.ArgumentParser, prefix: str, dest: str, default: float, what: str) -> None:
    p.add_argument(f"--{prefix}guidance", dest=f"{dest}guidance", type=float, default=None, metavar="GAMMA",
                   help=f"{what}: feedback guidance γ, logits l(f) + γ(l(f) − l(f⁻)) (0 = plain sampling; default "
                        f"{default:g} for objectives that read feedback, 0 for sft/cut/cnr; docs/guidance.md)")
    p.add_argument(f"--{prefix}negative", dest=f"{dest}negative", default="worst", metavar="F",
                   help=f"{what}: f⁻ of guidance: worst (the worst feedback), plain (no feedback) or any text")


def register(sub, common, selected: str | None = None) -> None:
    p = sub.add_parser("feedback", parents=[common], help=command_help("feedback"))
    p.add_argument("--provider", required=True, help="rule:<name>[:arg] | reward:<path or module:fn> | llm:categorical "
                                                     "| llm:free_text")
    p.add_argument("--round", type=int, default=None, help="round number (default: the task's latest)")
    p.add_argument("--task", default="default")
    p.add_argument("--background", action="store_true", help="queue a job, print its id and return")
    p.set_defaults(func=cmd_feedback)

    # the objectives' options import transformers: built only when train or round is the command
    full = selected in (None, "train", "round", "experiment")
    train_parents = [common, *_train_options()] if full else [common]
    p = sub.add_parser("train", parents=train_parents, help=command_help("train"),
                       description="Training options are the objective's config fields (e.g. --learning_rate 1e-5 "
                                   "--lora); TrainingArguments' own options work too.")
    _objective_option(p, full)
    p.add_argument("--task", default="default")
    p.add_argument("--round", type=int, action="append", default=None,
                   help="round number(s) whose generations form the pool (default: per --policy)")
    _pool_options(p)
    p.add_argument("--background", action="store_true", help="start a job, print its id and return")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[common], help=command_help("eval"))
    p.add_argument("--version", type=int, default=None, help="model version id (default: the served one)")
    p.add_argument("--provider", default=None, help="feedback provider judging the generations (spec as for feedback)")
    p.add_argument("--task", default="default")
    p.add_argument("--reference", default=None, help="reference model for perplexity (default: the chain's base)")
    p.add_argument("--condition", action="append", default=None, metavar="TEXT",
                   help="feedback text to condition on instead of the best category; give it twice for a "
                        "steerability gap between two texts")
    p.add_argument("--unconditioned", action="store_true", help="evaluate on the plain prompt (no feedback)")
    _mask_option(p)
    _eval_options(p)
    p.add_argument("--background", action="store_true", help="queue a job, print its id and return")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("round", parents=train_parents,
                       help=command_help("round"),
                       description="Training options are the objective's config fields (e.g. --learning_rate 1e-5 "
                                   "--lora).")
    _objective_option(p, full)
    p.add_argument("--provider", default=None, help="feedback provider spec (as for `alt feedback`; default for a "
                                                    "demo task: its own, e.g. rule:concise:auto for concise)")
    p.add_argument("--task", default="default")
    p.add_argument("--rounds", type=int, default=1, help="how many rounds to run one after another")
    _round_options(p)
    p.add_argument("--background", action="store_true", help="queue the round job(s), print the ids and return")
    p.set_defaults(func=cmd_round)

    p = sub.add_parser("experiment", parents=train_parents, help=command_help("experiment"),
                       description="Each objective runs in its own database under --out, from the same base model, "
                                   "prompts and seeds. Training options are the config's fields.")
    p.add_argument("--task", default="concise", help="a demo task (concise, offensiveness) or any task with --prompts")
    p.add_argument("--provider", default=None, help="feedback provider (default: the demo task's)")
    p.add_argument("--prompts", default=None, help="prompt file (default: the demo task's shipped set)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--objective", action="append", default=None,
                   help="objective(s) to compare (default: alt); OBJECTIVE@TASK: an arm on another task over the same "
                        "prompts, e.g. alt@concise_score")
    p.add_argument("--out", default="runs/experiment", help="output folder (databases, models, record, report)")
    p.add_argument("--parallel", type=int, default=1,
                   help="objectives run at once, each in its own process with its share of the threads")
    p.add_argument("--merge", action="append", default=None, metavar="FOLDER",
                   help="run nothing: merge earlier experiments' folders into one record and report under --out")
    _round_options(p)
    p.set_defaults(func=cmd_experiment)


def _mask_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mask-control-tokens", action="store_true",
                   help="Quark: mask every control token's logit while sampling (the conditioning token's siblings)")


def _round_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--limit", type=int, default=None, help="train prompts sampled per round (default 32); "
                                                           "successive rounds take the next ones (0 = all every round)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: SamplingParams' (enough that few "
                                                                      "answers of a small chat model truncate)")
    p.add_argument("--sample-batch-size", type=int, default=0, help="sequences decoded together (0: measured)")
    p.add_argument("--sample-seed", type=int, default=0)
    _mask_option(p)
    _guidance_options(p, "", "", ROUND_GUIDANCE, "round sampling under the exemplar")
    p.add_argument("--explore", type=float, default=EXPLORE,
                   help="round >= 2: share of each prompt's samples drawn unguided under --explore-with instead of "
                        "the exemplar (keeps both ends of the feedback scale in the pool)")
    p.add_argument("--explore-with", default="worst", metavar="F",
                   help="what exploration samples are conditioned on: worst | plain | a feedback text")
    p.add_argument("--promote", choices=PROMOTE_CHOICES, default=None,
                   help="if-better: the new version's 95%% CI beats the parent's; unless-worse: promote unless it is "
                        "worse beyond chance (default; the loop goes on from the newest model, as in the paper)")
    p.add_argument("--metric", default=None, help="metric for --promote (auto: mean_score for scored feedback, "
                                                    "else exemplar_share; perplexity: lower is better, dist2 ...)")
    _pool_options(p)
    p.add_argument("--holdout", default=None, metavar="ATTR=LEVEL,...",
                   help="keep generations measuring to this combination of rule:free_text's attribute levels out of "
                        "the pool, e.g. length=short,subject=off (a combination never seen in training)")
    _eval_options(p, prefix="eval-")


# --------------------------------------------------------------------------- helpers


def _task(session, name: str) -> Task:
    from alt_engine.tasks import get_or_create_task

    return get_or_create_task(session, name)


def _round(session, task: Task, number: int | None) -> Round:
    if number is None:
        number = session.exec(select(func.max(Round.number)).where(Round.task_id == task.id)).one()
        if number is None:
            raise CLIError(f"task {task.name!r} has no rounds yet: run `alt sample` or `alt round` first")
    rnd = session.exec(select(Round).where(Round.task_id == task.id, Round.number == number)).first()
    if rnd is None:
        raise CLIError(f"task {task.name!r} has no round {number}")
    return rnd


def _train_config(args, objective: str | None = None):
    from alt_engine.training.objectives import config_from_options

    try:
        return config_from_options(objective or getattr(args, "objective", None) or "alt", vars(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _experiment_options(args) -> dict:
    """The training options given (every objective of the comparison takes those its config has)."""
    from alt_engine.training.objectives import changed_options

    return json.loads(json.dumps(changed_options(vars(args)), default=str))


def _policy(args) -> str:
    from alt_engine.training.objectives import get

    objective = getattr(args, "objective", None)
    return args.policy or get(objective if isinstance(objective, str) else "alt").pool_policy


def _guidance(args, name: str, objective: str, default: float) -> float:
    """γ for ``objective`` (``guidance.resolve``): a feedback-free objective refuses one given explicitly."""
    from alt_engine.guidance import resolve

    try:
        return resolve(objective, getattr(args, name, None), default)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _eval_config(args, objective: str = "alt"):
    from alt_engine.evaluation import EvalConfig

    return EvalConfig(n=args.eval_n, max_new_tokens=args.eval_max_new_tokens, seed=args.eval_seed,
                      limit=args.eval_limit, steer=args.eval_steer, conditions=getattr(args, "condition", None),
                      conditioned=not getattr(args, "unconditioned", False),
                      mask_control_tokens=getattr(args, "mask_control_tokens", False),
                      revision_passes=args.eval_revision_passes,
                      guidance=_guidance(args, "eval_guidance", objective, EVAL_GUIDANCE),
                      negative=args.eval_negative)


def _served(session) -> ModelVersion:
    from alt_engine.versions import served_version

    served = served_version(session)
    if served is None:
        raise CLIError("no served model version: run `alt init` first")
    return served


def _print_metrics(name: str, metrics: dict) -> None:
    from alt_engine.evaluation import summarize

    ev = metrics.get("eval") or {}
    print(f"{name}: conditioned on {ev.get('conditioning')!r}, {ev.get('probe_prompts')} probe prompts × "
          f"{ev.get('n')}, provider {ev.get('provider')}"
          + (f", guidance γ={ev['guidance']:g} away from {ev.get('negative')!r}" if ev.get("guidance") else ""))
    if metrics.get("category_share"):
        print("  categories: " + ", ".join(f"{c} {s:.0%}" for c, s in metrics["category_share"].items()))
    print(summarize(metrics))


# --------------------------------------------------------------------------- commands


def cmd_feedback(args) -> None:
    from . import run_job

    settings = settings_from(args)
    init_db(settings.db)
    with session_scope(settings.db) as s:
        task = _task(s, args.task)
        rnd = _round(s, task, args.round)
        n = len(s.exec(select(Generation.id).where(Generation.round_id == rnd.id)).all())
    if not n:
        raise CLIError(f"round {rnd.number} of task {task.name!r} has no generations")
    job = run_job(settings, "feedback", dict(round_id=rnd.id, provider=args.provider, all=True), args.background)
    if args.background:
        print(f"started feedback job {job}: follow it with `alt jobs list`")
        return
    r = job.result
    why = "; ".join(f"{n}× {reason}" for reason, n in sorted(r["skipped"].items(), key=lambda x: -x[1]))
    print(f"round {rnd.number}: {r['source']}: stored {r['stored']}, skipped {sum(r['skipped'].values())}"
          f"{' (' + why + ')' if why else ''}, already labelled {r['already']}")


def cmd_train(args) -> int:
    settings = settings_from(args)
    init_db(settings.db)
    from alt_engine.modeling import set_threads

    set_threads(settings.threads)
    config = _train_config(args)
    with session_scope(settings.db) as s:
        task = _task(s, args.task)
        round_ids = [_round(s, task, n).id for n in args.round] if args.round else None
        if round_ids is None and _policy(args) == "flush":
            _round(s, task, None)  # no round yet: the CLI's message
        parent = _served(s)
    from alt_engine.jobs import train_version
    from alt_engine.plan import plan_train

    try:
        spec = plan_train(settings.db, task, config, round_ids=round_ids, k_per_category=args.k_per_category,
                          policy=args.policy, max_per_prompt=args.max_per_prompt, truncated=args.truncated,
                          parent_version_id=parent.id, check=False)  # train_version checks the pool
        job_id, version_id = train_version(settings.db, settings, spec, background=args.background,
                                           wait=not args.background)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.background:
        print(f"started training job {job_id}: follow it with `alt status` / the admin tab")
        return 0
    with session_scope(settings.db) as s:
        version = s.get(ModelVersion, version_id)
    print(f"trained {version.name} (id {version.id}) from {parent.name} at {version.path}; "
          f"not served yet: `alt eval --version {version.id}` then `alt models promote {version.id}`")
    return 0


def cmd_eval(args) -> None:
    from . import run_job

    settings = settings_from(args)
    init_db(settings.db)
    with session_scope(settings.db) as s:
        task = _task(s, args.task)
        version = s.get(ModelVersion, args.version) if args.version is not None else _served(s)
        if version is None:
            raise CLIError(f"no model version {args.version}")
    from alt_engine.plan import plan_eval

    spec = plan_eval(settings.db, task, version_id=version.id, provider=args.provider,
                     eval=_eval_config(args, _objective_of(version)), reference=args.reference)
    job = run_job(settings, spec.kind, spec.params(), args.background)
    if args.background:
        print(f"started evaluation job {job}: follow it with `alt jobs list`")
        return
    metrics = job.result["metrics"]
    _print_metrics(f"{version.name} (id {version.id})", metrics)
    if args.verbose:
        print(json.dumps(metrics, indent=2))


def _objective_of(version: ModelVersion) -> str:
    """The objective whose format a version reads (the base reads feedback as the task's format places it)."""
    return ObjectiveName.ALT.value if version.objective == ObjectiveName.BASE else version.objective


def _round_choices(args, objective: str | None = None) -> dict:
    """The round options given (None where left to the planner's default); γ resolved for ``objective``."""
    objective = objective or (args.objective if isinstance(getattr(args, "objective", None), str) else "alt")
    return dict(n=args.n, limit=args.limit, temperature=args.temperature, top_p=args.top_p,
                max_new_tokens=args.max_new_tokens, sample_seed=args.sample_seed,
                sample_batch_size=args.sample_batch_size, mask_control_tokens=args.mask_control_tokens,
                guidance=_guidance(args, "guidance", objective, ROUND_GUIDANCE), negative=args.negative,
                explore=args.explore, explore_with=args.explore_with,
                k_per_category=args.k_per_category, policy=args.policy, max_per_prompt=args.max_per_prompt,
                truncated=args.truncated, holdout=args.holdout, promote=args.promote, metric=args.metric,
                eval=_eval_config(args, objective))


def _experiment_round(args):
    from alt_engine.plan import round_config

    try:
        return round_config(args.task, **_round_choices(args, _experiment_objective(args)))
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _experiment_objective(args) -> str:
    """The objective whose guidance defaults an experiment takes: the first that reads feedback (a feedback-free
    arm drops guidance, ``experiment.run_arm``); only feedback-free arms: the first (explicit guidance refused)."""
    from alt_engine.guidance import FEEDBACK_FREE

    objectives = args.objective or ["alt"]
    return next((o for o in objectives if o not in FEEDBACK_FREE), objectives[0])


def cmd_experiment(args) -> None:
    from alt_engine.experiment import ExperimentConfig, merge_records, run_experiment

    if args.merge:
        try:
            record = merge_records(args.merge, args.out)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        print(f"merged {', '.join(record['arms'])} → {args.out}/record.json, {args.out}/report.html")
        return
    settings = settings_from(args)
    if args.rounds < 1:
        raise CLIError("--rounds must be >= 1")
    if args.parallel < 1:
        raise CLIError("--parallel must be >= 1")
    from alt_engine.modeling import set_threads

    set_threads(settings.threads)
    cfg = ExperimentConfig(task=args.task, provider=args.provider, prompts=args.prompts, rounds=args.rounds,
                           objectives=args.objective or ["alt"], out=args.out,
                           round=dataclasses.asdict(_experiment_round(args)), train=_experiment_options(args),
                           objective_policy=args.policy is None, parallel=args.parallel)
    try:
        run_experiment(cfg, settings)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None


def cmd_round(args) -> None:
    from . import run_job

    settings = settings_from(args)
    if args.rounds < 1:
        raise CLIError("--rounds must be >= 1")
    from .core import setup

    setup(settings)
    with session_scope(settings.db) as s:
        task = _task(s, args.task)
    from alt_engine.plan import plan_round

    try:  # validated here, before any job or round exists
        spec = plan_round(settings.db, task, _train_config(args), provider=args.provider, settings=settings,
                          **_round_choices(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    params = spec.params()
    for _ in range(args.rounds):
        job = run_job(settings, "round", params, args.background)
        if args.background:
            print(f"started round job {job}: follow it with `alt jobs list`")
            continue
        _print_metrics("  new version", job.result["metrics"])
