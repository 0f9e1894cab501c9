"""`alt serve --workers 2` on PostgreSQL, as a user runs it: the browser UI's Gradio calls work whatever connection
they come on (a session stays on one process), the JSON API works, and the sign-in throttle counts the real client
address (the front sets X-Forwarded-For itself; a client's own is ignored)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from alt_engine.db import SignInThrottle, session_scope
from alt_engine.users import add_user
from app.proxy import StickyProxy, sticky_key
from tests.conftest import free_port, seed_annotation_db


def test_sticky_key_and_worker_choice():
    assert sticky_key({"cookie": "a=1; alt_session=tok.sig; b=2"}, "10.0.0.1") == "s:tok.sig"
    assert sticky_key({"authorization": "Bearer k"}, "10.0.0.1") == "k:Bearer k"
    assert sticky_key({}, "10.0.0.1") == "a:10.0.0.1"
    proxy = StickyProxy(["http://w0", "http://w1", "http://w2"])
    picks = {proxy.index({"cookie": f"alt_session=user{i}"}, "127.0.0.1") for i in range(30)}
    assert picks == {0, 1, 2}  # sessions spread over the workers
    assert len({proxy.index({"cookie": "alt_session=same"}, f"10.0.0.{i}") for i in range(5)}) == 1  # one session: one


def gradio_call(c: httpx.Client, fn_index: int) -> dict | None:
    session = uuid.uuid4().hex
    r = c.post("/gradio_api/queue/join", json={"data": [], "fn_index": fn_index, "session_hash": session,
                                                 "trigger_id": None})
    assert r.status_code == 200, r.text
    with c.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and (msg := json.loads(line[5:])).get("msg") in ("process_completed",
                                                                                          "unexpected_error"):
                return msg
    return None


@pytest.mark.slow  # two app processes start (each imports gradio and torch)
def test_serve_two_workers_on_postgres(pg_cluster, tmp_path):
    from alt_engine.tiny import save_tiny

    db = pg_cluster.create_database()
    seed_annotation_db(db, n=6)
    add_user(db, "bob", "bobpass12")
    port = free_port()
    env = {**os.environ, "ALT_CACHE_DIR": str(tmp_path / "cache"), "ALT_DEVICE": "cpu"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
                             "serve", "--db", db, "--model", str(save_tiny(tmp_path / "model")), "--port", str(port),
                             "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None and time.time() < deadline, Path(tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        results = []
        for _ in range(8):  # a fresh connection per request, as a browser's parallel connections are
            with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as c:
                assert c.post("/api/login", json={"username": "bob", "password": "bobpass12"}).status_code == 200
                config = c.get("/config")
                (fn,) = [d["id"] for d in config.json()["dependencies"] if d.get("api_name") == "console_load"]
                results.append(gradio_call(c, fn))
                item = c.get("/api/annotate/next")
                assert item.status_code == 200 and item.json()["item"] is not None
                assert config.headers["x-alt-worker"] == item.headers["x-alt-worker"]  # one session, one process
        assert all(r and r.get("success") for r in results), results  # no "session not found"

        # the throttle sees the peer (here 127.0.0.2), not a client-sent X-Forwarded-For
        with httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as c:
            r = c.post("/api/login", json={"username": "bob", "password": "wrong-pass"},
                       headers={"X-Forwarded-For": "9.9.9.9"})
            assert r.status_code == 401
        with session_scope(db) as s:
            keys = set(s.exec(select(SignInThrottle.key)))
        assert "addr:127.0.0.2" in keys and not any("9.9.9.9" in k for k in keys)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    worker_urls = re.findall(r"http://127\.0\.0\.1:\d+", (tmp_path / "serve.log").read_text().split("ready (")[1])
    assert len(worker_urls) == 2
    deadline = time.time() + 20  # the workers went with the front
    while any(_answers(u) for u in worker_urls):
        assert time.time() < deadline, "an app worker outlived `alt serve`"
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
