"""Shared fixtures: a temp database, a tiny model saved to disk, and a tokenizer."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models: one thread each beats oversubscribing 2 cores (test process + served subprocesses + ranks).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --------------------------------------------------------------------------- databases: SQLite and PostgreSQL
# A test module that asks for ``dbkind`` (``pytestmark = pytest.mark.usefixtures("dbkind")``) runs once on SQLite
# and once on PostgreSQL: its ``db`` and ``make_db`` then give databases of that kind. Elsewhere both are SQLite.


def pytest_generate_tests(metafunc):
    if "dbkind" in metafunc.fixturenames:
        metafunc.parametrize("dbkind", ["sqlite", "postgresql"], scope="module")


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    """A PostgreSQL cluster of our own on a free port (skipped with the reason when PostgreSQL is missing)."""
    from alt_engine.pg_local import LocalCluster, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql; `make test` does it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install -r requirements.txt (psycopg[binary])")
    # not under pytest's basetemp: a second pytest run on the machine prunes old basetemps, and PostgreSQL shuts
    # down when its data directory's lock file disappears (seen: the rest of the session refused connections)
    folder = Path(tempfile.mkdtemp(prefix="alt-pg-"))
    cluster = LocalCluster(folder).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _make_db_factory(request, tmp_path_factory, kind: str):
    from alt_engine.db import dispose_engine, init_db

    made = []

    def make(name: str = "test", init: bool = True) -> str:
        if kind == "postgresql":
            db = request.getfixturevalue("pg_cluster").create_database()
        else:
            db = str(tmp_path_factory.mktemp("db") / f"{name}.db")
        if init:
            init_db(db)
        made.append(db)
        return db

    def dispose(db: str) -> None:
        from alt_engine.serving import close_hub

        close_hub(db)  # an app made in-process follows promotions in this database: stop before it goes
        dispose_engine(db)

    return make, made, dispose


@pytest.fixture
def make_db(request, tmp_path_factory):
    """``make_db(name)`` → a fresh initialised database (a SQLite path, or a PostgreSQL URL under ``dbkind``)."""
    kind = request.getfixturevalue("dbkind") if "dbkind" in request.fixturenames else "sqlite"
    make, made, dispose = _make_db_factory(request, tmp_path_factory, kind)
    yield make
    for db in made:
        dispose(db)


@pytest.fixture
def db(make_db):
    """A fresh, initialised database (path or URL)."""
    return make_db("test")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + byte-level BPE tokenizer (with chat template) saved to disk."""
    from alt_engine.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alt_engine.tiny import tiny_tokenizer

    return tiny_tokenizer()


# --------------------------------------------------------------------------- annotation app (engineer D)


def seed_annotation_db(path: str, n: int = 6, k: int = 1, task: str = "default", responses: list[str] | None = None,
                       chat: bool = False, questions: list[str] | None = None) -> dict:
    """A database with one task, ``n`` prompts, one open round and one generation per prompt.

    Returns {"task": name, "round": id, "generations": [ids]}.
    """
    from alt_engine.db import Generation, Prompt, Round, init_db, session_scope
    from alt_engine.tasks import get_or_create_task

    init_db(path)
    with session_scope(path) as s:
        t = get_or_create_task(s, task)
        t.annotations_per_item = k
        rnd = Round(task_id=t.id, number=1, status="labelling")
        s.add(rnd)
        s.flush()
        ids = []
        for i in range(n):
            if chat:
                p = Prompt(task_id=t.id, messages=[{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": questions[i % len(questions)]
                                                    if questions else f"Question number {i}?"}])
            else:
                p = Prompt(task_id=t.id, text=f"Prompt number {i}: say something.")
            s.add(p)
            s.flush()
            response = responses[i % len(responses)] if responses else f"Response number {i}."
            g = Generation(prompt_id=p.id, round_id=rnd.id, response=response, conditioning="Excellent")
            s.add(g)
            s.flush()
            ids.append(g.id)
        return {"task": t.name, "round": rnd.id, "generations": ids}


