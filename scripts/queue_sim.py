"""Queue strategies measured in labels saved: a rule plays the annotator and labels only the first K items the
queue hands out per round; steer gap and exemplar share after R rounds per strategy, same label budget.

Every arm starts from one prepared database (task, prompt set, base version, round 1 sampled and scored —
the same samples for every arm), copied per arm. Per round: the queue's ``score`` work (uncertainty by the
served model, as the job after sampling does) → the simulated annotator asks ``annotation.next_item`` for an
item, labels it with the provider's category and submits it as a person (``annotation.submit``), K times →
the round's pool (the round defaults: flush, at most 2 per prompt, truncated excluded) → ALT training with
the defaults → the new version is served and samples the next round (conditioned on the exemplar). After
the last round each arm's version is evaluated as ``alt eval`` does (every probe prompt, n = 4, under the best
and the worst category); per prompt: exemplar share and the steer gap (share under best − under worst).
Paired 95% bootstrap CIs over the probe prompts: each arm − ``fixed`` at the same share, and − ``fixed`` at
share 1 (the whole round labelled). Writes ``results.json`` and ``table.md`` under ``--out`` after every arm.

    .venv/bin/python scripts/queue_sim.py --out runs/queue-sim                       # default model: long
    .venv/bin/python scripts/queue_sim.py --arms fixed:1,fixed:0.5,uncertainty:0.5,coverage:0.5 --out ...
    .venv/bin/python scripts/queue_sim.py --model tiny --rounds 1 --limit 4 --max-new-tokens 8 --out /tmp/qs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import select  # noqa: E402

from alt_engine import annotation as ann  # noqa: E402
from alt_engine.db import Feedback, Generation, ModelVersion, Round, RoundStatus, Task, init_db, session_scope  # noqa: E402
from alt_engine.settings import Settings  # noqa: E402

DEFAULT_ARMS = ("fixed:1,fixed:0.5,uncertainty:0.5,coverage:0.5,mix:0.5,"
                "fixed:0.25,uncertainty:0.25,coverage:0.25,mix:0.25")


def _task(db: str, name: str) -> Task:
    with session_scope(db) as s:
        return s.exec(select(Task).where(Task.name == name)).one()


def _served(db: str) -> ModelVersion:
    from alt_engine.versions import served_version

    with session_scope(db) as s:
        return served_version(s)


def prepare(db: str, settings: Settings, args, log) -> None:
    """Task, prompts, base version; round 1 sampled (unconditioned, from the base) and scored."""
    from alt_engine.modeling import resolve_model
    from alt_engine.prompts import import_prompts
    from alt_engine.tasks import builtin_prompt_file, get_or_create_task
    from alt_engine.versions import ensure_base_version

    init_db(db)
    with session_scope(db) as s:
        get_or_create_task(s, args.task)
    log(f"  prompts: {import_prompts(db, str(builtin_prompt_file(args.task)), task=args.task)}")
    with session_scope(db) as s:
        ensure_base_version(s, settings.model, resolve_model(settings.model, settings.cache_dir))
    sample(db, settings, args, 1, log)


def sample(db: str, settings: Settings, args, number: int, log) -> list[int]:
    """Round ``number`` sampled from the served version (as ``rounds.run_round`` samples), then scored."""
    from alt_engine.queue_order import score_queue
    from alt_engine.rounds import sample_round, sampling_conditioning, start_round
    from alt_engine.sampling import SamplingParams

    task, served = _task(db, args.task), _served(db)
    rnd, prompts = start_round(db, task, served, "train", args.limit or None)
    assert rnd.number == number, (rnd.number, number)
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, seed=1000 * rnd.number)
    t0 = time.perf_counter()
    ids = sample_round(db, settings, task, rnd, served, prompts, params,
                       sampling_conditioning(db, task, served, len(prompts), params.seed))
    with session_scope(db) as s:
        s.get(Round, rnd.id).status = RoundStatus.LABELLING
    t1 = time.perf_counter()
    score_queue(db, settings, task, [rnd.id])  # uncertainty and disagreement: what the score job stores
    log(f"  round {number}: {len(ids)} generations from {served.name} ({t1 - t0:.0f} s), scored "
        f"({time.perf_counter() - t1:.0f} s)")
    return ids


def annotate(db: str, args, provider, budget: int, user) -> dict[str, int]:
    """The simulated annotator: the first ``budget`` items the queue hands out, labelled by ``provider``."""
    from alt_engine import conditioning
    from alt_engine.db import Prompt
    from alt_engine.feedback import FeedbackItem

    task = _task(db, args.task)
    counts: dict[str, int] = {}
    for _ in range(budget):
        item = ann.next_item(db, user, args.task)
        if item is None:
            break
        with session_scope(db) as s:
            g = s.get(Generation, item.generation_id)
            p = s.get(Prompt, g.prompt_id)
            fi = FeedbackItem(g.id, conditioning.prompt_of(p), g.response, p.id, g.truncated)
        result = provider([fi], task)[0]
        if not result.ok:
            ann.skip(db, user, item.lease_id)
            continue
        ann.submit(db, user, item.lease_id, ann.Submission(category=result.category))
        counts[result.category] = counts.get(result.category, 0) + 1
    return counts


def per_prompt(db: str, version_id: int, condition: str, source: str, exemplar: str) -> dict[int, list[float]]:
    """Exemplar share per probe prompt of the version's evaluation samples under ``condition``."""
    with session_scope(db) as s:
        rows = s.exec(select(Generation.prompt_id, Feedback.category).join(
            Feedback, Feedback.generation_id == Generation.id).where(
            Generation.model_version_id == version_id, Generation.round_id.is_(None),
            Generation.conditioning == condition, Feedback.source == source)).all()
    out: dict[int, list[float]] = {}
    for prompt_id, category in rows:
        out.setdefault(prompt_id, []).append(float(category == exemplar))
    return out


