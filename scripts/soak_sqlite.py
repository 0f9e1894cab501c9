"""Soak test on SQLite: ``alt serve`` under 20 annotators while another process reads the database every second
and backups run (``sqlite3 .backup``), then a kill -9 and a restart: every acknowledged label must be there.

Bounded (``--seconds``, default 60) and on 127.0.0.1 only, on a tiny model (no lock needed). The reader and the
backup are other SQLite clients that open and cleanly close the database — what made a server whose schema lock
had dropped its WAL locks answer "saved" into an unlinked WAL (#23 item 1). Uses Debian's ``sqlite3`` CLI when it
is installed (``apt-get install sqlite3``), else Python's sqlite3 module (its backup API) in a child process.

    .venv/bin/python scripts/soak_sqlite.py                      # 20 annotators, 60 s
    .venv/bin/python scripts/soak_sqlite.py --annotators 40 --seconds 300 --backup-every 2

Prints the figures as JSON; exits 1 if an acknowledged label was lost, a read or a backup failed, or the
server logged a disk I/O error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from load_annotators import Stats, annotator, check, seed, start_server  # noqa: E402

from alt_engine.db import dispose_engine  # noqa: E402

PY_READ = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute(sys.argv[2]).fetchone()[0]); "
           "c.close()")
PY_BACKUP = ("import sqlite3, sys; a = sqlite3.connect(sys.argv[1]); b = sqlite3.connect(sys.argv[2]); a.backup(b); "
             "b.close(); a.close()")


def other_client(db: str, sql: str | None = None, backup: str | None = None) -> subprocess.CompletedProcess:
    """One visit by another SQLite client: a query, or a backup to ``backup``; it opens and closes the database."""
    cli = shutil.which("sqlite3")
    if backup is not None:
        argv = [cli, db, f".backup '{backup}'"] if cli else [sys.executable, "-c", PY_BACKUP, db, backup]
    else:
        argv = [cli, db, sql] if cli else [sys.executable, "-c", PY_READ, db, sql]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--items", type=int, default=3000, help="generations in the open round")
    ap.add_argument("--think", type=float, default=0.2, help="mean seconds an annotator looks at an item")
    ap.add_argument("--backup-every", type=float, default=5.0, help="seconds between backups")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (database, backups, logs)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="alt-soak-"))
    db, password = str(work / "soak.db"), "soak-pass-1"
    users = [f"ann{i:02d}" for i in range(args.annotators)]
    seed(db, args.items, 1, users, password)
    dispose_engine(db)  # this process does not hold the database while the server runs
    proc, url = start_server(db, work, wait=300)
    stats, stop = Stats(), threading.Event()
    reads, backups = {"ok": 0, "failed": 0, "counts": []}, {"ok": 0, "failed": 0}

    def reader() -> None:  # another process reads the database every second
        while not stop.wait(1.0):
            r = other_client(db, "select count(*) from feedback")
            if r.returncode == 0 and r.stdout.strip().isdigit():
                reads["ok"] += 1
                reads["counts"].append(int(r.stdout))
            else:
                reads["failed"] += 1

    def backer() -> None:  # and a backup runs every few seconds
        i = 0
        while not stop.wait(args.backup_every):
            i += 1
            r = other_client(db, backup=str(work / f"backup-{i % 3}.db"))
            backups["ok" if r.returncode == 0 else "failed"] += 1

    helpers = [threading.Thread(target=reader, daemon=True), threading.Thread(target=backer, daemon=True)]
    for t in helpers:
        t.start()
    until = time.time() + args.seconds
    threads = [threading.Thread(target=annotator, args=(url, u, password, ["Excellent", "Good", "Mediocre", "Bad",
                                                                           "Horrible"], until, args.think, stats, i))
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in helpers:
        t.join()
    last_backup = other_client(db, backup=str(work / "backup-final.db"))
    proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown: nothing gets checkpointed on the way out
    proc.wait()
    log = (work / "server.log").read_text()
    proc, url = start_server(db, work, name="server-restarted", wait=300)  # the restart
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    lost, over, problems = check(db, stats, 1)
    integrity = other_client(str(work / "backup-final.db"), "pragma integrity_check").stdout.strip()
    in_backup = other_client(str(work / "backup-final.db"), "select count(*) from feedback").stdout.strip()
    figures = {
        "annotators": args.annotators, "seconds": args.seconds, "acknowledged": len(stats.acked), "lost": lost,
        "over_labelled": over, "http_errors": len(stats.errors), "reads_ok": reads["ok"],
        "reads_failed": reads["failed"], "reads_monotonic": reads["counts"] == sorted(reads["counts"]),
        "backups_ok": backups["ok"] + (last_backup.returncode == 0), "backups_failed": backups["failed"],
        "final_backup_integrity": integrity, "final_backup_feedback_rows": int(in_backup or 0),
        "disk_io_errors_in_server_log": log.count("disk I/O error"),
        "sqlite3_cli": bool(shutil.which("sqlite3")),
        "submit_p50_ms": round(sorted(stats.submit_ms)[len(stats.submit_ms) // 2], 1) if stats.submit_ms else None,
    }
    print(json.dumps(figures, indent=1))
    for p in problems[:10]:
        print("PROBLEM:", p, file=sys.stderr)
    for e in stats.errors[:10]:
        print("ERROR:", e, file=sys.stderr)
    if args.keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    bad = (lost or over or reads["failed"] or backups["failed"] or last_backup.returncode
           or figures["disk_io_errors_in_server_log"] or integrity != "ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
