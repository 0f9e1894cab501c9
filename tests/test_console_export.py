"""The console's Export button, called as any client can (Gradio's queue API by api_name): refused to an anonymous
client and to an annotator inside the handler; for an admin it produces the file with the right rows, for every kind."""

from __future__ import annotations

import json
import uuid
import zipfile

import pytest
from fastapi.testclient import TestClient

from alt_engine import export
from tests.test_console_auth import REFUSED, Caller, client  # client signs admin / bob in
from tests.test_export import seed


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    from alt_engine.db import init_db
    from alt_engine.settings import Settings
    from alt_engine.users import add_user
    from app.server import create_app

    work = tmp_path_factory.mktemp("console-export")
    db = str(work / "e.db")
    init_db(db)
    seed(db)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "bob", "bobpass12")
    settings = Settings(db=db, device="cpu", model=tiny_model_dir, secret_key="s" * 32)
    return create_app(settings), db


@pytest.fixture(scope="module")
def entered(app):
    """The module's one entered client (``test_console_auth.Caller``: one queue loop for every user)."""
    with TestClient(app[0], raise_server_exceptions=False) as c:
        yield c


def export_call(c: Caller, api, kind: str, fmt: str = "jsonl", task: str = "", rounds: str = "",
                push: bool = False, repo: str = "") -> tuple[int, dict | None]:
    """POST the Export button's event (api_name ``admin_export``) through the queue; (status, completion)."""
    (index,) = [i for i, f in api.state.blocks.fns.items() if f.api_name == "admin_export"]
    session = uuid.uuid4().hex
    r = c.post("/gradio_api/queue/join", json={"data": [kind, fmt, task, rounds, "", push, repo], "fn_index": index,
                                                 "session_hash": session, "trigger_id": None})
    if r.status_code != 200:
        return r.status_code, None
    with c.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and (msg := json.loads(line[5:])).get("msg") == "process_completed":
                return 200, msg
    return 200, None


def produced(done: dict) -> tuple[str, str]:
    """(path of the file the admin downloads, the message shown)."""
    assert done["success"] is True, done
    file, message = done["output"]["data"]
    return file["path"], message


def test_export_refused_to_anonymous_and_annotators(app, entered):
    api, _ = app
    status, _ = export_call(client(entered, None), api, "annotations")
    assert status == 401
    status, done = export_call(client(entered, "bob"), api, "annotations")
    assert status == 200 and done["success"] is False and done["output"]["error"] == REFUSED


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "datasets"])
def test_admin_exports_annotations_in_every_format(app, entered, fmt, tmp_path):
    api, db = app
    status, done = export_call(client(entered, "admin"), api, "annotations", fmt)
    path, message = produced(done)
    if fmt == "datasets":  # a folder, downloaded as a zip
        zipfile.ZipFile(path).extractall(tmp_path / "ds")
        path = tmp_path / "ds"
    assert export.read_annotations(path, fmt) == export.annotation_rows(db)
    assert f"{len(export.annotation_rows(db))} annotation rows" in message


def test_admin_exports_training_sets_and_a_snapshot(app, entered, tmp_path):
    api, db = app
    admin = client(entered, "admin")
    _, done = export_call(admin, api, "dpo", "jsonl", "default", "1")
    assert export.read_rows(produced(done)[0]) == json.loads(json.dumps(export.dpo_rows(db, "default", [1])))
    _, done = export_call(admin, api, "kto", "parquet", "default")
    assert len(export.read_rows(produced(done)[0])) == len(export.kto_rows(db, "default"))
    _, done = export_call(admin, api, "sft", "jsonl", "default", "2")
    sft = export.read_rows(produced(done)[0])
    assert sft and all(r["prompt"] and r["completion"] for r in sft)
    _, done = export_call(admin, api, "snapshot", "jsonl", "default", "1")
    zipfile.ZipFile(produced(done)[0]).extractall(tmp_path / "snap")
    assert json.loads((tmp_path / "snap" / "snapshot.json").read_text())["round"]["number"] == 1
    assert len(export.read_annotations(tmp_path / "snap" / "annotations.jsonl")) == len(
        export.annotation_rows(db, "default", [1]))
    _, done = export_call(admin, api, "snapshot", "jsonl", "default", "")  # a snapshot is of one round
    assert done["success"] is False and "one round" in done["output"]["error"]


def test_a_failed_push_still_gives_the_file_and_says_why(app, entered, monkeypatch):
    from huggingface_hub import constants

    api, db = app
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, done = export_call(client(entered, "admin"), api, "annotations", "csv", push=True, repo="me/alt")
    path, message = produced(done)
    assert "not pushed to the Hub" in message and "offline mode" in message
    assert export.read_annotations(path) == export.annotation_rows(db)


def test_an_export_in_gradios_cache_is_served_to_admins_only(app, entered):
    """Item 15: the cache URL of an admin's export served the file to any signed-in user who had it."""
    api, _ = app
    admin, bob = client(entered, "admin"), client(entered, "bob")
    _, done = export_call(admin, api, "annotations")
    path, _ = produced(done)
    assert "alt-export-" in path
    assert bob.get(f"/gradio_api/file={path}").status_code == 403
    assert client(entered, None).get(f"/gradio_api/file={path}").status_code == 401
    r = admin.get(f"/gradio_api/file={path}")
    assert r.status_code == 200 and r.content
