"""``alt export annotations|sft|dpo|kto|snapshot OUT``: the studio's data out, in TRL's formats too."""

from __future__ import annotations

from alt_engine import export
from alt_engine.db import init_db

from . import command_help, settings_from


def register(sub, common, selected: str | None = None) -> None:
    p = sub.add_parser("export", parents=[common], help=command_help("export"))
    p.add_argument("kind", choices=export.KINDS,
                   help="annotations: every feedback row with provenance; sft: prompt/completion conditioned as "
                        "training conditions it; dpo: prompt/chosen/rejected from the category order; kto: "
                        "prompt/completion/label; snapshot: a folder reproducing one round")
    p.add_argument("out", help="output file (.jsonl .csv .parquet) or folder (a datasets dataset / the snapshot)")
    p.add_argument("--format", choices=export.FORMATS, default=None, help="default: from OUT's suffix")
    p.add_argument("--task", default=None, help="only this task (needed when the database has several)")
    p.add_argument("--round", type=int, action="append", default=None, dest="rounds",
                   help="only this round number (repeat for several); sft default: the data pool's own choice")
    p.add_argument("--version", default=None,
                   help="sft/snapshot: the version whose tokenizer and conditioning format build the prompt "
                        "(default: the served one)")
    p.add_argument("--push-to-hub", nargs="?", const="", default=None, metavar="REPO",
                   help="also push it to this Hugging Face Hub dataset repo (no REPO: ALT_HUB_REPO), with "
                        "ALT_HUB_TOKEN (else HF_TOKEN or a saved login); the file is written even if the Hub "
                        "cannot be reached")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    settings = settings_from(args)
    init_db(settings.db)
    print(export.export_to(settings, args.kind, args.out, args.format, args.task, args.rounds, args.version,
                           args.push_to_hub))
