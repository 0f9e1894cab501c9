"""Which conditioning placement does a model learn fastest? Train once per placement on the same pool, compare.

Takes a labelled round from a studio database (e.g. round 1 of ``alt experiment --task concise``), splits
its pool by prompt into train / held-out, fine-tunes the round's model once per placement with the same
budget, and reports the label-learned diagnostic on the held-out responses — the log-likelihood of each
response under its own label minus under the opposite one (``ll_gap``), and the same for the EOS token
alone (``eos_gap``) — for the untrained model and after training. No sampling: minutes on 2 cores.

    python scripts/placement_probe.py --db runs/concise/alt.db --task concise --steps 30
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

from alt_engine import conditioning
from alt_engine.db import ModelVersion, Round, Task, select, session_scope
from alt_engine.evaluation import label_diagnostic
from alt_engine.modeling import load_model, load_tokenizer, resolve_model, set_threads
from alt_engine.pool import build_pool
from alt_engine.settings import Settings
from alt_engine.training.config import AltTrainConfig
from alt_engine.training.run import train

FORMATS = {"prefix (paper)": conditioning.PAPER_FORMAT, "system": conditioning.Format("system"),
           "user": conditioning.Format("user")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--task", default="concise")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--learning-rate", type=float, default=AltTrainConfig.learning_rate)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--held-out", type=float, default=0.3, help="share of the pool's prompts held out")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    settings = Settings.from_env(db=args.db)
    set_threads(settings.threads)
    with session_scope(args.db) as s:
        task = s.exec(select(Task).where(Task.name == args.task)).one()
        rnd = s.exec(select(Round).where(Round.task_id == task.id, Round.number == args.round)).one()
        model_path = resolve_model(s.get(ModelVersion, rnd.model_version_id).path, settings.cache_dir)
    items = build_pool(args.db, task.id, round_ids=[rnd.id])
    prompts = sorted({it.prompt_id for it in items})
    random.Random(0).shuffle(prompts)
    held = set(prompts[:max(1, int(len(prompts) * args.held_out))])
    train_items = [it for it in items if it.prompt_id not in held]
    cats = list(task.categories)
    examples = [(it.prompt, it.response, it.truncated, it.feedback, cats[len(cats) - 1 - cats.index(it.feedback)])
                for it in items if it.prompt_id in held and it.feedback in cats
                and cats.index(it.feedback) != len(cats) - 1 - cats.index(it.feedback)]
    print(f"pool {len(items)} examples: train {len(train_items)}, held-out {len(examples)} labelled responses "
          f"({len(held)} prompts); {args.steps} steps at lr {args.learning_rate}{' (LoRA)' if args.lora else ''}")
    tok = load_tokenizer(model_path)
    base = load_model(model_path, settings.device)
    results = {}
    for name, fmt in FORMATS.items():
        fmt = fmt.for_tokenizer(tok)
        before = label_diagnostic(base, tok, fmt, examples)
        config = AltTrainConfig(max_steps=args.steps, learning_rate=args.learning_rate, lora=args.lora,
                                report_to="none", save_steps=10**6, logging_steps=10)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            train(model_path, train_items, config, out, fmt)
            after = label_diagnostic(load_model(out, settings.device), load_tokenizer(out), fmt, examples)
        results[name] = {"before": before, "after": after, "train_s": time.perf_counter() - t0}
        print(f"{name:15s} ll_gap {before['ll_gap']:+.3f} → {after['ll_gap']:+.3f} "
              f"[{after['ll_gap_ci'][0]:+.3f}, {after['ll_gap_ci'][1]:+.3f}]   eos_gap "
              f"{(before['eos_gap'] or 0):+.3f} → {(after['eos_gap'] or 0):+.3f}   ({results[name]['train_s']:.0f} s)",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