def run_arm(name: str, template: str, out: Path, settings: Settings, args, log) -> dict:
    from alt_engine.evaluation import EvalConfig, evaluate_version
    from alt_engine.feedback import make_provider
    from alt_engine.jobs import train_version
    from alt_engine.plan import plan_train
    from alt_engine.queue_order import set_strategy
    from alt_engine.training.config import AltTrainConfig
    from alt_engine.users import add_user
    from alt_engine.versions import promote

    strategy, share = name.rsplit(":", 1)
    share_f = float(share)
    db = str(out / f"{strategy}-{share}.db")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
        if Path(template + suffix).exists():
            shutil.copy(template + suffix, db + suffix)
    arm_settings = dataclasses.replace(settings, db=db, models_dir=str(out / f"models-{strategy}-{share}"))
    set_strategy(db, args.task, strategy)
    user = add_user(db, "simulated", "simulated-annotator")
    task = _task(db, args.task)
    provider = make_provider(args.provider, arm_settings, task, db)  # resolved once (auto cuts from round 1)
    arm: dict = {"strategy": strategy, "share": share_f, "provider": provider.name, "rounds": []}
    t0 = time.perf_counter()
    for number in range(1, args.rounds + 1):
        if number > 1:
            sample(db, arm_settings, args, number, log)
        with session_scope(db) as s:
            rnd = s.exec(select(Round).where(Round.task_id == task.id, Round.number == number)).one()
            size = len(s.exec(select(Generation.id).where(Generation.round_id == rnd.id)).all())
        budget = round(share_f * size)
        labels = annotate(db, args, provider, budget, user)
        served = _served(db)
        try:  # the pool's seed is the config's (0)
            spec = plan_train(db, task, AltTrainConfig(), round_ids=[rnd.id], k_per_category=2, policy="flush",
                              max_per_prompt=2, truncated=args.truncated, parent_version_id=served.id, check=False)
            _, version_id = train_version(db, arm_settings, spec, log=lambda line: None)
            refused = None
        except ValueError as e:  # e.g. the labels gave the pool one category: nothing to train, the parent stays
            version_id, refused = served.id, str(e)
        with session_scope(db) as s:
            promote(s, version_id)
            s.get(Round, rnd.id).status = RoundStatus.CLOSED
        arm["rounds"].append({"round": number, "items": size, "labels": sum(labels.values()), "by_category": labels,
                              "version_id": version_id, "not_trained": refused})
        log(f"  {name} round {number}: {sum(labels.values())}/{size} labelled {labels} → "
            + (f"not trained: {refused}" if refused else f"version {version_id}"))
    version_id = arm["rounds"][-1]["version_id"]
    metrics = evaluate_version(db, arm_settings, version_id, task, provider, EvalConfig(n=args.eval_n,
                                                                                       limit=args.eval_limit or None))
    best, worst = metrics["eval"]["conditioning"], metrics["eval"]["contrast"]
    exemplar = task.exemplar_category
    share_best = per_prompt(db, version_id, best, provider.name, exemplar)
    share_worst = per_prompt(db, version_id, worst, provider.name, exemplar)
    gap = {str(p): [sum(v) / len(v) - sum(share_worst[p]) / len(share_worst[p])]
           for p, v in share_best.items() if p in share_worst}
    arm.update(exemplar_share=metrics.get("exemplar_share"), exemplar_share_ci=metrics.get("exemplar_share_ci"),
               steer_gap=metrics.get("steerability_gap"), steer_gap_ci=metrics.get("steerability_gap_ci"),
               per_prompt={"exemplar_share": {str(p): v for p, v in share_best.items()}, "steer_gap": gap},
               wall_s=time.perf_counter() - t0)
    return arm


