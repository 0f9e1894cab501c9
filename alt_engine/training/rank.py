"""One rank of a training run: ``python -m alt_engine.training.rank --model PATH --items items.json --output DIR …``.

What ``launch`` starts on every rank (through DeepSpeed's or accelerate's launcher), and what a person runs by hand
on each machine of a multi-machine run (see ``launch.py``). Outside a launcher it starts one itself (``run.train``
with a distributed config calls ``launch.launch``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser

from ..conditioning import Format
from ..pool import PoolItem
from .launch import PROGRESS_MARK, LaunchArgs
from .objectives import get
from .run import train


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, _ = HfArgumentParser(LaunchArgs).parse_known_args(argv)
    args, config = HfArgumentParser((LaunchArgs, get(head.objective).config)).parse_args_into_dataclasses(args=argv)
    items = [PoolItem(**row) for row in json.loads(Path(args.items).read_text())]
    on_rank = "LOCAL_RANK" in os.environ

    def report(fraction: float, logs: dict) -> None:  # to ``launch`` in the parent process
        print(PROGRESS_MARK + json.dumps([fraction, logs], default=float), flush=True)

    def show(fraction: float, logs: dict) -> None:  # to a person at the terminal
        if "loss" in logs:
            print(f"{fraction:6.1%}  step {logs.get('step')}  loss {logs['loss']:.4f}", file=sys.stderr, flush=True)

    progress = (report if int(os.environ.get("RANK", "0")) == 0 else None) if on_rank else show
    metrics = train(args.model, items, config, args.output, Format.from_dict(json.loads(args.conditioning)),
                    progress=progress)
    if not on_rank:
        print(json.dumps(metrics, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
