"""The playground's engine side and the tab's server-side checks, in-process (the page: test_browser_playground)."""

from __future__ import annotations

import types

import gradio as gr
import pytest
from sqlmodel import select

from alt_engine import playground as pg
from alt_engine.db import Generation, ModelVersion, Prompt, Round, session_scope
from alt_engine.sampling import TransformersBackend
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from alt_engine.tasks import get_or_create_task
from alt_engine.tiny import tiny_model, tiny_tokenizer
from alt_engine.users import add_user


@pytest.fixture
def setup(db):
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        v0 = ModelVersion(name="v0-base", path="tiny", status="served")
        s.add(v0)
        s.flush()
        s.add(Round(task_id=task.id, number=1, model_version_id=v0.id, status="labelling"))
    tok = tiny_tokenizer()
    server = ModelServer(TransformersBackend(tiny_model(tok), tok), version_name="v0-base")
    hub = types.SimpleNamespace(served=server, for_version=lambda name: server)
    yield db, hub
    server.close()


def test_feedback_choices_and_parse(setup):
    db, _ = setup
    assert pg.feedback_choices(db, "default") == ["Excellent", "Good", "Mediocre", "Bad", "Horrible", "none"]
    assert pg.parse_feedback("none") is None and pg.parse_feedback("  ") is None
    assert pg.parse_feedback(" Be brief ") == "Be brief"
    assert pg.version_names(db) == (["v0-base"], "v0-base")


def test_stream_panels_side_by_side(setup):
    db, hub = setup
    chat = [{"role": "user", "content": "Hi"}]
    panels = [pg.Panel("v0-base", "Excellent", chat), pg.Panel("v0-base", "Horrible", chat)]
    got, usage = {0: "", 1: ""}, {}
    for i, piece, done in pg.stream_panels(hub, panels, 16, 0.0, 1.0, 0):
        if done is None:
            got[i] += piece
        else:
            usage[i] = done
    for i, p in enumerate(panels):
        text, alone = hub.served.chat(chat, p.feedback, 16)
        assert got[i] == text and usage[i].completion_tokens == alone.completion_tokens > 0
    shown = pg.model_input(hub.served, chat, "Excellent")
    assert shown.feedback_segment == "Feedback: Excellent" and "system" in shown.format


def test_send_to_queue_admins_only_checked_on_the_server(setup):
    from app.auth import Auth
    from app.playground import PlaygroundTab

    db, _ = setup
    tab = PlaygroundTab(Settings(db=db), Auth(Settings(db=db)))
    state = {"a": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
             "b": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}], "turn": 0}
    args = ("default", state, True, "v0-base", "Excellent", "v0-base", "Horrible")
    with pytest.raises(gr.Error, match="admin"):
        tab._to_queue(*args, request=types.SimpleNamespace(username="alice"))
    with session_scope(db) as s:
        assert not s.exec(select(Prompt)).all()
    msg = tab._to_queue(*args, request=types.SimpleNamespace(username="admin"))
    assert "2 replies are in the annotation queue" in msg
    with session_scope(db) as s:
        prompt = s.exec(select(Prompt)).one()
        assert prompt.text == "Hi" and prompt.source == "playground:admin"
        gens = s.exec(select(Generation).where(Generation.prompt_id == prompt.id)).all()
        assert sorted((g.conditioning, g.response) for g in gens) == [("Excellent", "Hello!"), ("Horrible", "Go away.")]
    with pytest.raises(gr.Error, match="Not signed in|sign in"):
        next(tab._send("Hi", state, True, "v0-base", "none", "v0-base", "none", 0, 1, 4, 0, False,
                       request=types.SimpleNamespace(username=None)))
