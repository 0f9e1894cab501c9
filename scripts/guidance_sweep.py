"""Re-evaluate an experiment's saved versions under several feedback-guidance strengths γ (no retraining).

    python scripts/guidance_sweep.py runs/concise --gammas 0 0.5 1 2 3 --rounds 0 3 --parallel 2

For each γ and each chosen round of the ``--arm`` objective (0 = the untrained base, evaluated in the same format
and under the same γ: the baseline a steer gap must beat) the arm's database is copied (the experiment's own rows
stay as they were) and ``evaluation.evaluate_version`` runs with the experiment's evaluation config and resolved
provider, changing only ``guidance``. Printed (and saved as ``guidance_sweep.json`` in the folder): exemplar share,
steer gap, mean reward with their 95% CIs, perplexity under the base, dist-2, words, % truncated, wall time, and,
where the experiment has a ``--versus`` arm (default ``sft``) at that round, the paired head-to-head difference in
the primary metric (arm − versus, 95% CI over the probe prompts).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

from sweep import _fmt  # scripts/ is on the path when run as a script


def load_record(folder: str, task: str = "concise") -> dict:
    """The experiment's ``record.json``; while it still runs (no record yet), one made of the arms' progress files
    (``ARM.json``) with the evaluation config read back from the base's stored evaluation."""
    from dataclasses import fields

    from alt_engine.evaluation import EvalConfig

    path = Path(folder) / "record.json"
    arms = {f.stem: json.loads(f.read_text()) for f in Path(folder).glob("*.json") if (Path(folder) / f"{f.stem}.db")
            .exists()}
    if path.exists():  # arms still running are only in their progress files
        record = json.loads(path.read_text())
        record["arms"] = {**arms, **record["arms"]}
        return record
    if not arms:
        raise SystemExit(f"{folder}: no record.json and no arm progress files")
    names = {f.name for f in fields(EvalConfig)}
    stored = next(iter(arms.values()))["rounds"][0]["metrics"]["eval"]
    return {"config": {"task": task}, "round_config": {"eval": {k: v for k, v in stored.items() if k in names}},
            "arms": arms}


def evaluate(folder: str, arm: str, rnd: int, gamma: float, negative: str, task: str = "concise") -> dict:
    """One (round, γ) evaluation on a copy of the arm's database."""
    from alt_engine.db import Task, session_scope
    from alt_engine.evaluation import EvalConfig, evaluate_version
    from alt_engine.feedback import make_provider
    from alt_engine.modeling import set_threads
    from alt_engine.settings import Settings

    set_threads(1)
    record = load_record(folder, task)
    arm_record = record["arms"][arm]
    copy = Path(folder) / "guidance_sweep" / f"{arm}-r{rnd}-g{gamma:g}.db"
    copy.parent.mkdir(exist_ok=True)
    with sqlite3.connect(Path(folder) / f"{arm}.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # WAL included
    rounds = arm_record["rounds"]
    eval_cfg = {**record["round_config"]["eval"], "guidance": gamma, "negative": negative}
    settings = Settings.from_env(db=str(copy), models_dir=str(Path(folder) / f"models-{arm}"), threads=1)
    with session_scope(str(copy)) as s:
        from sqlmodel import select

        from alt_engine.db import ModelVersion

        task = s.exec(select(Task).where(Task.name == record["config"]["task"])).one()
        version_id = rounds[rnd]["version_id"] if rnd else s.exec(
            select(ModelVersion.id).where(ModelVersion.parent_id.is_(None))).first()
    provider = make_provider(arm_record["provider"], settings, task, str(copy))
    t0 = time.perf_counter()
    metrics = evaluate_version(str(copy), settings, version_id, task, provider, EvalConfig(**eval_cfg))
    return {"arm": arm, "round": rnd, "guidance": gamma, "wall_s": time.perf_counter() - t0, "metrics": metrics}


def row(result: dict, record: dict, versus: str) -> dict:
    from alt_engine.evaluation import compare

    m = result["metrics"]
    primary = m.get("steerability_attribute") or ("mean_score" if m.get("mean_score") is not None else
                                                  "exemplar_share")
    out = {"round": result["round"], "guidance": result["guidance"], "wall_s": round(result["wall_s"])}
    for name in ("exemplar_share", "mean_score", "steerability_gap"):
        out[name] = m.get(name)
        out[f"{name}_ci"] = m.get(f"{name}_ci")
    out |= {k: m.get(k) for k in ("perplexity", "dist2", "mean_words", "pct_truncated")}
    other = record["arms"].get(versus, {}).get("rounds", [])
    if result["round"] and len(other) > result["round"]:
        diff = compare(m, other[result["round"]]["metrics"], primary)
        out["versus"] = {"arm": versus, "metric": primary,
                         "diff": None if diff is None else [diff.value, diff.low, diff.high]}
    return out


def table(rows: list[dict]) -> str:
    lines = ["| round | γ | exemplar share [CI] | steer gap [CI] | mean reward [CI] | vs SFT (paired) | perplexity "
             "| dist-2 | words | % trunc | wall s |", "|" + "---|" * 11]
    for r in rows:
        vs = (r.get("versus") or {}).get("diff")
        share = f"{_fmt(r['exemplar_share'])} {_fmt(r['exemplar_share_ci'])}"
        lines.append(f"| {r['round']} | {r['guidance']:g} | {share} | "
                     f"{_fmt(r['steerability_gap'])} {_fmt(r['steerability_gap_ci'])} | {_fmt(r['mean_score'])} "
                     f"{_fmt(r['mean_score_ci'])} | {_fmt(vs[0]) + ' ' + _fmt(vs[1:]) if vs else '–'} | "
                     f"{_fmt(r['perplexity'], 2)} | {_fmt(r['dist2'], 2)} | {_fmt(r['mean_words'], 1)} | "
                     f"{_fmt(r['pct_truncated'], 0)} | {r['wall_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="an `alt experiment` output folder (record.json, ARM.db, models-ARM/)")
    ap.add_argument("--arm", default="alt")
    ap.add_argument("--versus", default="sft", help="the arm compared head to head at the same round")
    ap.add_argument("--gammas", type=float, nargs="+", default=[0, 0.5, 1, 2, 3])
    ap.add_argument("--rounds", type=int, nargs="+", default=None, help="rounds (0 = base); default: all")
    ap.add_argument("--negative", default="worst")
    ap.add_argument("--parallel", type=int, default=2, help="evaluations at once, one thread each")
    ap.add_argument("--task", default="concise", help="the task (read from record.json when there is one)")
    ap.add_argument("--out", default=None, help="results file (default: FOLDER/guidance_sweep.json)")
    args = ap.parse_args()
    record = load_record(args.folder, args.task)
    rounds = args.rounds if args.rounds is not None else [r["round"] for r in record["arms"][args.arm]["rounds"]]
    jobs = [(args.folder, args.arm, r, g, args.negative, args.task) for g in args.gammas for r in rounds]
    out = Path(args.out or Path(args.folder) / "guidance_sweep.json")
    rows: list[dict] = []
    with mp.get_context("spawn").Pool(args.parallel, maxtasksperchild=1) as pool:
        for result in pool.imap(_run, jobs):
            rows.append(row(result, record, args.versus))
            out.write_text(json.dumps(rows, indent=1))
            print(f"done: round {result['round']} γ={result['guidance']:g} ({result['wall_s']:.0f} s)", flush=True)
    print(table(rows))


def _run(job: tuple) -> dict:
    return evaluate(*job)


if __name__ == "__main__":
    main()
