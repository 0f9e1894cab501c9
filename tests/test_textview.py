"""Text is shown exactly as written (#23 item 11): bidi controls, zero-width characters and NUL-like controls are
displayed as marked escapes on the annotation screen and in the console's data views, never obeyed or hidden."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from conftest import seed_annotation_db

from alt_engine.settings import Settings
from alt_engine.users import add_user
from app.textview import visible

TRICK = "RTL:\u202eevil.exe\u202c zero\u200bwidth \ufeffbom \u0007bell"


def test_hidden_characters_are_marked():
    assert visible(TRICK) == "RTL:⟦U+202E⟧evil.exe⟦U+202C⟧ zero⟦U+200B⟧width ⟦U+FEFF⟧bom ⟦U+0007⟧bell"
    assert visible("plain\ttext\nnext line · ünïcödé 日本") == "plain\ttext\nnext line · ünïcödé 日本"


def test_the_annotation_screen_and_the_data_view_mark_them(tmp_path):
    from app.annotate import AnnotateTab
    from app.auth import Auth
    from app.console.data import DataTab

    db = str(tmp_path / "t.db")
    seed_annotation_db(db, n=1, responses=[TRICK], chat=True, questions=[f"Open {TRICK}?"])
    add_user(db, "alice", "alicepass1")
    add_user(db, "admin", "adminpass1", "admin")
    settings = Settings(db=db, secret_key="k" * 32)
    tab = AnnotateTab(settings, Auth(settings))
    with gr.Blocks():
        tab.build_ui()
    out = tab._load("default", SimpleNamespace(username="alice", headers={}))[1:]
    shown = [str(v.get("value") if isinstance(v, dict) else v) for v in out]
    assert any("evil.exe⟦U+202C⟧" in v and "⟦U+202E⟧" in v for v in shown)  # the response
    assert any("Open RTL:⟦U+202E⟧" in v for v in shown)  # the prompt
    assert not any("\u202e" in v for v in shown)
    data = DataTab(settings, Auth(settings))
    table = data._browse("generations", "default", None, "", "", "", SimpleNamespace(username="admin"))
    assert "⟦U+202E⟧evil.exe" in table["response"][0] and "\u202e" not in table["response"][0]
