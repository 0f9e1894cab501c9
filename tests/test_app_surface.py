"""What the web app exposes beyond its handlers, and how it shows text: uploads, schema, monitoring; no math/HTML.

In-process (the whole app through TestClient): annotators cannot upload or read the schema or monitoring;
admins can upload, within a size limit; prompt and model text is shown as written (no ``$$…$$`` math), and
guidelines Markdown fetches nothing from elsewhere.
"""

from __future__ import annotations

import pytest
from conftest import seed_annotation_db
from fastapi.testclient import TestClient

from alt_engine.settings import Settings
from alt_engine.users import add_user


@pytest.fixture(scope="module")
def app_db(tmp_path_factory, tiny_model_dir):
    from app.server import create_app

    db = str(tmp_path_factory.mktemp("surface") / "s.db")
    seed_annotation_db(db, n=2)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    return create_app(Settings(db=db, model=tiny_model_dir, secret_key="k")), db


def _client(app, name=None):
    c = TestClient(app)
    if name:
        assert c.post("/api/login", json={"username": name, "password": f"{name}pass1"}).status_code == 200
    return c


def test_uploads_schema_and_monitoring_are_for_admins_only(app_db):
    app, _ = app_db
    anon, alice, admin = _client(app), _client(app, "alice"), _client(app, "admin")
    small = {"files": ("notes.txt", b"hello", "text/plain")}
    assert anon.post("/gradio_api/upload", files=small).status_code == 401
    assert alice.post("/gradio_api/upload", files=small).status_code == 403
    assert admin.post("/gradio_api/upload", files=small).status_code == 200
    big = {"files": ("big.bin", b"x" * (11 * 1024 * 1024), "application/octet-stream")}
    assert admin.post("/gradio_api/upload", files=big).status_code == 413  # size-limited even for admins
    for path in ("/monitoring/summary", "/monitoring", "/gradio_api/openapi.json"):
        assert anon.get(path).status_code in (401, 403), path
        assert alice.get(path).status_code == 403, path
    assert admin.get("/monitoring/summary").status_code == 403  # monitoring is off altogether
    for c in (anon, alice):
        r = c.get("/openapi.json")
        assert r.status_code in (401, 403, 404) and "paths" not in r.text
    assert alice.get("/config").status_code == 200  # the app itself still works for annotators


def test_prompt_and_model_text_is_shown_as_written(app_db):
    from app.annotate import guidelines_markdown
    from app.auth import Auth
    from app.server import build_blocks

    _, db = app_db
    settings = Settings(db=db, secret_key="k")
    blocks = build_blocks(settings, Auth(settings))
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    for elem_id in ("alt-prompt", "alt-guidelines", "alt-meta", "alt-status", "alt-progress"):
        assert by_id[elem_id].latex_delimiters == [], elem_id  # "$$\\color{white}{…}$$" stays text
    assert by_id["alt-prompt"].render_markdown is False
    console = [i for i in by_id
               if isinstance(i, str) and i.startswith("console-") and i.endswith(("message", "preview"))]
    assert all(by_id[i].latex_delimiters == [] for i in console), console  # the admin console too
    md = guidelines_markdown('Be fair. ![tracker](http://evil.example/p.png) ![ref][r] <img src="http://x/y.png">'
                             "\n\n[r]: http://evil.example/q.png")
    assert "![" not in md and "<img" not in md  # links at most: nothing is fetched when the page shows it
    assert "Be fair." in md and "http://evil.example/p.png" in md  # the text itself is kept
    from app.console.tasks import safe_markdown

    assert safe_markdown("![ref][r]\n\n[r]: http://evil.example/q.png").count("![") == 0  # one helper for both
