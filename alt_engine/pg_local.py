"""A throwaway local PostgreSQL cluster (tests, load tests, trying the studio on PostgreSQL).

Uses Debian's PostgreSQL binaries (``apt-get install postgresql``; found under
``/usr/lib/postgresql/*/bin`` or on PATH). ``initdb`` refuses to run as root, so as
root the cluster belongs to the ``postgres`` user. Trust auth on 127.0.0.1 only.

    python -m alt_engine.pg_local start DIR [PORT]   # prints the SQLAlchemy URL
    python -m alt_engine.pg_local stop DIR
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path


def pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest version first; None if not installed."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class LocalCluster:
    """``initdb`` + ``pg_ctl start`` in ``directory``; ``url(name)`` of a database, ``create_database``."""

    def __init__(self, directory: str | Path, port: int | None = None, max_connections: int = 400):
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries not found: apt-get install postgresql")
        self.bin, self.dir, self.port = bindir, Path(directory), port or _free_port()
        self.data = self.dir / "data"
        self.max_connections = max_connections

    def start(self) -> LocalCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
            for parent in self.dir.parents:  # the postgres user must reach the directory
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(_as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                      "--auth=trust", "-E", "UTF8", "--no-sync"]),
                           check=True, capture_output=True, text=True)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}")
        run = subprocess.run(_as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                                        str(self.dir / "server.log"), "-w", "start"]), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {run.stdout}{run.stderr}")
        return self

    def stop(self) -> None:
        subprocess.run(_as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       capture_output=True)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "start":
        cluster = LocalCluster(argv[1], int(argv[2]) if len(argv) > 2 else None).start()
        print(cluster.create_database("alt"))
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        LocalCluster(argv[1], 1).stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