def label_concurrently(db: str, users: list) -> list[int]:
    """Every user asks for items and labels them ("Good") at the same time until the queue is empty; the
    generation ids labelled, in the order the labels were saved."""
    import threading

    from alt_engine import annotation as ann

    got: list[int] = []
    lock = threading.Lock()

    def work(user):
        while (item := ann.next_item(db, user)) is not None:
            ann.submit(db, user, item.lease_id, ann.Submission(category="Good"))
            with lock:
                got.append(item.generation_id)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


@pytest.fixture
def annotation_db(make_db):
    """(db path or URL, seed info) with 6 generations, k = 1."""
    path = make_db("annotate", init=False)
    return path, seed_annotation_db(path)


def signed_in(app, name: str | None = None):
    """A TestClient on ``app``, signed in as ``name`` (password ``<name>pass1``) when given."""
    from fastapi.testclient import TestClient

    c = TestClient(app)
    if name:
        assert c.post("/api/login", json={"username": name, "password": f"{name}pass1"}).status_code == 200
    return c


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real ``alt serve`` subprocess on 127.0.0.1 (stop() ends it and returns its output)."""

    def __init__(self, db: str, model: str, workdir, env: dict | None = None, lease_seconds: int = 300,
                 start_timeout: float = 240):
        import subprocess
        import sys
        import time
        import urllib.request
        from pathlib import Path

        self.db, self.port = db, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(workdir) / "server.log"
        alt = str(Path(sys.executable).with_name("alt"))
        full_env = {**os.environ, "ALT_SECRET_KEY": "test-secret", "ALT_LEASE_SECONDS": str(lease_seconds),
                    "ALT_CACHE_DIR": str(Path(workdir) / "cache"), "ALT_DEVICE": "cpu", **(env or {})}
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen([alt, "serve", "--db", db, "--model", model, "--port", str(self.port)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=full_env, cwd=str(workdir))
        # a shared 2-core machine can take minutes to import gradio and torch
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alt serve exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"alt serve did not come up: {self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def stop(self) -> str:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except Exception:  # open event streams can hold a graceful shutdown: do not wait for them
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.log.read_text()


XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


@pytest.fixture(scope="module")
def live_server(request, tmp_path_factory):
    """``alt serve`` with a tiny model and a temp SQLite DB: 6 generations (one with an HTML/script payload, a chat
    prompt), users admin/adminpass1, alice/alicepass1, bob/bobpass12."""
    yield from live_server_for(request, tmp_path_factory, postgres=False)


def live_server_for(request, tmp_path_factory, postgres: bool):
    """The ``live_server`` fixture's body; ``postgres`` = on a fresh database of the tests' PostgreSQL cluster."""
    from alt_engine.tiny import save_tiny
    from alt_engine.users import add_user

    work = tmp_path_factory.mktemp("live")
    model = save_tiny(work / "model")
    db = request.getfixturevalue("pg_cluster").create_database() if postgres else str(work / "live.db")
    responses = ["Paris is the capital of France.", f"Sure! {XSS} done.", "I do not know.",
                 "Two plus two is four.", "Water boils at 100 C at sea level.", "Blue."]
    questions = ["What is the capital of France?", f"Repeat this: {XSS}", "What is 2+2?", "What is 2+2?",
                 "When does water boil?", "Name a colour."]
    info = seed_annotation_db(db, n=6, responses=responses, chat=True, questions=questions)
    from alt_engine.db import Feedback, session_scope

    with session_scope(db) as s:  # an AI suggestion on the fourth item
        s.add(Feedback(generation_id=info["generations"][3], source="llm:judge-x", kind="category",
                       category="Mediocre"))
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    add_user(db, "bob", "bobpass12")
    server = LiveServer(db, model, work)
    server.info = info
    yield server
    server.stop()
