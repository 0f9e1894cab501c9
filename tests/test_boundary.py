"""What the whole app refuses at its boundary, alike on SQLite and PostgreSQL: NUL characters in user input
(400), deeply nested JSON (400), oversized texts (413) — before any handler does work.

In-process: ``create_app`` through TestClient with a tiny model, on each database kind.
"""

from __future__ import annotations

import time

import pytest
from conftest import seed_annotation_db, signed_in
from fastapi.testclient import TestClient

from alt_engine.settings import Settings
from alt_engine.users import add_user

pytestmark = pytest.mark.usefixtures("dbkind")


@pytest.fixture(scope="module")
def app_db(dbkind, request, tmp_path_factory, tiny_model_dir):
    from alt_engine.db import dispose_engine
    from alt_engine.serving import close_hub
    from app.server import create_app

    if dbkind == "postgresql":
        db = request.getfixturevalue("pg_cluster").create_database()
    else:
        db = str(tmp_path_factory.mktemp("boundary") / "b.db")
    seed_annotation_db(db, n=4)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    yield create_app(Settings(db=db, model=tiny_model_dir, secret_key="k", serve_api_key="v1-key")), db
    close_hub(db)
    dispose_engine(db)


_client = signed_in


def test_nul_in_user_input_is_a_400_on_every_endpoint(app_db):
    """Item 3: the 7 endpoints that answered 500 on PostgreSQL (and stored NUL on SQLite) now all say 400."""
    app, _ = app_db
    anon, alice = _client(app), _client(app, "alice")
    assert anon.post("/api/login", json={"username": "ali\u0000ce", "password": "x"}).status_code == 400
    assert anon.post("/login", data={"username": "ali\u0000ce", "password": "x"}).status_code == 400
    assert alice.post("/api/keys", json={"name": "k\u0000"}).status_code == 400
    assert alice.get("/api/annotate/next", params={"task": "de\u0000fault"}).status_code == 400
    assert alice.get("/api/annotate/progress", params={"task": "de\u0000fault"}).status_code == 400
    lease = alice.get("/api/annotate/next").json()["item"]["lease_id"]
    for body in ({"text": "good\u0000"}, {"critique": "c\u0000", "revision": "r"},
                 {"critique": "c", "revision": "\u0000"}):
        r = alice.post("/api/annotate/submit", json={"lease_id": lease, "category": "Excellent", **body})
        assert r.status_code == 400 and "NUL" in r.json()["detail"], r.text
    r = alice.post("/api/annotate/flag", json={"lease_id": lease, "reason": "bad\u0000"})
    assert r.status_code == 400, r.text
    r = alice.post("/api/annotate/submit", json={"lease_id": lease, "category": "Excellent", "text": "fine"})
    assert r.status_code == 200, r.text  # nothing was lost: the lease still takes a clean label


def test_deeply_nested_json_is_a_400(app_db):
    """Item 10: the hand-parsed bodies (/v1, /login, /api/login) answered 500 to 100,000-deep JSON."""
    app, _ = app_db
    c = TestClient(app, headers={"Authorization": "Bearer v1-key"})
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/v1/chat/completions", "/v1/completions", "/api/login", "/login"):
        r = c.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
    r = c.post("/login", content=deep, headers={"content-type": "text/plain"})
    assert r.status_code == 400


def test_an_oversized_message_is_refused_before_any_work(app_db):
    """Item 6: a multi-megabyte text in a Gradio event (the playground's message) is refused by size at once."""
    app, _ = app_db
    alice = _client(app, "alice")
    fn = next(k for k, f in app.state.blocks.fns.items() if f.api_name == "playground_send")
    for size in (1024 * 1024, 4 * 1024 * 1024):  # under and over the body limit: a 413 either way
        start = time.perf_counter()
        r = alice.post("/gradio_api/queue/join", json={"data": ["a" * size], "fn_index": fn, "session_hash": "s1",
                                                       "event_data": None, "trigger_id": None})
        assert r.status_code == 413, r.text[:200]
        assert time.perf_counter() - start < 2.0


def test_state_changing_requests_from_another_origin_are_refused(app_db):
    """Item 8: a page on the same site but another origin auto-submitted a POST to /api/annotate/undo (the victim's
    last label was taken back); GET /logout signed out from any site's link."""
    app, _ = app_db
    alice = _client(app, "alice")
    lease = alice.get("/api/annotate/next").json()["item"]["lease_id"]
    assert alice.post("/api/annotate/submit", json={"lease_id": lease, "category": "Excellent"}).status_code == 200
    for evil in ({"origin": "http://sub.testserver.example"}, {"origin": "null"}, {"sec-fetch-site": "same-site"},
                 {"sec-fetch-site": "cross-site"}):
        r = alice.post("/api/annotate/undo", headers=evil)
        assert r.status_code == 403, (evil, r.status_code)
        assert alice.post("/logout", headers=evil).status_code == 403
    assert alice.get("/logout").status_code == 200  # a page with a sign-out button: nothing happened yet
    assert alice.get("/api/me").status_code == 200
    assert alice.post("/api/annotate/undo", headers={"origin": "http://testserver"}).status_code == 200  # own page
    assert alice.post("/logout", headers={"origin": "http://testserver"}, follow_redirects=False).status_code == 303
    assert alice.get("/api/me").status_code == 401


def test_the_api_schema_lists_only_what_the_user_may_call(app_db):
    """Item 13: /gradio_api/info gave annotators the whole schema (every admin endpoint)."""
    app, _ = app_db
    alice, admin = _client(app, "alice"), _client(app, "admin")
    assert _client(app).get("/gradio_api/info").status_code == 401
    theirs = alice.get("/gradio_api/info").json()["named_endpoints"]
    full = admin.get("/gradio_api/info").json()["named_endpoints"]
    assert "/admin_upload_prompts" in full and "/admin_export" in full
    assert "/playground_send" in theirs  # the page's own client still finds the annotator's endpoints
    assert not [name for name in theirs if name.startswith("/admin") or name.startswith("/console")], theirs
    assert len(theirs) < len(full)
