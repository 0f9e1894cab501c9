"""One ALT round on the default model, timed per stage: where a round's wall time goes.

    python scripts/bench_round.py                         # concise demo task, small fixed settings
    python scripts/bench_round.py --limit 8 --n 4 --max-new-tokens 64 --probes 16 --eval-n 4

Runs ``rounds.run_round`` (the code `alt round` runs) once, on a fresh database in a temporary folder,
with the built-in ``concise`` demo task and its rule provider (no network, no judge), and prints:
- wall time per stage (sample, feedback, evaluate_parent, pool, train, evaluate, promote) and each one's
  share of the round, and evaluation's share (evaluate_parent + evaluate); the same in this process's CPU
  seconds (less sensitive to other processes on a shared machine);
- inside evaluation, time spent sampling probes, in perplexity and in the label-learned diagnostic;
- model loads (``from_pretrained`` calls per path) and tokenizer loads: one load per weights is the goal.

The settings are fixed so that two commits compare: run it on each (``PYTHONPATH=<checkout>``) back to
back on a quiet machine, and check ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

EVAL_PARTS = {  # module attribute → label: the pieces of evaluation, timed by wrapping them
    ("alt_engine.evaluation", "sample_prompts"): "probe sampling",
    ("alt_engine.evaluation", "response_nll"): "perplexity",
    ("alt_engine.evaluation", "label_diagnostic"): "label diagnostic",
    ("alt_engine.evaluation", "_label"): "probe feedback",
}


def instrument(times: dict, loads: Counter) -> None:
    """Wrap the evaluation's parts (time) and transformers' loaders (count) in this process."""
    import importlib

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    for (module, name), label in EVAL_PARTS.items():
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            continue
        fn = getattr(mod, name)

        @functools.wraps(fn)
        def timed(*a, _fn=fn, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                times[_label] += time.perf_counter() - t0

        setattr(mod, name, timed)

    def counted(cls, what: str):
        original = cls.from_pretrained.__func__

        def wrapper(klass, path, *a, **k):
            loads[(what, Path(str(path)).name)] += 1
            return original(klass, path, *a, **k)

        cls.from_pretrained = classmethod(wrapper)

    counted(PreTrainedModel, "model")
    counted(PreTrainedTokenizerBase, "tokenizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=8, help="train prompts sampled")
    ap.add_argument("--n", type=int, default=4, help="samples per train prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="for sampling and evaluation")
    ap.add_argument("--probes", type=int, default=8, help="probe prompts evaluated")
    ap.add_argument("--eval-n", type=int, default=4, help="samples per probe prompt and conditioning")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size")
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    times: dict[str, float] = defaultdict(float)
    loads: Counter = Counter()
    instrument(times, loads)

    from alt_engine.db import init_db, session_scope
    from alt_engine.evaluation import EvalConfig
    from alt_engine.feedback import make_provider
    from alt_engine.jobs import train_version
    from alt_engine.modeling import resolve_model
    from alt_engine.prompts import import_prompts
    from alt_engine.rounds import RoundConfig, run_round
    from alt_engine.sampling import SamplingParams
    from alt_engine.settings import Settings
    from alt_engine.tasks import DEMOS, get_or_create_task
    from alt_engine.training.config import AltTrainConfig
    from alt_engine.versions import ensure_base_version

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-round-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(db=str(work / "bench.db"), models_dir=str(work / "models"), model="default")
    init_db(settings.db)
    path = resolve_model(settings.model, settings.cache_dir)
    with session_scope(settings.db) as s:
        ensure_base_version(s, settings.model, path)
    import_prompts(settings.db, str(DEMOS["concise"].prompt_file), "concise")
    with session_scope(settings.db) as s:
        task = get_or_create_task(s, "concise")
        s.expunge(task)
    provider = make_provider(DEMOS["concise"].provider, settings, task, settings.db)
    config = RoundConfig(
        sampling=SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens), limit=args.limit,
        truncated=DEMOS["concise"].truncated, promote="always",
        eval=EvalConfig(n=args.eval_n, max_new_tokens=args.max_new_tokens, limit=args.probes))
    train = AltTrainConfig(epochs=args.epochs, batch_size=args.batch_size, report_to="none")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    t0 = time.perf_counter()

    cpu: dict[str, float] = {}  # stage → this process's CPU seconds (less sensitive to other processes' load)
    current: list = [None, time.process_time()]

    def log(line: str) -> None:  # stage starts with the time so far, on stderr (the table goes to stdout)
        if line.startswith("round"):
            print(f"  [{time.perf_counter() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)
            now = time.process_time()
            if current[0]:
                cpu[current[0]] = now - current[1]
            stage = re.fullmatch(r"round \d+: (\w+) …", line)
            current[:] = [stage.group(1) if stage else None, now]

    report = run_round(settings.db, settings, task, provider, config, train, log=log, train=train_version)
    total = time.perf_counter() - t0

    wall = {k: v for k, v in report.wall_s.items() if k != "total"}
    evaluation = wall.get("evaluate_parent", 0.0) + wall.get("evaluate", 0.0)
    print(f"\none round: {args.limit} train prompts × n={args.n}, {args.probes} probes × {args.eval_n} × "
          f"{2} conditionings, {args.max_new_tokens} new tokens, {report.pool_size} pool examples")
    cpu_total, cpu_eval = sum(cpu.values()), cpu.get("evaluate_parent", 0.0) + cpu.get("evaluate", 0.0)
    print(f"{'stage':18s} {'wall s':>8s} {'share':>7s} {'CPU s':>8s} {'share':>7s}")
    for name, sec in wall.items():
        c = cpu.get(name, 0.0)
        print(f"{name:18s} {sec:8.1f} {100 * sec / total:6.1f}% {c:8.1f} {100 * c / max(cpu_total, 1e-9):6.1f}%")
    print(f"{'total':18s} {total:8.1f} {'':7s} {cpu_total:8.1f}")
    print(f"{'evaluation':18s} {evaluation:8.1f} {100 * evaluation / total:6.1f}% {cpu_eval:8.1f} "
          f"{100 * cpu_eval / max(cpu_total, 1e-9):6.1f}%  (evaluate_parent + evaluate)")
    from sqlmodel import select

    from alt_engine.db import Generation

    with session_scope(settings.db) as s:
        dtypes = {(g.sampling_params or {}).get("dtype") for g in s.exec(select(Generation))}
    print(f"sampling dtype: {', '.join(sorted(str(d) for d in dtypes))} (modeling.fastest_dtype, measured per process)")
    print("\ninside evaluation (both versions):")
    for label in EVAL_PARTS.values():
        if label in times:
            print(f"  {label:18s} {times[label]:8.1f}")
    print("\nloads (from_pretrained calls):")
    for (what, name), count in sorted(loads.items()):
        print(f"  {what:9s} {name:40s} {count}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
