"""Benchmark: the shared ModelServer, 8 concurrent chats (micro-batched) vs the same 8 one after another.

    .venv/bin/python scripts/bench_serving.py [--model default] [--users 8] [--max-new-tokens 32]

Greedy decoding, so the concurrent answers must equal the sequential ones (checked).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alt_engine.modeling import resolve_model  # noqa: E402
from alt_engine.serving import ModelServer  # noqa: E402
from alt_engine.settings import Settings  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Give me one tip for sleeping better.", "Explain what a rainbow is.",
             "Name three fruits.", "How do I boil an egg?", "Why is the sky blue?", "Say hello in Spanish.",
             "What is 12 times 12?", "Suggest a name for a cat.", "What is photosynthesis?"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    settings = Settings.from_env(model=args.model)
    server = ModelServer(path=resolve_model(args.model, settings.cache_dir), device=settings.device,
                         max_batch=args.users)
    server.preload()
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.users)]
    ask = lambda m: server.chat(m, max_new_tokens=args.max_new_tokens, temperature=0)  # noqa: E731
    ask(chats[0])  # warm-up
    start = time.perf_counter()
    alone = [ask(m) for m in chats]
    seq_s = time.perf_counter() - start
    batches = server.batches
    start = time.perf_counter()
    with ThreadPoolExecutor(args.users) as pool:
        together = list(pool.map(ask, chats))
    con_s = time.perf_counter() - start
    tokens = sum(u.completion_tokens for _, u in together)
    same = sum(a[0] == b[0] for a, b in zip(alone, together))
    print(f"model {args.model}: {args.users} chats, up to {args.max_new_tokens} new tokens each, greedy")
    print(f"one after another: {seq_s:6.2f} s  ({tokens / seq_s:6.1f} tokens/s)")
    print(f"concurrent:        {con_s:6.2f} s  ({tokens / con_s:6.1f} tokens/s) in {server.batches - batches} "
          f"batched generate call(s)")
    print(f"speed-up {seq_s / con_s:.1f}x; identical answers {same}/{args.users}")
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
