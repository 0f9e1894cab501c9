"""Admin-only endpoints called directly (Gradio's HTTP API, gradio_client, /api/*): refused unless admin."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import live_server_for

from alt_engine.users import get_user, set_active

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("dbkind")]  # on SQLite and on PostgreSQL


@pytest.fixture(scope="module")
def live_server(dbkind, request, tmp_path_factory):
    """``alt serve`` (conftest's) on this module's kind of database."""
    yield from live_server_for(request, tmp_path_factory, postgres=dbkind == "postgresql")


def _session(url: str, name: str | None = None, password: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    if name:
        r = c.post("/api/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
    return c


def _gradio_call(c: httpx.Client, api_name: str, data: list) -> tuple[int, str]:
    """Gradio's two-step HTTP API: POST the inputs, then read the event stream. Returns (status, stream text)."""
    r = c.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return r.status_code, r.text
    event_id = r.json()["event_id"]
    stream = c.get(f"/gradio_api/call/{api_name}/{event_id}")
    return stream.status_code, stream.text


def test_not_signed_in_is_refused(live_server):
    c = _session(live_server.url)
    assert c.get("/healthz").status_code == 200
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/login").status_code == 200
    assert c.get("/config").status_code == 401
    assert c.get("/gradio_api/info").status_code == 401
    status, _ = _gradio_call(c, "admin_add_user", ["mallory", "mallorypass", "admin"])
    assert status == 401
    assert c.get("/api/annotate/next").status_code == 401
    assert c.get("/api/admin/users").status_code == 401
    assert c.post("/api/admin/users", json={"name": "mallory", "password": "mallorypass"}).status_code == 401
    # a forged or tampered cookie is no better
    c.cookies.set("alt_session", "YWRtaW4.forged")
    assert c.get("/api/me").status_code == 401
    assert get_user(live_server.db, "mallory") is None


def test_wrong_password_refused(live_server):
    c = _session(live_server.url)
    assert c.post("/api/login", json={"username": "admin", "password": "adminpass2"}).status_code == 401
    assert c.post("/api/login", json={"username": "nobody", "password": "adminpass1"}).status_code == 401
    r = c.post("/login", data={"username": "admin", "password": "wrong-one"})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert "alt_session" not in c.cookies


def test_repeated_wrong_passwords_are_throttled(live_server):
    c = _session(live_server.url)
    from alt_engine.users import add_user

    add_user(live_server.db, "frank", "frankpass1")
    codes = [c.post("/api/login", json={"username": "frank", "password": f"guess{i}xyz"}).status_code
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    r = c.post("/api/login", json={"username": "frank", "password": "frankpass1"})
    assert r.status_code == 429 and "try again" in r.json()["detail"]  # even the right one, for a while


def test_annotator_cannot_call_admin_endpoints(live_server):
    c = _session(live_server.url, "bob", "bobpass12")
    assert c.get("/api/me").json() == {"user": "bob", "role": "annotator"}
    assert c.get("/config").status_code == 200  # signed in: the page works
    for path in ("/api/admin/users", "/api/admin/jobs", "/api/admin/agreement?task=default"):
        assert c.get(path).status_code == 403, path
    assert c.post("/api/admin/users", json={"name": "mallory", "password": "mallorypass",
                                            "role": "admin"}).status_code == 403
    # Gradio's HTTP API: the handler runs, checks the role itself and refuses
    status, stream = _gradio_call(c, "admin_add_user", ["mallory", "mallorypass", "admin"])
    assert status == 200 and "event: error" in stream and "admin" in stream
    status, stream = _gradio_call(c, "admin_agreement", ["default"])
    assert "event: error" in stream
    status, stream = _gradio_call(c, "admin_deactivate_user", ["alice"])
    assert "event: error" in stream
    assert get_user(live_server.db, "mallory") is None
    assert get_user(live_server.db, "alice").active


def test_annotator_via_gradio_client_is_refused(live_server):
    from gradio_client import Client

    cookie = _session(live_server.url, "bob", "bobpass12").cookies["alt_session"]
    client = Client(live_server.url, headers={"Cookie": f"alt_session={cookie}"}, verbose=False,
                    download_files=False, analytics_enabled=False)
    with pytest.raises(Exception, match="admin"):
        client.predict("mallory2", "mallorypass", "admin", api_name="/admin_add_user")
    assert get_user(live_server.db, "mallory2") is None


def test_admin_succeeds(live_server):
    c = _session(live_server.url, "admin", "adminpass1")
    r = c.post("/api/admin/users", json={"name": "carol", "password": "carolpass1"})
    assert r.status_code == 201 and r.json()["role"] == "annotator"
    assert c.post("/api/admin/users", json={"name": "carol", "password": "carolpass1"}).status_code == 400
    assert "carol" in [u["name"] for u in c.get("/api/admin/users").json()["users"]]
    report = c.get("/api/admin/agreement", params={"task": "default"}).json()
    assert report["task"] == "default" and "annotators" in report
    assert c.get("/api/admin/agreement", params={"task": "nope"}).status_code == 404
    status, stream = _gradio_call(c, "admin_add_user", ["dave", "davepass12", "annotator"])
    assert status == 200 and "event: complete" in stream, stream
    assert get_user(live_server.db, "dave").role == "annotator"
    data = json.loads(stream.split("data:", 2)[-1].strip().splitlines()[0])
    assert "dave" in json.dumps(data)


def test_deactivated_user_loses_access(live_server):
    from alt_engine.users import add_user

    add_user(live_server.db, "erin", "erinpass12")
    c = _session(live_server.url, "erin", "erinpass12")
    assert c.get("/api/me").status_code == 200
    set_active(live_server.db, "erin", False)
    assert c.get("/api/me").status_code == 401
    assert c.get("/config").status_code == 401
    assert c.post("/api/login", json={"username": "erin", "password": "erinpass12"}).status_code == 401


def test_users_cli(make_db, capsys, monkeypatch):
    from alt_engine.users import authenticate
    from app.cli import main

    db = make_db("cli")
    assert main(["users", "add", "zed", "--role", "admin", "--password", "zedpass123", "--db", db]) == 0
    assert main(["users", "add", "zed", "--password", "zedpass123", "--db", db]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["users", "add", "amy", "--password", "short", "--db", db]) == 1
    assert "too short" in capsys.readouterr().err
    monkeypatch.setenv("ALT_PASSWORD", "amypass123")
    assert main(["users", "add", "amy", "--db", db]) == 0
    assert main(["users", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "zed" in out and "admin" in out and "amy" in out and "annotator" in out
    assert authenticate(db, "amy", "amypass123").role == "annotator"
    assert authenticate(db, "amy", "wrongpass1") is None
    assert main(["users", "passwd", "amy", "--password", "newpass123", "--db", db]) == 0
    assert authenticate(db, "amy", "amypass123") is None and authenticate(db, "amy", "newpass123") is not None
    assert main(["users", "deactivate", "amy", "--db", db]) == 0
    assert authenticate(db, "amy", "newpass123") is None
    from sqlalchemy import text

    from alt_engine.db import get_engine

    with get_engine(db).connect() as conn:  # only a salted hash is stored
        stored = conn.execute(text("SELECT password_hash FROM \"user\" WHERE name = 'amy'")).scalar_one()
    assert "newpass123" not in stored and stored.startswith("scrypt$")
