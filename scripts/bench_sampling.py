"""Sampling throughput against the machine's compute limit, batched vs one-at-a-time, in one run.

    python scripts/bench_sampling.py                      # default model (SmolLM2-135M-Instruct)
    python scripts/bench_sampling.py --dtype float32 --threads 1 --baseline
    python scripts/bench_sampling.py --model PATH --prompts 8 --n 4 --max-new-tokens 32

Prints, from the same run (the matmul rate is measured before and after sampling, so load from other
processes hits both):
- the machine's fp32 matmul rate (GFLOP/s): the best of a 1024³ product and the model's own layer shapes
  at 128 rows (the rate a well-batched decoder step could reach);
- the model's compute limit: that rate / FLOPs per generated token, counted as 2 × the weights of every
  linear layer a token passes through (attention and MLP projections of all layers, and the LM head,
  which runs for every token even when tied to the embedding). Attention over the context, norms and
  sampling are not counted, so the limit is a little optimistic;
- batched sampling tokens/s and its share of the limit; one-at-a-time tokens/s and the ratio;
- with ``--baseline``: transformers' ``model.generate`` on batches of 16 (the previous backend), same prompts;
- with ``--guidance G``: the same prompts conditioned on "Very concise", sampled plain and with feedback guidance
  γ = G away from "Very wordy" (each sample decodes with a twin row under f⁻ in the same batch, which counts both):
  the guided run's cost per generated token relative to plain sampling of the same conditioned inputs.

    python scripts/bench_sampling.py --guidance 1.5 --single 0        # the guidance cost (docs/guidance.md)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from alt_engine.conditioning import build_input
from alt_engine.modeling import choose_threads, fastest_dtype, load, set_threads
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


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every linear layer a generated token passes through, the LM head included."""
    shapes = [(m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    head = model.get_output_embeddings()
    return shapes + [(head.weight.shape[1], head.weight.shape[0])]


def matmul_rate(shapes: list[tuple[int, int]], dtype=torch.float32, rows: int = 128, seconds: float = 1.0) -> float:
    """GFLOP/s: the best of a 1024³ product and one pass over the model's distinct layer shapes at ``rows``."""
    best = 0.0
    for case in ([(1024, 1024, 1024)], [(rows, k, n) for k, n in sorted(set(shapes))]):
        mats = [(torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)) for m, k, n in case]
        flops = sum(2 * m * k * n for m, k, n in case)
        for a, w in mats:  # warm-up
            F.linear(a, w)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            for a, w in mats:
                F.linear(a, w)
            reps += 1
        best = max(best, flops * reps / (time.perf_counter() - start) / 1e9)
    return best


def timed(fn) -> tuple[int, float]:
    start = time.perf_counter()
    out = fn()
    return sum(len(s.token_ids) for per in out for s in per), time.perf_counter() - start


def hf_generate(model, tokenizer, inputs, params: SamplingParams):
    """The previous backend: ``model.generate`` on left-padded batches (for ``--baseline``)."""
    from alt_engine.sampling import Sample

    out, stop = [], model.generation_config.eos_token_id
    jobs = [x for x in inputs for _ in range(params.n)]
    for start in range(0, len(jobs), params.batch_size):
        chunk = jobs[start:start + params.batch_size]
        enc = tokenizer.pad({"input_ids": chunk}, return_tensors="pt")
        torch.manual_seed(params.seed + start)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=params.max_new_tokens, do_sample=True,
                                 temperature=params.temperature, top_p=params.top_p, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            kept = row[:row.index(stop)] if stop in row else row
            out.append([Sample(kept, "", stop not in row, 0, 0)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--single", type=int, default=6, help="sequences sampled one at a time (the slow part)")
    ap.add_argument("--threads", type=int, default=0, help="0: choose by measurement")
    ap.add_argument("--dtype", default="auto", help="auto (by measurement) | float32 | bfloat16")
    ap.add_argument("--baseline", action="store_true", help="also time transformers' generate (previous backend)")
    ap.add_argument("--guidance", type=float, default=0.0, help="also time feedback guidance at this γ")
    args = ap.parse_args()

    settings = Settings.from_env(model=args.model)
    threads = args.threads or choose_threads()
    set_threads(threads)
    model, tokenizer, path = load(settings.model, settings.cache_dir, "cpu")
    hidden = model.config.get_text_config().hidden_size
    dtype = fastest_dtype("cpu", hidden) if args.dtype == "auto" else getattr(torch, args.dtype)
    backend = TransformersBackend(model, tokenizer, dtype=dtype)
    inputs = [build_input(tokenizer, p).input_ids for p in (PROMPTS * 8)[: args.prompts]]
    common = dict(temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
    backend.generate(inputs[:2], SamplingParams(n=2, max_new_tokens=4))  # warm-up

    shapes = linear_shapes(model)
    flops = 2 * sum(k * n for k, n in shapes)
    head = model.get_output_embeddings().weight.numel()
    rates = [matmul_rate(shapes)]
    batched = timed(lambda: backend.generate(inputs, SamplingParams(n=args.n, batch_size=args.batch_size, **common)))
    rates.append(matmul_rate(shapes))
    guided = None
    if args.guidance:
        texts = (PROMPTS * 8)[: args.prompts]
        cond = [build_input(tokenizer, p, "Very concise").input_ids for p in texts]
        neg = [build_input(tokenizer, p, "Very wordy").input_ids for p in texts]
        params = SamplingParams(n=args.n, batch_size=args.batch_size, **common)
        guided = (timed(lambda: backend.generate(cond, params)),
                  timed(lambda: backend.generate(cond, SamplingParams(**{**params.__dict__, "guidance": args.guidance}),
                                                 negatives=neg)))
        rates.append(matmul_rate(shapes))
    single = [0, 0.0]
    for k in range(args.single):  # one sequence per call
        one = SamplingParams(n=1, batch_size=1, **{**common, "seed": k})
        t, s = timed(lambda x=inputs[k % len(inputs)], p=one: backend.generate([x], p))
        single = [single[0] + t, single[1] + s]
    rates.append(matmul_rate(shapes))
    bf16 = matmul_rate(shapes, torch.bfloat16)
    baseline = None
    if args.baseline:
        baseline = timed(lambda: hf_generate(model, tokenizer, inputs, SamplingParams(n=args.n, batch_size=16,
                                                                                      **common)))
        rates.append(matmul_rate(shapes))

    rate = sum(rates) / len(rates)
    limit = rate * 1e9 / flops
    batched_rate, single_rate = batched[0] / batched[1], single[0] / max(single[1], 1e-9)
    print(f"model {path}; sampling in {backend.dtype}, {threads} thread(s), batch {args.batch_size}; "
          f"{len(inputs)} prompts x {args.n} samples, max_new_tokens={args.max_new_tokens}, top_p 0.9, T 1.0")
    print(f"fp32 matmul rate: {rate:.0f} GFLOP/s (runs: {', '.join(f'{r:.0f}' for r in rates)}); "
          f"bf16: {bf16:.0f} GFLOP/s")
    print(f"FLOPs per token: {flops / 1e9:.3f} G = 2 x {sum(k * n for k, n in shapes) / 1e6:.1f}M linear weights "
          f"({(sum(k * n for k, n in shapes) - head) / 1e6:.1f}M in the layers + {head / 1e6:.1f}M LM head)")
    print(f"compute limit (fp32): {limit:.0f} tokens/s")
    print(f"{'mode':<24}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'of limit':>10}")
    rows = [("one-at-a-time", single)] if args.single else []
    rows.append((f"batched ({args.batch_size})", batched))
    if baseline:
        rows.append(("generate (previous, 16)", baseline))
    if guided:
        rows += [("conditioned, plain", guided[0]), (f"conditioned, γ={args.guidance:g}", guided[1])]
    for name, (tokens, secs) in rows:
        print(f"{name:<24}{tokens:>8}{secs:>10.1f}{tokens / secs:>10.1f}{tokens / secs / limit:>10.0%}")
    if args.single:
        previous = f"; batched / previous backend: {batched_rate * baseline[1] / baseline[0]:.1f}x" if baseline else ""
        print(f"batched / one-at-a-time: {batched_rate / single_rate:.1f}x{previous}")
    if guided:
        (pt, ps), (gt, gs) = guided
        print(f"feedback guidance γ={args.guidance:g}: {gs / gt * 1000:.1f} ms per generated token vs "
              f"{ps / pt * 1000:.1f} plain = {(gs / gt) / (ps / pt):.2f}x the cost per token")


if __name__ == "__main__":
    main()
