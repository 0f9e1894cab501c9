"""GPU figures for the scale-out issue: sampling throughput per backend and a bf16 training step time.

    python scripts/bench_gpu.py                      # default model, on the machine's GPU
    python scripts/bench_gpu.py --prompts 64 --n 4 --max-new-tokens 128

Prints one JSON line per measurement:
- ``sampling``: generated tokens/s of each backend that can run here on the same conditioned inputs
  (the transformers backend always; ``vllm`` in process when the package is installed, else the reason),
  batched (all prompts × n in one call) and one sequence at a time, and the vLLM / transformers ratio;
- ``train_step``: seconds per optimizer step of full fine-tuning in bf16 (AltTrainer, the code a training
  round runs) at a given batch size and response length, after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from alt_engine.conditioning import Format, build_input
from alt_engine.modeling import load_tokenizer, resolve_model
from alt_engine.sampling import SamplingParams, make_backend
from alt_engine.settings import Settings

PROMPTS = ["Give me three tips for staying focused while studying.", "Explain what a hash table is.",
               "Write a haiku about autumn rain.", "Why is the sky blue?", "How do I boil an egg?",
               "Summarise the plot of Romeo and Juliet.", "What are prime numbers?", "Describe a lemon's taste."]


def tokens_per_s(backend, inputs, params: SamplingParams) -> tuple[float, int]:
    backend.generate(inputs[:2], SamplingParams(n=1, max_new_tokens=8, seed=1))  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = backend.generate(inputs, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = sum(len(s.token_ids) for per in out for s in per)
    return tokens / (time.perf_counter() - start), tokens


def bench_sampling(path: str, args) -> None:
    tokenizer = load_tokenizer(path)
    fmt = Format()
    inputs = [build_input(tokenizer, PROMPTS[i % len(PROMPTS)] + f" (#{i})", "Very concise", fmt).input_ids
              for i in range(args.prompts)]
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9, seed=0,
                            batch_size=args.prompts * args.n)
    rates = {}
    for name in ("transformers", "vllm"):
        try:
            backend = make_backend(name, path, "cuda" if torch.cuda.is_available() else "cpu")
        except Exception as exc:  # vllm not installed here, etc.
            print(json.dumps({"sampling": name, "available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}),
                  flush=True)
            continue
        rate, tokens = tokens_per_s(backend, inputs, params)
        single = SamplingParams(n=1, max_new_tokens=args.max_new_tokens, seed=0, batch_size=1)
        one, _ = tokens_per_s(backend, inputs[: args.single], single)
        rates[name] = rate
        print(json.dumps({"sampling": name, "available": True, "sequences": args.prompts * args.n, "tokens": tokens,
                          "batched_tokens_per_s": round(rate, 1), "one_at_a_time_tokens_per_s": round(one, 1)}),
              flush=True)
        del backend
    if len(rates) == 2:
        ratio = rates["vllm"] / rates["transformers"]
        print(json.dumps({"sampling": "ratio", "vllm_over_transformers": round(ratio, 2)}))


def bench_train(path: str, args) -> None:
    from alt_engine.pool import PoolItem
    from alt_engine.training.config import AltTrainConfig
    from alt_engine.training.run import train

    text = "Here is a careful explanation with an example and a short summary at the end. " * 20
    items = [PoolItem(i, i, i, f"{PROMPTS[i % len(PROMPTS)]} (#{i})", "Excellent" if i % 2 else "Horrible",
                      text, False, "Excellent" if i % 2 else "Horrible") for i in range(args.batch_size * 6)]
    marks: list[float] = []

    def progress(fraction: float, logs: dict) -> None:
        if "loss" in logs:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    config = AltTrainConfig(max_steps=args.steps, batch_size=args.batch_size, bf16=torch.cuda.is_available(),
                            max_response_tokens=args.response_tokens, report_to="none", save_steps=10**6,
                            logging_steps=1)
    with tempfile.TemporaryDirectory() as out:
        train(path, items, config, out, progress=progress)
    per_step = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
    print(json.dumps({"train_step": "alt full fine-tuning", "bf16": config.bf16, "batch_size": args.batch_size,
                      "response_tokens": args.response_tokens, "steps_timed": len(marks) - 1,
                      "seconds_per_step": round(per_step, 4)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--single", type=int, default=4, help="sequences sampled one at a time")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--response-tokens", type=int, default=160)
    args = ap.parse_args()
    path = resolve_model(args.model, Settings.from_env().cache_dir)
    print(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "torch": torch.__version__}), flush=True)
    bench_sampling(path, args)
    bench_train(path, args)


if __name__ == "__main__":
    main()
