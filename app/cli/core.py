"""``alt init | prompts import | sample | status | models | settings | serve``."""

from __future__ import annotations

import json

from sqlalchemy import func
from sqlmodel import select

from alt_engine import prompts as prompt_import
from alt_engine.db import ModelVersion, Prompt, Task, VersionStatus, init_db, session_scope
from alt_engine.tasks import BUILTIN_TASKS, DEMOS, get_or_create_task
from alt_engine.versions import ensure_base_version, list_versions, promote, rollback, served_version

from . import CLIError, command_help, settings_from


def register(sub, common, selected: str | None = None) -> None:
    p = sub.add_parser("init", parents=[common], help=command_help("init"))
    p.add_argument("--task", action="append", default=None,
                   help=f"create task(s) (built-in: {', '.join(BUILTIN_TASKS)})")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("prompts", parents=[common], help=command_help("prompts"))
    psub = p.add_subparsers(dest="action", required=True)
    imp = psub.add_parser("import", parents=[common], help="import prompts (CSV, JSONL, parquet, datasets folder)")
    imp.add_argument("file", nargs="?", help="the prompt file (or --builtin NAME)")
    imp.add_argument("--builtin", choices=list(DEMOS), default=None,
                     help="import a demo task's shipped prompt set (into the task of that name unless --task)")
    imp.add_argument("--task", default=None, help="task to import into (default: 'default', or the --builtin name)")
    imp.add_argument("--text-column", default="prompt")
    imp.add_argument("--messages-column", default="messages")
    imp.add_argument("--split-column", default="split")
    imp.add_argument("--split", choices=prompt_import.SPLITS, default=None, help="put every row in this split")
    imp.add_argument("--meta-column", action="append", default=[], help="copy this column into the prompt's metadata")
    imp.set_defaults(func=cmd_import)

    p = sub.add_parser("sample", parents=[common], help=command_help("sample"))
    p.add_argument("--task", default="default")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    p.add_argument("--split", default="train", choices=prompt_import.SPLITS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 160 (as rounds and the console sample: few answers truncate)")
    p.add_argument("--batch-size", type=int, default=0, help="sequences decoded together (0: measured)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--condition", default=None, help="feedback text to condition on")
    p.add_argument("--exemplar", action="store_true", help="condition on the task's exemplar category")
    p.add_argument("--guidance", type=float, default=0.0, metavar="GAMMA",
                   help="feedback guidance γ for conditioned samples (0 = plain sampling; docs/guidance.md)")
    p.add_argument("--negative", default="worst", metavar="F",
                   help="f⁻ of guidance: worst (the worst feedback), plain (no feedback) or any text")
    p.add_argument("--background", action="store_true", help="queue a job, print its id and return")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("status", parents=[common], help=command_help("status"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("models", parents=[common], help=command_help("models"))
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", parents=[common]).set_defaults(func=cmd_models_list)
    pr = msub.add_parser("promote", parents=[common])
    pr.add_argument("version", type=int)
    pr.set_defaults(func=cmd_models_promote)
    msub.add_parser("rollback", parents=[common]).set_defaults(func=cmd_models_rollback)

    p = sub.add_parser("settings", parents=[common], help=command_help("settings"))
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("serve", parents=[common], help=command_help("serve"))
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="app processes on the port (env ALT_WORKERS; more than 1 wants PostgreSQL, ALT_DATABASE_URL)")
    p.set_defaults(func=cmd_serve)


def setup(settings) -> ModelVersion:
    """Create/upgrade the database and make sure a served model version exists."""
    init_db(settings.db)
    with session_scope(settings.db) as s:
        get_or_create_task(s, "default")
        served = served_version(s)
    if served is not None:
        return served
    from alt_engine.modeling import resolve_model

    path = resolve_model(settings.model, settings.cache_dir)  # converts the default model once
    with session_scope(settings.db) as s:
        return ensure_base_version(s, settings.model, path)


def cmd_init(args) -> None:
    settings = settings_from(args)
    version = setup(settings)
    with session_scope(settings.db) as s:
        for name in args.task or []:
            get_or_create_task(s, name)
    print(f"database {settings.db} ready; serving {version.name} ({version.path})")


def cmd_import(args) -> None:
    settings = settings_from(args)
    if (args.file is None) == (args.builtin is None):
        raise CLIError("give a prompt file or --builtin NAME (one of them)")
    init_db(settings.db)
    cols = prompt_import.ColumnMap(text=args.text_column, messages=args.messages_column, split=args.split_column,
                                   meta=args.meta_column)
    task = args.task or args.builtin or "default"
    if args.builtin:
        print(prompt_import.import_builtin(settings.db, args.builtin, task, args.split))
    else:
        print(prompt_import.import_prompts(settings.db, args.file, task, cols, args.split, settings.probe_share))
    if args.builtin:
        print(f"feedback for this task: --task {task} --provider {DEMOS[args.builtin].provider}")


def cmd_sample(args) -> None:
    from . import run_job

    settings = settings_from(args)
    if args.model is None:
        setup(settings)
    else:
        init_db(settings.db)
    with session_scope(settings.db) as s:
        task = get_or_create_task(s, args.task)
        if args.model is not None:
            from alt_engine.modeling import resolve_model

            path = resolve_model(args.model, settings.cache_dir)
            version = s.exec(select(ModelVersion).where(ModelVersion.path == path)).first() or ensure_base_version(
                s, args.model, path)
        else:
            version = served_version(s)
    from alt_engine.plan import plan_sample

    try:  # bad values are refused before a job exists
        spec = plan_sample(task, version_id=version.id, split=args.split, limit=args.limit, n=args.n,
                           temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                           seed=args.seed, batch_size=args.batch_size, guidance=args.guidance,
                           negative=args.negative, objective=version.objective,
                           condition=args.condition or ("exemplar" if args.exemplar else "none"), backend=args.backend)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    job = run_job(settings, spec.kind, spec.params(), args.background)
    if args.background:
        print(f"started sampling job {job}: follow it with `alt jobs list`")
        return
    r = job.result
    print(f"round {r['round']}: {r['generations']} generations from {version.name} "
          f"({r['prompts']} prompts × {args.n}; {r['truncated']} truncated)")


def status_rows(db: str) -> list[dict]:
    """Per round: prompts, generations, generations with human / AI / no feedback, flagged, truncated."""
    from alt_engine.reports import round_rows

    return [{k: v for k, v in row.items() if k != "round_id"} for row in round_rows(db)]


def cmd_status(args) -> None:
    settings = settings_from(args)
    init_db(settings.db)
    rows = status_rows(settings.db)
    with session_scope(settings.db) as s:
        n_prompts = {t.name: s.exec(select(func.count()).where(Prompt.task_id == t.id)).one()
                     for t in s.exec(select(Task))}
        served = served_version(s)
    if args.json:
        print(json.dumps(dict(prompts=n_prompts, served=served.name if served else None, rounds=rows), indent=2))
        return
    print(f"database: {settings.db}   served model: {served.name + ' (' + served.path + ')' if served else 'none'}")
    print("prompts: " + (", ".join(f"{k}={v}" for k, v in n_prompts.items()) or "none"))
    if not rows:
        print("no rounds yet: `alt sample` starts one")
        return
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))


def cmd_models_list(args) -> None:
    from alt_engine.jobs import refresh

    settings = settings_from(args)
    init_db(settings.db)
    refresh(settings.db)
    with session_scope(settings.db) as s:
        for v in list_versions(s):
            mark = "*" if v.status == VersionStatus.SERVED else " "
            metrics = ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}"
                                for k, x in (v.metrics or {}).items() if not isinstance(x, dict))
            print(f"{mark} {v.id:>3} {v.name:<16} {v.status:<8} {v.objective:<6} parent={v.parent_id} {v.path}"
                  f"  {metrics}")


def cmd_models_promote(args) -> None:
    settings = settings_from(args)
    with session_scope(settings.db) as s:
        print(f"serving {promote(s, args.version).name}")


def cmd_models_rollback(args) -> None:
    settings = settings_from(args)
    with session_scope(settings.db) as s:
        print(f"serving {rollback(s).name}")


def cmd_settings(args) -> None:
    for name, value, help_ in settings_from(args).describe():
        print(f"{name:<18} {value!s:<40} {help_}")


def cmd_serve(args) -> None:
    from app.server import serve

    settings = settings_from(args)
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.workers:
        settings.workers = args.workers
    setup(settings)
    serve(settings)
