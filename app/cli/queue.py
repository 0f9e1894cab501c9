"""``alt queue set | score | show``: the annotation queue's order per task (``alt_engine.queue_order``).

``set TASK STRATEGY`` chooses which item annotators get next (fixed, uncertainty, disagreement, coverage,
mix[:uncertainty=2,coverage=1]); ``score`` runs the scoring job (the served model's label uncertainty and the
labels' disagreement) on the task's open rounds; ``show`` prints the next items and why they come next."""

from __future__ import annotations

from . import CLIError, command_help, run_job, settings_from


def register(sub, common, selected: str | None = None) -> None:
    from alt_engine.queue_order import STRATEGIES

    p = sub.add_parser("queue", parents=[common], help=command_help("queue"))
    qsub = p.add_subparsers(dest="action", required=True)
    st = qsub.add_parser("set", parents=[common], help="set a task's queue order")
    st.add_argument("strategy", help=f"{' | '.join(STRATEGIES)}; a mix may weigh its scores: "
                                     "mix:uncertainty=2,disagreement=0,coverage=1")
    st.add_argument("--task", default="default")
    st.set_defaults(func=cmd_set)
    sc = qsub.add_parser("score", parents=[common], help="score the open rounds' generations (a job)")
    sc.add_argument("--task", default="default")
    sc.add_argument("--round", type=int, action="append", dest="rounds", help="round number (repeatable; "
                                                                              "default: the open rounds)")
    sc.add_argument("--no-uncertainty", action="store_true", help="only the labels' disagreement (no model)")
    sc.add_argument("--background", action="store_true", help="queue the job for the worker and return")
    sc.set_defaults(func=cmd_score)
    sh = qsub.add_parser("show", parents=[common], help="the next items in the queue and why")
    sh.add_argument("--task", default="default")
    sh.add_argument("--limit", type=int, default=20)
    sh.set_defaults(func=cmd_show)


def _task(db: str, name: str):
    from alt_engine.db import Task, init_db, select, session_scope

    init_db(db)
    with session_scope(db) as s:
        task = s.exec(select(Task).where(Task.name == name)).first()
    if task is None:
        raise CLIError(f"no task {name!r}")
    return task


def cmd_set(args) -> None:
    from alt_engine.queue_order import set_strategy

    settings = settings_from(args)
    _task(settings.db, args.task)
    task = set_strategy(settings.db, args.task, args.strategy)
    print(f"task {task.name}: queue order {task.queue_strategy}")


def cmd_score(args) -> None:
    from alt_engine.db import Round, select, session_scope

    settings = settings_from(args)
    task = _task(settings.db, args.task)
    params: dict = {"task_id": task.id, "uncertainty": not args.no_uncertainty}
    if args.rounds:
        with session_scope(settings.db) as s:
            ids = {r.number: r.id for r in s.exec(select(Round).where(Round.task_id == task.id))}
        missing = [n for n in args.rounds if n not in ids]
        if missing:
            raise CLIError(f"task {task.name!r} has no round {', '.join(map(str, missing))}")
        params["round_ids"] = [ids[n] for n in args.rounds]
    job = run_job(settings, "score", params, args.background)
    if args.background:
        print(f"started scoring job {job}: follow it with `alt jobs list`")
        return
    r = job.result
    print(f"scored {r['generations']} generations of {task.name} ({r['uncertainty_scored']} by the served model)")


def cmd_show(args) -> None:
    from alt_engine.queue_order import explain

    settings = settings_from(args)
    task = _task(settings.db, args.task)
    rows = explain(settings.db, task.name, args.limit)
    print(f"task {task.name}: queue order {task.queue_strategy}; next {len(rows)} item(s)")
    for r in rows:
        print(f"{r['position']:>4}  generation {r['generation']:<6} prompt {r['prompt']:<6} {r['why']}")
