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
    """Defaults < ALT_* environment < what an admin stored in the console < this command's flags."""
    flags = dict(db=args.db, model=args.model, backend=getattr(args, "backend", None),
                 sampling_base_url=getattr(args, "sampling_base_url", None),
                 sampling_model=getattr(args, "sampling_model", None))
    return Settings.from_env(**flags).with_stored(keep=[k for k, v in flags.items() if v is not None])


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


# command -> (module registering it, one-line help). ``alt --help`` lists these without importing any module,
# and ``alt CMD`` imports only CMD's module: no command loads torch, transformers or gradio before it needs them.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("core", "create or upgrade the database, register the base model"),
    "prompts": ("core", "manage prompts"),
    "sample": ("core", "sample generations from the served model into a new round"),
    "status": ("core", "counts per round and state"),
    "models": ("core", "model versions: list | promote ID | rollback"),
    "settings": ("core", "print every setting, its value and help"),
    "serve": ("core", "run the web app"),
    "feedback": ("training", "label a round's generations with a provider"),
    "train": ("training", "train a new model version on the data pool (ALT)"),
    "eval": ("training", "evaluate a model version on the task's probe prompts"),
    "round": ("training", "run full rounds: sample → feedback → train → eval → promote"),
    "experiment": ("training", "R rounds from the same start on a task; JSON record + HTML report with charts"),
    "jobs": ("jobs", "jobs: list | logs ID | cancel ID | retry ID | worker"),
    "worker": ("jobs", "run queued jobs (= alt jobs worker); --forever: a standing worker process or machine"),
    "export": ("export", "annotations (csv/jsonl/parquet/datasets), TRL SFT / DPO / KTO datasets, a round's snapshot"),
    "users": ("users", "web app users: add | list | passwd | deactivate | activate"),
    "queue": ("queue", "the annotation queue's order per task: set STRATEGY --task T | score | show"),
}


def command_help(name: str) -> str:
    return COMMANDS[name][1]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of the command in ``argv`` is imported (None: every module)."""
    import importlib

    parser = argparse.ArgumentParser(prog="alt", description="ALT Studio: align language models with textual feedback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    selected = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if argv is None:
        modules = dict.fromkeys(m for m, _ in COMMANDS.values())
    else:
        modules = [COMMANDS[selected][0]] if selected in COMMANDS else []
    for module in modules:
        importlib.import_module(f"{__name__}.{module}").register(sub, common, selected)
    for name, (_, help_) in COMMANDS.items():  # the others: listed in --help, never parsed
        if name not in sub.choices:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


def _quiet_deepspeed_on_cpu() -> None:
    """DeepSpeed (imported by transformers) warns on every start when it finds no GPU; tell it up front
    (without importing torch: a GPU shows as /dev/nvidia0)."""
    if "DS_ACCELERATOR" not in os.environ and not os.path.exists("/dev/nvidia0"):
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    _quiet_deepspeed_on_cpu()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
