"""``alt jobs list | logs ID | cancel ID | retry ID | worker``: the job queue every stage runs through.

``alt worker [--forever]`` is ``alt jobs worker``: the job worker in its own process (or on its own machine, against
the same PostgreSQL database as the app processes)."""

from __future__ import annotations

from alt_engine.vocab import JobStatus

from . import CLIError, command_help, settings_from


def register(sub, common, selected: str | None = None) -> None:
    p = sub.add_parser("jobs", parents=[common], help=command_help("jobs"))
    jsub = p.add_subparsers(dest="action", required=True)
    ls = jsub.add_parser("list", parents=[common], help="newest jobs with status, stage, progress")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_list)
    for name, func, help_ in (("logs", cmd_logs, "a job's log"), ("cancel", cmd_cancel, "stop a job"),
                              ("retry", cmd_retry, "queue a copy of a failed or cancelled job")):
        q = jsub.add_parser(name, parents=[common], help=help_)
        q.add_argument("job", type=int)
        q.set_defaults(func=func)
    _worker_options(jsub.add_parser("worker", parents=[common], help="run queued jobs now (the app starts one by "
                                                                     "itself)"))
    _worker_options(sub.add_parser("worker", parents=[common], help=command_help("worker")))


def _worker_options(w) -> None:
    w.add_argument("--forever", action="store_true",
                   help="keep running and take jobs as they are queued (a standing worker process or machine)")
    w.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the queue (--forever)")
    w.set_defaults(func=cmd_worker)


def cmd_list(args) -> None:
    from alt_engine.db import init_db
    from alt_engine.jobs import list_jobs

    settings = settings_from(args)
    init_db(settings.db)
    for j in list_jobs(settings.db, args.limit):
        eta = f" eta {j.eta_s:.0f}s" if j.eta_s else ""
        links = "".join(f" {k}={v}" for k, v in (("round", j.round_id), ("version", j.version_id)) if v)
        print(f"{j.id:>4} {j.kind:<8} {j.status:<9} {j.progress:4.0%}{eta}{links}  {j.error or j.message}"[:200])


def cmd_logs(args) -> None:
    from alt_engine.jobs import job_logs

    try:
        print(job_logs(settings_from(args).db, args.job))
    except ValueError as e:
        raise CLIError(str(e)) from e


def cmd_cancel(args) -> None:
    from alt_engine.jobs import cancel_job

    job = cancel_job(settings_from(args).db, args.job)
    print(f"job {job.id}: {job.status}" + (" (cancel requested)" if job.status == JobStatus.RUNNING else ""))


def cmd_retry(args) -> None:
    from alt_engine.jobs import retry_job

    print(f"queued job {retry_job(settings_from(args).db, args.job)} (retry of {args.job})")


def cmd_worker(args) -> None:
    from alt_engine.jobs import worker, worker_forever

    if args.forever:
        worker_forever(settings_from(args).db, args.poll)
    else:
        worker(settings_from(args).db)
