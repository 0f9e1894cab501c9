"""Load test: simulated annotators pulling and submitting through the JSON API, then integrity checks.

By default starts its own ``alt serve`` (tiny model, temp database with enough
generations, one user per annotator) and stops it afterwards. Each annotator is
a thread with its own HTTP session: sign in, then loop GET /api/annotate/next →
(think) → POST /api/annotate/submit until the time is up.

Checks afterwards, straight from the database:
  * every acknowledged submission is a Feedback row (same generation, same user), unless its author undid it;
  * no item has more human labels than the task's overlap k, none twice from one person.
Prints p50/p95/p99 latency of next-item and submit, "lost" and "over-labelled" counts; exits 1 if a check fails
or p95 ≥ the target.

``--harsh`` makes the annotators misbehave the way real ones and flaky networks do: 2 s leases with a mean
think time of 1 s (so about a quarter of the submits arrive after the lease expired and the item went to
someone else: those are refused with 409, not errors), every submit sent three times at once, and one
submission in ten undone and redone.

    .venv/bin/python scripts/load_annotators.py                  # 20 annotators, 30 s, own server
    .venv/bin/python scripts/load_annotators.py --think 0        # no pause between items (stress)
    .venv/bin/python scripts/load_annotators.py --harsh --target-ms 50   # short leases, triple/late submits, undo
    .venv/bin/python scripts/load_annotators.py --url http://127.0.0.1:7860 --db annotations.db \\
        --users u1,u2 --password secret123                        # against a running server
    .venv/bin/python scripts/load_annotators.py --postgres --servers 2 --annotators 50
        # a PostgreSQL cluster of its own (alt_engine.pg_local) and 2 app processes; annotators alternate
    .venv/bin/python scripts/load_annotators.py --postgres --workers 2   # one `alt serve --workers 2`
    .venv/bin/python scripts/load_annotators.py --seconds 60 --strategy fixed,uncertainty
        # the queue orders one after the other (fresh database and server each; uncertainty scored by the
        # real score job on the tiny model first); fails unless p95 next-item stays within --max-ratio of the first
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alt_engine.db import Feedback, Generation, Prompt, Round, Task, init_db, select, session_scope  # noqa: E402
from alt_engine.tasks import get_or_create_task  # noqa: E402
from alt_engine.users import add_user  # noqa: E402


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acked: dict[int, tuple[str, int, list[int]]] = field(default_factory=dict)  # lease -> (user, generation, ids)
    errors: list[str] = field(default_factory=list)
    empty: int = 0
    late_refused: int = 0  # 409: the lease expired and the item went to others (expected in --harsh)
    duplicates: int = 0  # repeats of a submit answered "duplicate"
    undone: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def seed(db: str, n: int, k: int, users: list[str], password: str, strategy: str = "fixed") -> None:
    """A task with overlap k and queue order ``strategy``, one open round of n generations, and the annotators."""
    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        task.annotations_per_item, task.queue_strategy = k, strategy
        rnd = Round(task_id=task.id, number=1, status="labelling")
        s.add(rnd)
        s.flush()
        prompts = [Prompt(task_id=task.id, text=f"Load-test prompt {i}: explain something briefly.") for i in range(n)]
        s.add_all(prompts)
        s.flush()
        s.add_all([Generation(prompt_id=p.id, round_id=rnd.id,
                              response=f"Response {p.id}: " + "lorem ipsum " * (5 + p.id * 7 % 15)) for p in prompts])
    for u in users:
        add_user(db, u, password)


def score(db: str, workdir: Path) -> float:
    """The queue's ``score`` job (what sampling queues when the order needs it), run here on the tiny model as
    the served version; its seconds."""
    from alt_engine.db import ModelVersion
    from alt_engine.jobs import create_job, run_job_inline
    from alt_engine.tiny import save_tiny

    model = workdir / "model"
    if not (model / "config.json").exists():
        save_tiny(model)
    with session_scope(db) as s:
        if not s.exec(select(ModelVersion).where(ModelVersion.status == "served")).first():
            s.add(ModelVersion(name="v0-base", path=str(model), status="served"))
        task_id = s.exec(select(Task).order_by(Task.id)).first().id
    t0 = time.perf_counter()
    job = run_job_inline(db, create_job(db, "score", {"task_id": task_id, "settings": {
        "cache_dir": str(workdir / "cache"), "device": "cpu"}}))
    if job.status != "succeeded":
        raise SystemExit(f"score job failed: {job.error}")
    return time.perf_counter() - t0


def start_server(db: str, workdir: Path, name: str = "server", workers: int = 1,
                 lease_seconds: int = 300, wait: float = 120) -> tuple[subprocess.Popen, str]:
    from alt_engine.tiny import save_tiny

    model = workdir / "model"
    if not (model / "config.json").exists():
        save_tiny(model)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ALT_SECRET_KEY": "load-test", "ALT_CACHE_DIR": str(workdir / "cache"), "ALT_DEVICE": "cpu",
           "ALT_LEASE_SECONDS": str(lease_seconds)}
    log_path = workdir / f"{name}.log"
    log = open(log_path, "w")
    cli = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*cli, "serve", "--db", db, "--model", str(model), "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + wait
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


SIGN_IN = threading.Semaphore(4)


def annotator(url: str, name: str, password: str, categories: list[str], until: float, think: float,
              stats: Stats, seed_: int, harsh: bool = False) -> None:
    rng = random.Random(seed_)
    with httpx.Client(base_url=url, timeout=30) as c, ThreadPoolExecutor(3) as pool:
        with SIGN_IN:  # people do not all sign in within the same 100 ms (and the throttle counts per address)
            r = c.post("/api/login", json={"username": name, "password": password})
        if r.status_code != 200:
            with stats.lock:
                stats.errors.append(f"{name}: login {r.status_code} {r.text[:100]}")
            return

        def timed_submit(body):
            t0 = time.perf_counter()
            r = c.post("/api/annotate/submit", json=body)
            return r, 1000 * (time.perf_counter() - t0)

        while time.time() < until:
            t0 = time.perf_counter()
            r = c.get("/api/annotate/next")
            t1 = time.perf_counter()
            if r.status_code != 200:
                with stats.lock:
                    stats.errors.append(f"{name}: next {r.status_code} {r.text[:100]}")
                continue
            item = r.json()["item"]
            with stats.lock:
                stats.next_ms.append(1000 * (t1 - t0))
            if item is None:
                with stats.lock:
                    stats.empty += 1
                time.sleep(0.2)
                continue
            if think:
                time.sleep(rng.uniform(0, 2 * think))
            body = {"lease_id": item["lease_id"], "category": rng.choice(categories)}
            if rng.random() < 0.3:
                body["text"] = "Clear, but could be shorter."
            # harsh: the same submit three times at once (double clicks, a retrying proxy)
            answers = list(pool.map(timed_submit, [body] * (3 if harsh else 1)))
            with stats.lock:
                for r, ms in answers:
                    stats.submit_ms.append(ms)
                    status = r.json().get("status") if r.status_code == 200 else None
                    if status == "saved":
                        stats.acked[item["lease_id"]] = (name, item["generation_id"], r.json()["feedback_ids"])
                    elif status == "duplicate":
                        stats.duplicates += 1
                    elif r.status_code == 409 and harsh:
                        stats.late_refused += 1
                    else:
                        stats.errors.append(f"{name}: submit {r.status_code} {r.text[:100]}")
            if harsh and rng.random() < 0.1 and any(r.status_code == 200 for r, _ in answers):
                r = c.post("/api/annotate/undo")
                with stats.lock:
                    if r.status_code == 200:
                        stats.acked.pop(r.json()["item"]["lease_id"], None)
                        stats.undone += 1
                    elif r.status_code != 400:  # 400: nothing to undo / item went to others: fine
                        stats.errors.append(f"{name}: undo {r.status_code} {r.text[:100]}")


def check(db: str, stats: Stats, k: int) -> tuple[int, int, list[str]]:
    """(lost, over-labelled items, problems) found in the database (0, 0, [] = all good)."""
    problems, lost, over = [], 0, 0
    with session_scope(db) as s:
        rows = {f.id: f for f in s.exec(select(Feedback).where(Feedback.source.like("human:%")))}
        for user, gen_id, ids in stats.acked.values():
            for fid in ids:
                f = rows.get(fid)
                if f is None or f.generation_id != gen_id or f.source != f"human:{user}":
                    lost += 1
                    problems.append(f"acknowledged submission lost: {user} on generation {gen_id} (feedback {fid})")
        per_item: dict[int, list[str]] = {}
        for f in rows.values():
            if f.kind in ("category", "text"):
                per_item.setdefault(f.generation_id, []).append(f.source)
        for gen_id, sources in per_item.items():
            if len(sources) > k:
                over += 1
                problems.append(f"generation {gen_id} labelled {len(sources)} times (overlap k = {k}): {sources}")
            if len(set(sources)) != len(sources):
                problems.append(f"generation {gen_id} labelled twice by the same person: {sources}")
        n_labels = sum(len(v) for v in per_item.values())
        if n_labels != len(stats.acked):
            problems.append(f"{n_labels} human labels in the database but {len(stats.acked)} acknowledged")
    return lost, over, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--think", type=float, default=0.25, help="mean pause before submitting (s), uniform 0..2x")
    ap.add_argument("--generations", type=int, default=4000)
    ap.add_argument("--overlap", type=int, default=1, help="annotations per item (k)")
    ap.add_argument("--url", default=None, help="use a running server (with --db to check it)")
    ap.add_argument("--db", default=None)
    ap.add_argument("--users", default=None, help="comma-separated existing users (with --url)")
    ap.add_argument("--password", default="loadtest123")
    ap.add_argument("--target-ms", type=float, default=100.0)
    ap.add_argument("--start-timeout", type=float, default=120, help="seconds to wait for the started server")
    ap.add_argument("--harsh", action="store_true", help="2 s leases, think 1 s, triple submits, late submits, undo")
    ap.add_argument("--lease-seconds", type=int, default=None, help="lease length of the started server "
                                                                     "(default 300; --harsh: 2)")
    ap.add_argument("--postgres", action="store_true", help="own server(s) on a PostgreSQL cluster of its own")
    ap.add_argument("--servers", type=int, default=1, help="app processes of its own (each on its own port)")
    ap.add_argument("--workers", type=int, default=1, help="alt serve --workers for each of its servers")
    ap.add_argument("--strategy", default="fixed",
                    help="queue order(s) of the seeded task, comma-separated: each runs in turn on a fresh database "
                         "(fixed, uncertainty, disagreement, coverage, mix)")
    ap.add_argument("--max-ratio", type=float, default=1.5,
                    help="with several --strategy: p95 next-item of each ≤ this × the first's")
    args = ap.parse_args(argv)
    if args.harsh and args.think == ap.get_default("think"):
        args.think = 1.0
    strategies = [x.strip() for x in args.strategy.split(",") if x.strip()]
    results = [run_once(args, strategy) for strategy in strategies]
    ok = all(code == 0 for code, _ in results)
    if len(results) > 1:
        first = results[0][1]
        for strategy, (_, p95) in zip(strategies[1:], results[1:]):
            ratio = p95 / first if first else float("inf")
            ok &= ratio <= args.max_ratio
            print(f"p95 next-item {strategy} / {strategies[0]}: {p95:.1f} / {first:.1f} ms = {ratio:.2f}× "
                  f"(target ≤ {args.max_ratio:g}×: {'met' if ratio <= args.max_ratio else 'MISSED'})")
    return 0 if ok else 1


def run_once(args, strategy: str) -> tuple[int, float]:
    """One load run with the seeded task's queue order ``strategy``: (exit status, p95 next-item in ms)."""
    lease_seconds = args.lease_seconds or (2 if args.harsh else 300)
    procs: list[subprocess.Popen] = []
    cluster = None
    names = args.users.split(",") if args.users else [f"annotator{i:02d}" for i in range(args.annotators)]
    tmp = Path(tempfile.mkdtemp(prefix="alt-load-"))
    if args.url:
        urls, db = [args.url], args.db
    else:
        if args.postgres:
            from alt_engine.pg_local import LocalCluster

            shm = Path("/dev/shm")  # the cluster in memory where there is one: the figure is the app's, not the disk's
            cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="alt-load-pg-", dir=shm if shm.is_dir() else None)))
            cluster.start()
            db = cluster.create_database("load")
        else:
            db = str(tmp / "load.db")
        seed(db, args.generations, args.overlap, names, args.password, strategy)
        from alt_engine.queue_order import parse_strategy

        if parse_strategy(strategy).needs_scores:
            print(f"queue order {strategy}: score job on {args.generations} generations took {score(db, tmp):.1f} s")
        urls = []
        for i in range(args.servers):
            proc, url = start_server(db, tmp, f"server{i}", args.workers, lease_seconds, args.start_timeout)
            procs.append(proc)
            urls.append(url)
    url = ", ".join(urls)
    k = args.overlap
    categories = ["Excellent", "Good", "Mediocre", "Bad", "Horrible"]
    if db:
        with session_scope(db) as s:
            task = s.exec(select(Task).order_by(Task.id)).first()
            k, categories = max(1, task.annotations_per_item), list(task.categories)
    stats = Stats()
    try:
        until = time.time() + args.seconds
        threads = [threading.Thread(target=annotator, args=(urls[i % len(urls)], n, args.password, categories,
                                                             until, args.think, stats, i, args.harsh))
                   for i, n in enumerate(names)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    where = "PostgreSQL" if db and "://" in db else "SQLite"
    print(f"queue order {strategy if not args.url else '(as the server has it)'}: "
          f"{len(names)} annotators, {wall:.1f} s, think {args.think} s, overlap k={k}, {where}, "
          f"{'HARSH, ' if args.harsh else ''}lease {lease_seconds if not args.url else '?'} s, "
          f"{len(urls)} server(s) x {args.workers} worker(s): {url}")
    print(f"submissions acknowledged: {len(stats.acked)} ({len(stats.acked) / wall:.1f}/s); "
          f"requests: {len(stats.next_ms) + len(stats.submit_ms)}; empty queue answers: {stats.empty}; "
          f"errors: {len(stats.errors)}")
    if args.harsh:
        print(f"  late submits refused (409): {stats.late_refused}; repeats answered 'duplicate': "
              f"{stats.duplicates}; undone and redone: {stats.undone}")
    for label, xs in (("next-item", stats.next_ms), ("submit", stats.submit_ms)):
        print(f"  {label:<9} n={len(xs):>6}  p50 {pct(xs, 50):6.1f} ms  p95 {pct(xs, 95):6.1f} ms  "
              f"p99 {pct(xs, 99):6.1f} ms  mean {statistics.fmean(xs) if xs else float('nan'):6.1f} ms")
    for e in stats.errors[:5]:
        print("  error:", e)
    lost, over, problems = check(db, stats, k) if db else (-1, -1, ["no --db: integrity not checked"])
    if cluster is not None:
        from alt_engine.db import dispose_engine

        dispose_engine(db)
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)
    if procs:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in problems[:10]:
        print("  PROBLEM:", p)
    ok_latency = pct(stats.next_ms, 95) < args.target_ms and pct(stats.submit_ms, 95) < args.target_ms
    print(f"lost: {lost}; over-labelled: {over}; integrity: {'OK' if not problems else f'{len(problems)} problem(s)'}"
          f"; p95 target < {args.target_ms:.0f} ms: {'met' if ok_latency else 'MISSED'}")
    return (0 if not problems and ok_latency and not stats.errors else 1), pct(stats.next_ms, 95)


if __name__ == "__main__":
    sys.exit(main())
