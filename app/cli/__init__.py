"""The ``alt`` command line: thin commands over the same engine functions the web app calls.

Each command group lives in its own module with a ``register(subparsers, common)``.
Every command takes ``--db`` (env ``ALT_DB``) and ``--model`` (env ``ALT_MODEL``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from alt_engine.settings import Settings


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help="SQLite database (default: annotations.db, env ALT_DB)")
    common.add_argument("--model", default=None, help="hub id, local path or 'default' (env ALT_MODEL)")
    common.add_argument("--backend", default=None, choices=["transformers", "vllm", "openai"],
                        help="sampling backend (env ALT_BACKEND); openai = a server such as vllm serve")
    common.add_argument("--sampling-base-url", default=None,
                        help="server for --backend openai, e.g. http://host:8000/v1 (env ALT_SAMPLING_BASE_URL)")
    common.add_argument("--sampling-model", default=None,
                        help="the base model's name on that server (env ALT_SAMPLING_MODEL)")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    return common


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(db=args.db, model=args.model, backend=getattr(args, "backend", None),
                             sampling_base_url=getattr(args, "sampling_base_url", None),
                             sampling_model=getattr(args, "sampling_model", None))


def run_job(settings: Settings, kind: str, params: dict, background: bool = False):
    """Run a ``kind`` job the way the console does: in this process (foreground, the finished Job returned)
    or queued for the worker (``--background``: the job id returned). A failed job is a CLIError."""
    from alt_engine.jobs import JobStatus, create_job, job_settings, run_job_inline, start_job

    params = {**params, "settings": {**job_settings(settings), **params.get("settings", {})}}
    if background:
        return start_job(settings.db, kind, params)
    job = run_job_inline(settings.db, create_job(settings.db, kind, params))
    if job.status != JobStatus.SUCCEEDED:
        raise CLIError(f"{kind} job {job.id} {job.status}: {job.message or job.error}")
    return job


def build_parser() -> argparse.ArgumentParser:
    from . import core, export, jobs, judge, training, users  # noqa: F401 - each registers its commands

    parser = argparse.ArgumentParser(prog="alt", description="ALT Studio: align language models with textual feedback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    for module in (core, training, jobs, judge, users, export):
        module.register(sub, common)
    return parser


def _quiet_deepspeed_on_cpu() -> None:
    """DeepSpeed (imported by transformers) warns on every start when it finds no GPU; tell it up front."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    _quiet_deepspeed_on_cpu()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
