"""Benchmark: LLM-judge throughput, sequential vs concurrent, through the real provider code path.

A local OpenAI-compatible server (tests/openai_stub_server.py) answers every
request after ``--latency`` seconds (default 200 ms). The same ``N`` generations
are judged by the ``llm:categorical`` provider (real openai client, JudgeCall
audit rows, Feedback rows) once with concurrency 1 and once with ``--concurrency``
(cache off, so both runs make every HTTP call). Target: >= 10x the sequential rate
at concurrency 16.

    .venv/bin/python scripts/bench_judge.py [--requests 32] [--concurrency 16] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from openai_stub_server import StubServer  # noqa: E402

from alt_engine.db import Generation, Prompt, init_db, session_scope  # noqa: E402
from alt_engine.feedback import label_generations  # noqa: E402
from alt_engine.feedback.llm import make_llm_provider  # noqa: E402
from alt_engine.settings import Settings  # noqa: E402
from alt_engine.tasks import get_or_create_task  # noqa: E402


def setup(db: str, n: int):
    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        prompt = Prompt(task_id=task.id, text="Explain why the sky is blue.")
        s.add(prompt)
        s.flush()
        gens = [Generation(prompt_id=prompt.id, response=f"Because of Rayleigh scattering ({i}).") for i in range(n)]
        s.add_all(gens)
        s.flush()
        return task, [g.id for g in gens]


def run(base_url: str, n: int, concurrency: int, workdir: str) -> tuple[float, int]:
    """(seconds, stored) for judging ``n`` fresh generations at ``concurrency``."""
    db = str(Path(workdir) / f"bench-c{concurrency}.db")
    task, gens = setup(db, n)
    settings = Settings(db=db, llm_base_url=base_url, llm_model="stub-judge", llm_concurrency=concurrency,
                        llm_max_retries=0, llm_timeout=30)
    provider = make_llm_provider("categorical", settings, task, use_cache=False, show_progress=False)
    start = time.perf_counter()
    report = label_generations(db, provider, task, gens, show_progress=False)
    return time.perf_counter() - start, report.stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="server answer time in seconds")
    args = ap.parse_args(argv)
    with StubServer(delay=args.latency, default_reply="Good") as server, tempfile.TemporaryDirectory() as tmp:
        seq_s, seq_ok = run(server.base_url, args.requests, 1, tmp)
        con_s, con_ok = run(server.base_url, args.requests, args.concurrency, tmp)
        calls = server.chat_calls
    seq_rate, con_rate = args.requests / seq_s, args.requests / con_s
    ratio = con_rate / seq_rate
    print(f"server latency {args.latency * 1000:.0f} ms, {args.requests} requests per run, {calls} HTTP calls in all")
    print(f"sequential (concurrency 1):  {seq_s:6.2f} s  {seq_rate:7.2f} req/s  stored {seq_ok}")
    print(f"concurrent (concurrency {args.concurrency}): {con_s:6.2f} s  {con_rate:7.2f} req/s  stored {con_ok}")
    print(f"speed-up: {ratio:.1f}x (target >= 10x)")
    return 0 if ratio >= 10 and seq_ok == con_ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
