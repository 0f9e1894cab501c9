"""Training throughput: our AltTrainer (beta = 0 and beta > 0) against TRL's SFTTrainer, same run.

    python scripts/bench_training.py                   # default model (SmolLM2-135M-Instruct), 6 steps each
    python scripts/bench_training.py --model PATH --steps 10 --batch-size 8 --response-tokens 96

Same model, same tokenized examples (feedback + separator + prompt, then the response; loss on the
response only), same batch size, fp32, no gradient checkpointing, one process. Tokens are counted
the same way for both (non-padding input tokens, transformers' ``include_num_input_tokens_seen``)
and timed from the end of the first optimizer step to the end of the last (warm-up excluded).
Targets: ours (beta = 0) >= 0.9x TRL; the table also shows what the KL reference (beta > 0) costs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from alt_engine.modeling import load_tokenizer, resolve_model, set_threads
from alt_engine.pool import PoolItem
from alt_engine.settings import Settings
from alt_engine.training.config import AltTrainConfig
from alt_engine.training.run import build_examples, train

TOPICS = ["hash tables", "the water cycle", "photosynthesis", "compound interest", "the French revolution",
          "black holes", "sourdough bread", "remote work", "public transport", "honey bees", "solar panels",
          "chess openings", "volcanoes", "the immune system", "jazz", "recycling"]
SENTENCES = ("It is a topic many people find interesting. The main idea is simple once you see an example. "
             "Experts often disagree about the details, but the basics are well understood. A short summary "
             "helps beginners, and a longer explanation helps those who want to go deeper. ")


def pool(n: int) -> list[PoolItem]:
    """``n`` examples, two feedback categories, responses long enough to hit the response budget."""
    return [PoolItem(i, i, i, f"Explain {TOPICS[i % len(TOPICS)]} in a few sentences (request {i}).",
                     "Excellent" if i % 2 else "Horrible", f"Here is an explanation of {TOPICS[i % len(TOPICS)]}. "
                     + SENTENCES * 4, False, "Excellent" if i % 2 else "Horrible") for i in range(n)]


class Clock:
    """(wall time, CPU time, tokens seen) after every optimizer step, as a Trainer callback or a ``progress``.

    CPU time (all threads of this process) is the fairer measure on a shared machine: other people's
    processes stretch wall time, not the work our process does.
    """

    def __init__(self):
        self.marks: list[tuple[float, float, int]] = []

    def mark(self, tokens: int) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), tokens))

    def __call__(self, fraction: float, logs: dict) -> None:
        if "num_input_tokens_seen" in logs and "loss" in logs:
            self.mark(int(logs["num_input_tokens_seen"]))

    def callback(self) -> TrainerCallback:
        clock = self

        class _Step(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.mark(int(state.num_input_tokens_seen))

        return _Step()

    def rate(self) -> tuple[int, float, float]:
        """(tokens, wall seconds, CPU seconds) over steps 2..N."""
        (w0, c0, n0), (w1, c1, n1) = self.marks[0], self.marks[-1]
        return n1 - n0, w1 - w0, c1 - c0


def run_ours(path: str, items: list[PoolItem], args, beta: float) -> tuple[int, float, float]:
    config = AltTrainConfig(beta=beta, max_steps=args.steps, batch_size=args.batch_size, learning_rate=2e-5,
                            max_response_tokens=args.response_tokens, report_to="none", save_steps=10**6,
                            logging_steps=1)
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        train(path, items, config, out, progress=clock)
    return clock.rate()


def run_trl(path: str, items: list[PoolItem], args) -> tuple[int, float, float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(path)
    examples = build_examples(tokenizer, items, AltTrainConfig(max_response_tokens=args.response_tokens))
    rows = [{"input_ids": e["input_ids"] + e["response_ids"],
             "labels": [-100] * len(e["input_ids"]) + e["response_ids"]} for e in examples]
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                           learning_rate=2e-5, lr_scheduler_type="linear", warmup_steps=0.05, logging_steps=1,
                           save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
                           include_num_input_tokens_seen="non_padding", max_length=None, disable_tqdm=True,
                           dataloader_pin_memory=False, dataset_kwargs={"skip_prepare_dataset": True}, seed=0)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=config,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             callbacks=[clock.callback()])
        trainer.train()
    return clock.rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="hub id, local path, or 'default'")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (first one is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=96, help="response tokens per example")
    parser.add_argument("--beta", type=float, default=0.05, help="KL weight for the beta > 0 run")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the runs this many times (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    set_threads(args.threads)
    path = resolve_model(args.model, Settings.from_env().cache_dir)
    items = pool(args.steps * args.batch_size)
    runs = {"ALT (ours), beta=0": lambda: run_ours(path, items, args, 0.0),
            "TRL SFTTrainer": lambda: run_trl(path, items, args),
            f"ALT (ours), beta={args.beta}": lambda: run_ours(path, items, args, args.beta)}
    results: dict[str, list[tuple[int, float, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            results[name].append(fn())
            gc.collect()
    print(f"\nmodel {path} | {args.steps} steps x batch {args.batch_size} | torch threads {torch.get_num_threads()}")
    print(f"{'run':<28}{'tokens':>8}{'wall s':>9}{'tok/s':>8}{'CPU s':>9}{'tok/CPU-s':>11}")
    wall, cpu = {}, {}
    for name, rows in results.items():
        tokens = rows[0][0]
        wall[name] = statistics.median(r[0] / r[1] for r in rows)
        cpu[name] = statistics.median(r[0] / r[2] for r in rows)
        print(f"{name:<28}{tokens:>8}{statistics.median(r[1] for r in rows):>9.1f}{wall[name]:>8.1f}"
              f"{statistics.median(r[2] for r in rows):>9.1f}{cpu[name]:>11.1f}")
    (ours, trl, kl), (ours_c, trl_c, kl_c) = wall.values(), cpu.values()
    print(f"\nours / TRL (beta=0): {ours_c / trl_c:.2f}x per CPU-second, {ours / trl:.2f}x wall  (target >= 0.9x)")
    print(f"beta={args.beta} / beta=0: {kl_c / ours_c:.2f}x per CPU-second, {kl / ours:.2f}x wall "
          "(the cost of the reference model's forward pass)")

if __name__ == "__main__":
    main()
