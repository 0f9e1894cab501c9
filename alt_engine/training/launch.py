"""Multi-rank, multi-machine training through the standard launchers (CPU ranks use the gloo backend).

As a command (``rank.py``: what ``launch`` runs on every rank, and what a user can run by hand)::

    python -m alt_engine.training.rank --model PATH --items items.json --output DIR \\
        --deepspeed zero2 --num_procs 2 [--objective NAME] [any option of its config]

``items.json`` is a list of PoolItem dicts. Started outside a launcher the command starts the
launcher itself, which runs ``-m alt_engine.training.rank ...`` on every rank:

- ``--launcher deepspeed`` (default): ``deepspeed --num_gpus N`` on this machine, or
  ``deepspeed --hostfile FILE`` across the hosts listed there (its runner reaches them over ssh/pdsh);
- ``--launcher accelerate``: ``accelerate launch --config_file CFG`` with the user's ``--accelerate_config``
  (DeepSpeed or FSDP) or a config generated from ``--deepspeed``, ``--num_procs`` (per machine),
  ``--num_machines``, ``--machine_rank``, ``--main_process_ip``, ``--main_process_port``
  (written to ``OUTPUT/accelerate_config.machineK.json``). On several machines each runs the same command with its
  own ``--machine_rank``; ``--output`` (and the items file) must be on storage they share.

Inside a launcher (``LOCAL_RANK`` set) each rank trains and global rank 0 prints ``ALT_PROGRESS {json}``
lines, which ``launch`` turns back into ``progress`` calls. Metrics come back through ``metrics.json``.
One code path for all of these: the 2-rank CPU tests run exactly what a multi-machine run runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..conditioning import Format
from ..pool import PoolItem
from .config import TrainConfig

PROGRESS_MARK = "ALT_PROGRESS "
ITEMS_FILE = "train_items.json"


@dataclass
class LaunchArgs:
    """What to train on and where to write it."""

    model: str = field(metadata={"help": "model directory (or hub id) to fine-tune"})
    items: str = field(metadata={"help": "JSON file with a list of PoolItem dicts"})
    output: str = field(metadata={"help": "output directory (model, config, metrics, TensorBoard logs)"})
    conditioning: str = field(default="{}", metadata={"help": "the conditioning.Format as JSON"})
    objective: str = field(default="alt", metadata={"help": "training objective (see training.objectives)"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_args(config: TrainConfig) -> list[str]:
    """``config`` (its options that differ from the defaults) as command-line options HfArgumentParser reads back."""
    args = ["--objective", config.objective]
    for name, value in config.to_dict().items():
        if name == "report_to" and isinstance(value, list):
            value = value[0] if len(value) == 1 else "none" if not value else json.dumps(value)
        if isinstance(value, list):
            args += [f"--{name}", *map(str, value)]
        elif isinstance(value, dict):
            args += [f"--{name}", json.dumps(value)]
        elif value is not None:
            args += [f"--{name}", str(value)]
    return args


def _die_with_parent() -> None:
    """Linux: the launcher (and so its ranks) gets SIGTERM if the process that started it dies (e.g. a killed job)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def _port(config: TrainConfig) -> int:
    if config.main_process_port:
        return config.main_process_port
    return _free_port() if config.num_machines == 1 and not config.hostfile else 29500  # machines must agree


def accelerate_config(config: TrainConfig, port: int) -> dict:
    """An ``accelerate launch`` config for ``config``: DeepSpeed (our config file) on every machine."""
    import torch

    if not config.deepspeed:
        raise ValueError("a generated accelerate config needs --deepspeed (e.g. zero2); for FSDP pass your own "
                         "--accelerate_config")
    return {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "debug": False,
        "num_machines": config.num_machines, "machine_rank": config.machine_rank,
        "num_processes": config.num_procs * config.num_machines,  # accelerate counts all machines' ranks
        "main_process_ip": config.main_process_ip, "main_process_port": port,
        "rdzv_backend": "static", "same_network": True, "main_training_function": "main",
        "use_cpu": not torch.cuda.is_available(),  # precision: the DeepSpeed file ("auto" from --bf16)
        "deepspeed_config": {"deepspeed_config_file": config.deepspeed, "zero3_init_flag": False,
                             "deepspeed_multinode_launcher": "standard"},  # each machine starts its own ranks
    }


def launcher_command(config: TrainConfig, out: Path, module_args: list[str], port: int | None = None) -> list[str]:
    """The launcher command line that runs ``-m alt_engine.training.rank MODULE_ARGS`` on every rank."""
    port = port or _port(config)
    if config.launcher == "accelerate":
        cfg = config.accelerate_config
        if cfg is None:
            cfg = str(out / f"accelerate_config.machine{config.machine_rank}.json")  # machines may share ``out``
            Path(cfg).write_text(json.dumps(accelerate_config(config, port), indent=2))
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg,
                "--module", "alt_engine.training.rank", *module_args]
    hosts = (["--hostfile", config.hostfile, "--master_addr", config.main_process_ip] if config.hostfile
             else ["--num_gpus", str(config.num_procs), "--master_addr", "127.0.0.1"])
    return [sys.executable, "-m", "deepspeed.launcher.runner", *hosts, "--master_port", str(port),
            "--no_local_rank", "--module", "alt_engine.training.rank", *module_args]


def launch(model_path: str, items: list[PoolItem], config: TrainConfig, output_dir: str,
           fmt: Format | None = None, progress=None) -> dict:
    """Run ``train`` on every rank through ``config.launcher``; returns global rank 0's metrics.

    On a machine other than rank 0 of a multi-machine run it returns ``{}`` once its ranks are done
    (rank 0's machine writes the model and metrics to the shared output directory).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.machine_rank == 0:
        (out / ITEMS_FILE).write_text(json.dumps([dataclasses.asdict(i) for i in items]))
        (out / "metrics.json").unlink(missing_ok=True)
    threads = max(1, (os.cpu_count() or 1) // config.num_procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    port = _port(config)
    cmd = launcher_command(config, out, ["--model", model_path, "--items", str(out / ITEMS_FILE),
                                         "--output", str(out),
                                         "--conditioning", json.dumps((fmt or Format()).to_dict()),
                                         *config_args(config)], port)
    tail: deque[str] = deque(maxlen=40)
    try:
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=_die_with_parent) as proc:
            for line in proc.stdout:
                if PROGRESS_MARK in line:
                    fraction, logs = json.loads(line.split(PROGRESS_MARK, 1)[1])
                    if progress:
                        progress(fraction, logs)
                    continue
                tail.append(line)
                sys.stderr.write(line)
    finally:
        remove_shm_buffers(port)
    if proc.returncode == 0 and config.machine_rank > 0:
        return {}
    if proc.returncode != 0 or not (out / "metrics.json").exists():
        raise RuntimeError(f"{config.launcher} training failed (exit {proc.returncode}):\n{''.join(tail)}")
    return json.loads((out / "metrics.json").read_text())


def remove_shm_buffers(port: int, shm: Path = Path("/dev/shm")) -> list[str]:
    """Unlink the shared-memory allreduce buffers DeepSpeed's CPU ranks made for ``port`` (66 MB a rank).

    DeepSpeed creates ``deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK`` in ``/dev/shm`` and never unlinks it,
    so every CPU run on one machine kept ~130 MB of memory until a reboot. Called once the ranks are gone.
    """
    removed = []
    for path in shm.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed
