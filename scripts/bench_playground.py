"""Streaming latency of the playground / ``/v1/chat/completions`` path: time to first token and tokens/s.

    python scripts/bench_playground.py                       # default model, 1 user then 4 concurrent users
    python scripts/bench_playground.py --model PATH --max-tokens 64 --users 1 4 8

Serves the model with the app's own ModelServer behind the real /v1 route (uvicorn on 127.0.0.1) and streams
with the real ``openai`` client, each user asking a different question under a feedback text (as the
playground's panels do), and asking the next one as soon as the answer is in (users are not in step, so
requests arrive while others decode: they join the running batch). Reports per concurrency: median / worst
time to the first streamed token, and
generated tokens per second per user and in total. Target: first token < 1 s for one user.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = ["Why is the sky blue?", "How do I boil an egg?", "Write a haiku about autumn rain.",
             "What are prime numbers?", "Give me three tips for staying focused.", "What is a hash table?",
             "Suggest a name for a friendly robot dog.", "Why do cats purr?"]
FEEDBACK = ["Excellent", "Horrible", "Very concise", "Wordy"]


def start(model: str, threads: int):
    import socket

    import uvicorn
    from fastapi import FastAPI

    from alt_engine.modeling import resolve_model, set_threads
    from alt_engine.sampling import make_backend
    from alt_engine.serving import ModelServer
    from alt_engine.settings import Settings
    from app.openai_api import add_openai_routes

    settings = Settings.from_env(model=model, serve_api_key="sk-bench", db="/tmp/bench_playground.db")
    if threads:
        set_threads(threads)
    path = resolve_model(model, settings.cache_dir)
    server = ModelServer(make_backend("transformers", path, "cpu"), version_name="bench")
    api = FastAPI()
    add_openai_routes(api, settings, server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", uv


def one(client, i: int, max_tokens: int) -> tuple[float, int, float]:
    """(seconds to the first content piece, completion tokens, seconds in all) for one streamed chat."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=max_tokens,
        temperature=0.7, top_p=0.9, seed=i, stream=True, stream_options={"include_usage": True},
        extra_body={"feedback": FEEDBACK[i % len(FEEDBACK)]})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or float("nan"), tokens, time.perf_counter() - t0


def main() -> None:
    import openai

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--users", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=2, help="rounds of requests per concurrency level")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--late", type=int, default=0, metavar="N",
                    help="also: a user arriving while another's N-token answer decodes — their first token and "
                         "whether they waited for the other answer to end")
    args = ap.parse_args()
    url, uv = start(args.model, args.threads)
    client = openai.OpenAI(base_url=url, api_key="sk-bench", max_retries=0, timeout=600)
    one(client, 0, 4)  # warm-up: the first generate pays one-off costs
    print(f"model {args.model}, {args.max_tokens} new tokens, temperature 0.7, feedback-conditioned, streamed")
    for users in args.users:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(users) as pool:  # each user asks again as soon as their answer is in (not in step)
            asked = pool.map(lambda u, n=users: [one(client, u + r * n, args.max_tokens) for r in range(args.repeats)],
                             range(users))
            results = [r for rs in asked for r in rs]
        wall = time.perf_counter() - t0
        firsts = [f for f, _, _ in results]
        per_user = [n / max(total - f, 1e-9) for f, n, total in results]
        total_tokens = sum(n for _, n, _ in results)
        print(f"{users} user(s): first token median {statistics.median(firsts):.2f} s, worst {max(firsts):.2f} s; "
              f"{statistics.median(per_user):.1f} tokens/s per user, {total_tokens / wall:.1f} tokens/s in all "
              f"({len(results)} requests, {total_tokens} tokens, {wall:.1f} s)")
    if args.late:
        late(client, args.late, args.max_tokens)
    uv.should_exit = True


def late(client, long_tokens: int, max_tokens: int) -> None:
    """A long answer streams; one second in, another user asks: when does their first token come?"""
    import threading

    long_done: list[float] = []
    t0 = time.perf_counter()
    other = threading.Thread(target=lambda: long_done.append(one(client, 100, long_tokens)[2]))
    other.start()
    time.sleep(1.0)
    t1 = time.perf_counter()
    first, tokens, total = one(client, 101, max_tokens)
    other.join()
    waited = t1 + first >= t0 + long_done[0] - 0.05
    print(f"late user (arrives 1 s into a {long_tokens}-token answer that took {long_done[0]:.1f} s): first token "
          f"after {first:.2f} s, {tokens} tokens in {total:.1f} s"
          f"{' — it waited for the long answer to end' if waited else ' — joined the running batch'}")


if __name__ == "__main__":
    main()
