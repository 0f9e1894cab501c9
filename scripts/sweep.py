"""Run several ``alt experiment`` arms side by side and tabulate what each reached per round.

    python scripts/sweep.py ARMS.json --out runs/sweep --parallel 8     # e.g. on a GPU machine
    python scripts/sweep.py ARMS.json --out runs/sweep --only lr1e-4    # one arm, here

ARMS.json is a list of ``{"name": ..., "task": "concise", "rounds": 3, "objectives": ["alt"],
"round": {RoundConfig overrides, "sampling": {...}, "eval": {...}}, "train": {training-config overrides},
"settings": {Settings overrides}}`` (settings also read ``ALT_*`` variables, e.g. ``ALT_DEVICE``).
Each arm is one ``alt_engine.experiment.run_experiment`` (the code ``alt experiment`` runs) in its own
process and folder, so arms share nothing but the machine. The summary (``summary.json`` and a Markdown
table on stdout) gives per arm and round: the exemplar share and the steerability gap with their 95% CIs,
the words gap (best − worst feedback), mean reward, the EOS diagnostic, % truncated and the wall time.
This is how the round defaults were chosen (README, "Efficacy").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import time
import traceback
from pathlib import Path


def run_arm(arm: dict, out: str) -> dict:
    from alt_engine import experiment
    from alt_engine.experiment import ExperimentConfig, run_experiment

    try:
        import plotly  # noqa: F401
    except ImportError:  # a bare GPU machine: the JSON record is what the sweep reads
        experiment.render_report = lambda record: "<p>plotly is not installed here</p>"
    from alt_engine.settings import Settings

    folder = Path(out) / arm["name"]
    folder.mkdir(parents=True, exist_ok=True)
    log_file = (folder / "log.txt").open("w")

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()

    cfg = ExperimentConfig(task=arm.get("task", "concise"), provider=arm.get("provider"),
                           rounds=arm.get("rounds", 3), objectives=arm.get("objectives", ["alt"]),
                           out=str(folder), round=arm.get("round", {}), train=arm.get("train", {}))
    t0 = time.perf_counter()
    try:
        record = run_experiment(cfg, Settings.from_env(**arm.get("settings", {})), log=log)
    except Exception:
        log(traceback.format_exc())
        return {"name": arm["name"], "arm": arm, "error": traceback.format_exc()[-2000:]}
    if not arm.get("keep_models"):  # ~0.5 GB per full-weight version: a sweep would fill the disk
        for models in folder.glob("models-*"):
            shutil.rmtree(models, ignore_errors=True)
    return {"name": arm["name"], "arm": arm, "wall_s": time.perf_counter() - t0, "rows": summarize(record)}


def summarize(record: dict) -> list[dict]:
    """The report's own rows (``experiment.summary_rows``) plus what a sweep compares besides: the words gap
    between best and worst feedback, the pool per feedback and the wall time per stage."""
    from alt_engine.experiment import summary_rows

    rounds = [r for arm in record["arms"].values() for r in arm["rounds"]]
    rows = summary_rows(record)  # same order: objective by objective, round by round
    for row, r in zip(rows, rounds, strict=True):
        words = ((r["metrics"].get("steer") or {}).get("mean_words")) or {}
        row.update(words_gap=words.get("gap"), words_gap_ci=words.get("gap_ci"), pool=r.get("pool_feedback"),
                   wall=r.get("wall_s") or {})
    return rows


def _fmt(x, nd=3):
    if isinstance(x, (list, tuple)):  # a confidence interval
        return "[" + ", ".join(_fmt(v, nd) for v in x) + "]"
    return "" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def table(results: list[dict]) -> str:
    head = ("| arm | obj | round | exemplar [CI] | steer gap [CI] | words gap | reward [CI] | eos gap | % trunc "
            "| wall s |")
    lines = [head, "|" + "---|" * 10]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['name']} | error: {res['error'].splitlines()[-1][:80]} |")
            continue
        for r in res["rows"]:
            lines.append(
                f"| {res['name']} | {r['objective']} | {r['round']} | {_fmt(r['exemplar_share'])} "
                f"{_fmt(r['exemplar_share_ci'])} | {_fmt(r['steerability_gap'])} {_fmt(r['steerability_gap_ci'])} | "
                f"{_fmt(r['words_gap'], 1)} | {_fmt(r['mean_score'])} {_fmt(r['mean_score_ci'])} | "
                f"{_fmt(r['eos_gap'])} | {_fmt(r['pct_truncated'], 0)} | "
                f"{_fmt(r['wall'].get('total'), 0)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", help="JSON file: a list of arms")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--parallel", type=int, default=1, help="arms run at once (each in its own process)")
    ap.add_argument("--only", nargs="*", help="run only these arm names")
    args = ap.parse_args()
    arms = json.loads(Path(args.arms).read_text())
    if args.only:
        arms = [a for a in arms if a["name"] in args.only]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    ctx = mp.get_context("spawn")  # no CUDA state or torch threads inherited
    with ctx.Pool(args.parallel, maxtasksperchild=1) as pool:
        pending = [pool.apply_async(run_arm, (arm, args.out)) for arm in arms]
        for p in pending:
            results.append(p.get())
            (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=1, default=str))
            print(f"done: {results[-1]['name']}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
