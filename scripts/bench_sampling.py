"""Batched vs one-at-a-time sampling, same model, same prompts, same run.

    python scripts/bench_sampling.py                 # default model (SmolLM2-135M-Instruct)
    python scripts/bench_sampling.py --model PATH --prompts 8 --n 4 --max-new-tokens 32

Prints generated tokens/s for each mode and the ratio (target: batched >= 4x on 2 cores).
"""

from __future__ import annotations

import argparse
import time

from alt_engine.conditioning import build_input
from alt_engine.modeling import load, set_threads
from alt_engine.sampling import SamplingParams, TransformersBackend
from alt_engine.settings import Settings

PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn rain.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Suggest a name for a friendly robot dog.",
    "How do I boil an egg?",
    "Summarise the plot of Romeo and Juliet in one sentence.",
    "Why is the sky blue?",
    "List two pros and two cons of remote work.",
    "Translate 'good morning' into French and Spanish.",
    "What should I pack for a weekend hike?",
    "Describe the taste of a lemon to someone who never had one.",
    "Give a one-line definition of machine learning.",
    "What are prime numbers?",
    "Recommend a good habit for better sleep.",
    "Write a polite email subject asking for a deadline extension.",
]


def run(backend, inputs, params) -> tuple[int, float]:
    start = time.perf_counter()
    out = backend.generate(inputs, params)
    return sum(len(s.token_ids) for per in out for s in per), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    settings = Settings.from_env(model=args.model)
    set_threads(args.threads)
    model, tokenizer, path = load(settings.model, settings.cache_dir, "cpu")
    backend = TransformersBackend(model, tokenizer)
    inputs = [build_input(tokenizer, p).input_ids for p in (PROMPTS * 4)[: args.prompts]]
    common = dict(temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
    backend.generate(inputs[:1], SamplingParams(n=1, max_new_tokens=4))  # warm-up

    batched_tokens, batched_s = run(backend, inputs, SamplingParams(n=args.n, batch_size=args.batch_size, **common))
    single_tokens, single_s = 0, 0.0
    for x in inputs:  # one sequence per generate call
        for j in range(args.n):
            t, s = run(backend, [x], SamplingParams(n=1, batch_size=1, **{**common, "seed": j}))
            single_tokens, single_s = single_tokens + t, single_s + s

    single_rate, batched_rate = single_tokens / single_s, batched_tokens / batched_s
    print(f"model {path}; {len(inputs)} prompts x {args.n} samples, max_new_tokens={args.max_new_tokens}")
    print(f"{'mode':<16}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'one-at-a-time':<16}{single_tokens:>8}{single_s:>10.1f}{single_rate:>10.1f}")
    print(f"{'batched (' + str(args.batch_size) + ')':<16}{batched_tokens:>8}{batched_s:>10.1f}{batched_rate:>10.1f}")
    print(f"speed-up: {batched_rate / single_rate:.2f}x")


if __name__ == "__main__":
    main()
