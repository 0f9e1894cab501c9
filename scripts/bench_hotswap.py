"""Benchmark: promote (hot swap) while 8 users chat with the served model; then an instant rollback.

    .venv/bin/python scripts/bench_hotswap.py [--model default] [--users 8] [--rounds 3] [--max-new-tokens 24]

Two versions of the same weights (the second a copy in a temp directory, so promoting really loads a model)
in a temp database. Each of ``--users`` threads sends ``--rounds`` chats one after another; after the
first answer arrives the served version is promoted. Reports: requests completed / failed, which version
answered, p50/p95 latency before, during and after the swap, how long the promote took (load + swap) and
how long the rollback took (the previous version stays loaded: no load).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alt_engine.db import ModelVersion, init_db, session_scope  # noqa: E402
from alt_engine.modeling import resolve_model  # noqa: E402
from alt_engine.serving import ModelHub  # noqa: E402
from alt_engine.settings import Settings  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Give me one tip for sleeping better.", "Explain what a rainbow is.",
             "Name three fruits.", "How do I boil an egg?", "Why is the sky blue?", "Say hello in Spanish.",
             "What is 12 times 12?"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="'default', a local path, or 'tiny' (a random tiny model)")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="chats per user")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-hotswap-"))
    try:
        if args.model == "tiny":
            from alt_engine.tiny import save_tiny

            path_a = save_tiny(tmp / "a")
        else:
            path_a = resolve_model(args.model, Settings.from_env().cache_dir)
        path_b = str(tmp / "b")
        shutil.copytree(path_a, path_b)
        db = str(tmp / "bench.db")
        init_db(db)
        with session_scope(db) as s:
            s.add_all([ModelVersion(name="v0", path=path_a, status="served"),
                       ModelVersion(name="v1", path=path_b, parent_id=1, objective="alt")])
        hub = ModelHub(Settings(db=db, device="cpu"), max_batch=args.users)
        hub.served.preload()
        hub.served.chat([{"role": "user", "content": "hi"}], max_new_tokens=4)  # warm-up
        first = threading.Event()
        swap: dict[str, float] = {}
        results: list[tuple[float, float, str]] = []  # (start, latency, version)
        failures: list[str] = []

        def user(i: int) -> None:
            for r in range(args.rounds):
                chat = [{"role": "user", "content": QUESTIONS[(i + r) % len(QUESTIONS)]}]
                t0 = time.perf_counter()
                try:
                    _, usage = hub.served.chat(chat, max_new_tokens=args.max_new_tokens, temperature=0, timeout=600)
                    results.append((t0, time.perf_counter() - t0, usage.version))
                except Exception as e:  # noqa: BLE001 - counted and reported
                    failures.append(f"{type(e).__name__}: {e}")
                first.set()

        with ThreadPoolExecutor(args.users) as pool:
            futures = [pool.submit(user, i) for i in range(args.users)]
            first.wait()
            swap["start"] = time.perf_counter()
            hub.promote(2)
            swap["end"] = time.perf_counter()
            for f in futures:
                f.result()
        t0 = time.perf_counter()
        hub.rollback()
        rollback_s = time.perf_counter() - t0
        phases = {"before": [], "during": [], "after": []}
        for start, lat, _ in results:
            end = start + lat
            phase = "before" if end < swap["start"] else "after" if start > swap["end"] else "during"
            phases[phase].append(lat)
        by_version = {v: sum(1 for *_, x in results if x == v) for v in ("v0", "v1")}
        print(f"model {args.model}: {args.users} users × {args.rounds} chats, {args.max_new_tokens} new tokens, greedy")
        print(f"completed {len(results)}/{args.users * args.rounds}, failed {len(failures)}; answered by {by_version}")
        for name, xs in phases.items():
            if xs:
                print(f"  {name:<6} n={len(xs):>2}  p50 {statistics.median(xs):6.2f} s  p95 {pct(xs, 0.95):6.2f} s")
        print(f"promote (load v1 + swap) took {swap['end'] - swap['start']:.2f} s while serving; "
              f"rollback took {rollback_s * 1000:.1f} ms (v0 still loaded; loads so far {hub.cache.loads})")
        hub.close()
        return 1 if failures else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
