"""The queue order in the console: set in the Tasks form, explained in the Queue tab (admins only)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import seed_annotation_db
from sqlmodel import select

from alt_engine.db import ModelVersion, QueueScore, Task, session_scope
from alt_engine.jobs import get_job, run_job_inline
from alt_engine.settings import Settings
from alt_engine.users import add_user

ADMIN = SimpleNamespace(username="admin")
BOB = SimpleNamespace(username="bob")


@pytest.fixture
def console(make_db, tmp_path, tiny_model_dir, monkeypatch):
    from app.auth import Auth
    from app.console import build_console

    monkeypatch.setattr("alt_engine.jobs.queue.ensure_worker", lambda db: None)  # the test runs the job itself
    db = make_db("console", init=False)
    seed_annotation_db(db, n=4, responses=["Yes.", "No, not at all, never.", "Maybe", "It depends on the case."])
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "bob", "bobpass12")
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    settings = Settings(db=db, device="cpu", models_dir=str(tmp_path / "models"), secret_key="s" * 32,
                        model=tiny_model_dir, cache_dir=str(tmp_path / "cache"))
    import gradio as gr

    with gr.Blocks():
        tabs = build_console(settings, Auth(settings))
    return db, {type(t).__name__: t for t in tabs}


def test_tasks_form_sets_the_queue_order_and_queue_tab_says_why(console):
    db, tabs = console
    tasks, queue = tabs["TasksTab"], tabs["QueueTab"]
    form = list(tasks._load_task("default", ADMIN))[:-1]  # the form's fields (the preview last)
    assert form[-1] == "fixed"
    with pytest.raises(Exception, match="unknown queue strategy"):
        tasks._save(*form[:-1], ADMIN, "newest")
    table, msg, _, _ = tasks._save(*form[:-1], ADMIN, "mix:uncertainty=2,coverage=1")
    assert "Saved" in msg and list(table["queue"]) == ["mix:uncertainty=2,disagreement=0,coverage=1"]
    tasks._save(*form[:-1], ADMIN, "uncertainty")
    with pytest.raises(Exception, match="admin"):
        queue._score("default", BOB)
    with pytest.raises(Exception, match="admin"):
        queue._show("default", 10, BOB)
    msg = queue._score("default", ADMIN)
    job_id = int(msg.split("job ")[1].split()[0])
    assert run_job_inline(db, job_id).status == "succeeded", get_job(db, job_id).error
    table, summary = queue._show("default", 10, ADMIN)
    with session_scope(db) as s:
        scores = {q.generation_id: q.uncertainty for q in s.exec(select(QueueScore))}
        assert s.exec(select(Task)).one().queue_strategy == "uncertainty"
    assert "uncertainty" in summary and len(table) == 4
    assert list(table["generation"]) == sorted(scores, key=lambda g: (-scores[g], g))  # the order it hands out
    assert all("uncertainty" in why and "likeliest label" in why for why in table["why"])
