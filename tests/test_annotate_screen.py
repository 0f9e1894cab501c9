"""The Annotate tab's handlers in-process (as the browser calls them): undo after skip, text never lost on undo,
a stale second tab told and offered to replace, fields the task turns off hidden, lease times in the browser's
time zone, the revision box starting with the response; and the sign-in page after deactivation."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from conftest import seed_annotation_db
from sqlmodel import select

from alt_engine.db import Feedback, Task, session_scope
from alt_engine.settings import Settings
from alt_engine.users import add_user


def _req(name="alice", tz="Asia%2FTokyo"):
    return SimpleNamespace(username=name, headers={"cookie": f"alt_session=x; alt_tz={tz}"})


@pytest.fixture
def screen(make_db):
    from app.annotate import AnnotateTab
    from app.auth import Auth

    db = make_db("screen", init=False)
    info = seed_annotation_db(db, n=4)
    add_user(db, "alice", "alicepass1")
    settings = Settings(db=db, secret_key="k" * 32)
    tab = AnnotateTab(settings, Auth(settings))
    with gr.Blocks():
        tab.build_ui()
    ids = [getattr(c, "elem_id", None) or f"#{i}" for i, c in enumerate(tab.outputs)]
    state_i, pending_i = tab.outputs.index(tab.outputs[0]), len(tab.outputs) - 1

    def view(result) -> dict:
        """elem_id → value (a plain value or the update's value) plus ``visible:<elem_id>``."""
        out = {}
        for key, v in zip(ids, result, strict=True):
            if isinstance(v, dict):
                out[key] = v.get("value")
                out["visible:" + key] = v.get("visible")
            else:
                out[key] = v
        out["state"], out["pending"] = result[state_i], result[pending_i]
        return out

    return SimpleNamespace(tab=tab, db=db, info=info, view=view)


def _texts(v: dict) -> list:
    return [v["alt-free-text"], v["alt-critique"], v["alt-revision"], v["alt-judgment"]]


def _label(s, v, key: int, text="", critique="", revision=None, judgment="", req=None):
    state = v["state"]
    revision = state["response"] if revision is None else revision
    return s.view(s.tab._submitter(key)(state, state["lease_id"], "default", text, critique, revision, judgment,
                                        req or _req()))


def test_undo_after_skip_and_text_comes_back(screen):
    s = screen
    first = s.view(s.tab._load("default", _req())[1:])
    assert first["alt-revision"] == first["state"]["response"]  # the revision box starts with the response
    assert "Asia/Tokyo" in first["alt-meta"] and "UTC" not in first["alt-meta"]  # the browser's local time
    second = _label(s, first, 1, text="Clear and short.", critique="A bit dry.", judgment="Fine.")
    state = second["state"]
    third = s.view(s.tab._skip(state, state["lease_id"], "default", _req()))
    assert third["state"]["generation_id"] != state["generation_id"]
    back = s.view(s.tab._undo("default", _req()))
    assert back["state"]["generation_id"] == state["generation_id"]  # the skipped item, not the one before
    assert "Undone" in back["alt-status"]
    with session_scope(s.db) as ses:
        assert len(ses.exec(select(Feedback)).all()) == 3  # the label before the skip (and its critique, judgment)
    again = s.view(s.tab._skip(back["state"], back["state"]["lease_id"], "default", _req()))
    assert again["state"]["generation_id"] == third["state"]["generation_id"]
    s.view(s.tab._undo("default", _req()))  # the skip
    undone = s.view(s.tab._undo("default", _req()))  # the label with text: its words come back in the boxes
    assert undone["state"]["generation_id"] == first["state"]["generation_id"]
    assert _texts(undone) == ["Clear and short.", "A bit dry.", first["state"]["response"], "Fine."]
    assert "your text is back" in undone["alt-status"] and "'Good'" in undone["alt-status"]


def test_stale_second_tab_is_told_and_offered_to_replace(screen):
    s = screen
    tab1 = s.view(s.tab._load("default", _req())[1:])
    tab2 = s.view(s.tab._load("default", _req())[1:])  # the same user's second tab shows the same item
    assert tab2["state"]["lease_id"] == tab1["state"]["lease_id"]
    _label(s, tab1, 0)  # Excellent, in tab 1
    stale = _label(s, tab2, 4)  # Horrible, in the stale tab 2
    assert "already labelled" in stale["alt-status"] and "'Excellent'" in stale["alt-status"]
    assert stale["visible:alt-replace"] is True and stale["pending"]["category"] == "Horrible"
    assert stale["state"]["generation_id"] == tab1["state"]["generation_id"]  # still on that item
    with session_scope(s.db) as ses:
        assert [f.category for f in ses.exec(select(Feedback))] == ["Excellent"]  # nothing written yet
    done = s.view(s.tab._replace(stale["pending"], stale["state"], "default", _req()))
    assert "Replaced" in done["alt-status"] and done["visible:alt-replace"] is False
    with session_scope(s.db) as ses:
        assert [f.category for f in ses.exec(select(Feedback))] == ["Horrible"]


def test_a_second_key_from_the_same_tab_is_ignored_not_offered_as_a_relabel(screen):
    """Keys 3 then 5 in quick succession both carry the item on screen; the second reaches the server after the
    first saved it. From the tab that saved it, that is a double press (the next item, nothing to replace)."""
    s = screen
    tab = SimpleNamespace(username="alice", headers={"cookie": "alt_session=x"}, session_hash="tab-1")
    view = s.view(s.tab._load("default", tab)[1:])
    _label(s, view, 0, req=tab)  # Excellent
    second = _label(s, view, 4, req=tab)  # Horrible, sent for the same item before the page moved on
    assert "Ignored a second key press" in second["alt-status"] and second["visible:alt-replace"] is False
    assert second["state"]["generation_id"] != view["state"]["generation_id"]  # the next item is on screen
    with session_scope(s.db) as ses:
        assert [f.category for f in ses.exec(select(Feedback))] == ["Excellent"]


def test_fields_the_task_turns_off_are_hidden(screen):
    s = screen
    on = s.view(s.tab._load("default", _req())[1:])
    assert on["visible:alt-cnr"] and on["visible:alt-critique"] and on["visible:alt-judgment"]
    with session_scope(s.db) as ses:
        t = ses.exec(select(Task)).one()
        t.allow_critique = False
    v = s.view(s.tab._load("default", _req())[1:])
    assert v["visible:alt-critique"] is False and v["visible:alt-revision"] is False and v["visible:alt-judgment"]
    with session_scope(s.db) as ses:
        ses.exec(select(Task)).one().allow_judgment = False
    v = s.view(s.tab._load("default", _req())[1:])
    assert v["visible:alt-cnr"] is False and v["visible:alt-judgment"] is False


def test_lease_time_zone_from_the_browser():
    from app.annotate import browser_tz, local_time

    assert local_time("2026-01-15T12:00:00+00:00", "Europe/Paris") == "13:00:00 Europe/Paris"
    assert local_time("2026-01-15T12:00:00+00:00", None) == "12:00:00 UTC"
    assert browser_tz(_req(tz="America%2FNew_York")) == "America/New_York"
    for bad in ("..%2F..%2Fetc%2Fpasswd", "Nowhere%2FLand", ""):
        assert browser_tz(_req(tz=bad)) is None


def test_deactivated_user_is_sent_to_sign_in_with_a_message(make_db, tiny_model_dir):
    from fastapi.testclient import TestClient

    from alt_engine.users import set_active
    from app.server import SHORTCUTS_JS, create_app

    db = make_db("deact", init=False)
    seed_annotation_db(db, n=1)
    add_user(db, "erin", "erinpass12")
    c = TestClient(create_app(Settings(db=db, model=tiny_model_dir, secret_key="k" * 32)))
    assert c.post("/login", data={"username": "erin", "password": "erinpass12"}, follow_redirects=False) \
        .status_code == 303
    set_active(db, "erin", False)
    # the page's script sends any 401 from Gradio's API to the sign-in page ...
    assert "/login?why=signed-out" in SHORTCUTS_JS and "r.status === 401" in SHORTCUTS_JS
    assert c.post("/gradio_api/queue/join", json={}).status_code == 401
    # ... which says why
    page = c.get("/login?why=signed-out").text
    assert "deactivated" in page and 'id="login-error"' in page
    assert "signed out" in TestClient(c.app).get("/login?why=signed-out").text  # no cookie: the plain reason
    assert "login-error" not in TestClient(c.app).get("/login").text


def test_agreement_opens_on_the_task_that_has_data(make_db):
    from alt_engine.tasks import get_or_create_task
    from app.admin import task_with_data

    db = make_db("agree", init=False)
    info = seed_annotation_db(db, n=2, task="summarization")
    with session_scope(db) as s:
        get_or_create_task(s, "default")  # a task without labels, listed first
        s.add(Feedback(generation_id=info["generations"][0], source="human:alice", category="Good"))
    assert task_with_data(db, ["default", "summarization"]) == "summarization"
    assert task_with_data(db, ["default"]) == "default" and task_with_data(db, []) is None


def test_json_api_says_already_labelled_and_replaces(make_db, tiny_model_dir):
    from fastapi.testclient import TestClient

    from app.server import create_app

    db = make_db("api", init=False)
    seed_annotation_db(db, n=2)
    add_user(db, "alice", "alicepass1")
    c = TestClient(create_app(Settings(db=db, model=tiny_model_dir, secret_key="k" * 32)))
    assert c.post("/api/annotate/replace", json={"lease_id": 1, "category": "Bad"}).status_code == 401
    assert c.post("/api/login", json={"username": "alice", "password": "alicepass1"}).status_code == 200
    item = c.get("/api/annotate/next").json()["item"]
    body = {"lease_id": item["lease_id"], "category": "Good"}
    assert c.post("/api/annotate/submit", json=body).json()["status"] == "saved"
    res = c.post("/api/annotate/submit", json={**body, "category": "Bad"}).json()
    assert res["status"] == "already_labelled" and res["existing"]["category"] == "Good"
    assert c.post("/api/annotate/replace", json={**body, "category": "Bad"}).json()["status"] == "saved"
    with session_scope(db) as s:
        assert [f.category for f in s.exec(select(Feedback))] == ["Bad"]