def table(arms: dict) -> str:
    from alt_engine.stats import gap_ci

    def ci(est) -> str:
        return f"{est.value:+.3f} [{est.low:+.3f}, {est.high:+.3f}]" if est.prompts else "—"

    def fmt(v, c) -> str:
        return "—" if v is None else f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c else f"{v:.3f}"

    lines = ["| strategy | labels per round (share) | exemplar share [CI] | steer gap [CI] | steer gap − fixed, same "
             "share [paired CI] | steer gap − fixed, whole round | exemplar share − fixed, same share |",
             "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        ref = arms.get(f"fixed:{name.rsplit(':', 1)[1]}")
        whole = arms.get("fixed:1")
        pp = a["per_prompt"]
        d_same = ci(gap_ci(pp["steer_gap"], ref["per_prompt"]["steer_gap"])) if ref and ref is not a else "—"
        d_whole = ci(gap_ci(pp["steer_gap"], whole["per_prompt"]["steer_gap"])) if whole and whole is not a else "—"
        e_same = ci(gap_ci(pp["exemplar_share"], ref["per_prompt"]["exemplar_share"])) if ref and ref is not a \
            else "—"
        labels = "/".join(str(r["labels"]) for r in a["rounds"])
        share, gap = fmt(a["exemplar_share"], a["exemplar_share_ci"]), fmt(a["steer_gap"], a["steer_gap_ci"])
        lines.append(f"| {a['strategy']} | {labels} ({a['share']:g}) | {share} | {gap} | {d_same} | {d_whole} "
                     f"| {e_same} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="concise")
    ap.add_argument("--provider", default="rule:concise:auto", help="the rule that plays the annotator")
    ap.add_argument("--model", default="default", help="'default', a path, or 'tiny' (random: a smoke run)")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help="strategy:share, comma-separated, run in this order")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=32, help="train prompts per round (the round default)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--truncated", default="exclude", help="the pool's truncation policy (exclude | last | worst)")
    ap.add_argument("--eval-n", type=int, default=4)
    ap.add_argument("--eval-limit", type=int, default=0, help="probe prompts evaluated (0: all)")
    ap.add_argument("--out", default="runs/queue-sim")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "tiny":
        from alt_engine.tiny import save_tiny

        model = str(save_tiny(out / "tiny-model"))
    settings = Settings.from_env(model=model, db=str(out / "template.db"), models_dir=str(out / "models-template"))

    def log(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line, flush=True)

    template = str(out / "template.db")
    for suffix in ("", "-wal", "-shm"):
        Path(template + suffix).unlink(missing_ok=True)
    log(f"== template: {args.task}, round 1 sampled and scored once for every arm → {template}")
    prepare(template, settings, args, log)
    from alt_engine.db import dispose_engine

    dispose_engine(template)  # checkpointed: the copies hold everything
    results: dict = {"args": vars(args), "arms": {}}
    for name in [a.strip() for a in args.arms.split(",") if a.strip()]:
        log(f"== {name}")
        results["arms"][name] = run_arm(name, template, out, settings, args, log)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "table.md").write_text(table(results["arms"]))
        log(f"== {name}: done in {results['arms'][name]['wall_s']:.0f} s\n{table(results['arms'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
