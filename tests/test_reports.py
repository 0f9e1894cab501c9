"""Dashboard report queries (alt_engine/reports.py) on a hand-made database: one row per evaluated version at its
round, labels per annotator and round, human-vs-AI agreement per round, lineage; the figures built from them."""

from __future__ import annotations

from alt_engine import reports
from alt_engine.db import Feedback, Generation, ModelVersion, Prompt, Round, session_scope
from alt_engine.tasks import get_or_create_task
from alt_engine.users import add_user


def seed(db):
    add_user(db, "ann", "annpass123")
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        base = ModelVersion(name="v0-base", path="m", objective="base",
                            metrics={"exemplar_share": 0.2, "exemplar_share_ci": [0.1, 0.3], "perplexity": 9.0,
                                     "category_share": {"Excellent": 0.2, "Horrible": 0.8},
                                     "category_share_ci": {"Excellent": [0.1, 0.3], "Horrible": [0.7, 0.9]}})
        s.add(base)
        s.flush()
        r1 = Round(task_id=task.id, number=1, model_version_id=base.id, status="closed")
        r2 = Round(task_id=task.id, number=2, status="labelling")
        s.add_all([r1, r2])
        s.flush()
        v1 = ModelVersion(name="v1-alt", path="m1", parent_id=base.id, objective="alt",
                          hyperparameters={"round_id": r1.id, "examples": 12},
                          metrics={"exemplar_share": 0.5, "steerability_gap": 0.3, "round": {"number": 1}})
        untrained = ModelVersion(name="v2-alt", path="m2", parent_id=v1.id, objective="alt", status="failed",
                                 hyperparameters={"round_id": r2.id})
        s.add_all([v1, untrained])
        p = Prompt(task_id=task.id, text="Hi")
        s.add(p)
        s.flush()
        for rnd, cats in ((r1, ["Excellent", "Good", "Bad"]), (r2, ["Good", "Good"])):
            for i, c in enumerate(cats):
                g = Generation(prompt_id=p.id, round_id=rnd.id, response=f"r{i}")
                s.add(g)
                s.flush()
                s.add(Feedback(generation_id=g.id, source="human:ann", category=c))
                s.add(Feedback(generation_id=g.id, source="rule:x", category="Good"))
        s.add(Feedback(generation_id=g.id, source="human:ann", kind="flag"))


def test_reports(db):
    seed(db)
    rows = reports.round_metrics(db, "default")
    assert [(r["round"], r["version"]) for r in rows] == [(0, "v0-base"), (1, "v1-alt")]  # v2 never evaluated
    assert rows[0]["share:Excellent"] == 0.2 and rows[0]["share:Excellent_high"] == 0.3
    assert rows[1]["steerability_gap"] == 0.3 and rows[1]["exemplar_share_low"] is None
    assert reports.throughput(db, "default") == [{"round": 1, "annotator": "ann", "labels": 3},
                                                 {"round": 2, "annotator": "ann", "labels": 2}]
    agree = {r["round"]: r for r in reports.agreement_by_round(db, "default")}
    assert agree[1]["items"] == 3 and abs(agree[1]["agreement"] - 1 / 3) < 1e-9 and agree[2]["agreement"] == 1.0
    lineage = {v["name"]: v for v in reports.version_rows(db)}
    assert lineage["v1-alt"]["parent"] == "v0-base" and lineage["v1-alt"]["round"] == 1
    assert lineage["v2-alt"]["status"] == "failed" and lineage["v2-alt"]["round"] == 2


def test_figure_has_one_point_per_round(db):
    from app.dashboard import metrics_figure

    seed(db)
    fig = metrics_figure(reports.round_metrics(db, "default"), ["Excellent", "Good", "Horrible"])
    by_meta = {t.meta: t for t in fig.data}
    assert list(by_meta["exemplar_share"].x) == [0, 1] and list(by_meta["exemplar_share"].y) == [0.2, 0.5]
    assert list(by_meta["share:Excellent"].error_y.array) == [0.3 - 0.2, 0]
    assert "share:Good" not in by_meta  # never measured: no empty line


def test_dashboard_handler_checks_the_role_on_the_server(db):
    import types

    import gradio as gr
    import pytest

    from alt_engine.settings import Settings
    from app.auth import Auth
    from app.dashboard import DashboardTab

    seed(db)
    add_user(db, "boss", "bosspass12", "admin")
    closed = DashboardTab(Settings(db=db), Auth(Settings(db=db)))
    with gr.Blocks():
        closed.build_ui()
    with pytest.raises(gr.Error, match="admins"):
        closed._refresh("default", request=types.SimpleNamespace(username="ann"))
    out = closed._refresh("default", request=types.SimpleNamespace(username="boss"))
    assert "2 evaluated versions over 2 rounds" in out[closed.note]
    opened = DashboardTab(Settings(db=db, dashboard_for_annotators=1), Auth(Settings(db=db)))
    with gr.Blocks():
        opened.build_ui()
    assert opened._refresh("default", request=types.SimpleNamespace(username="ann"))[opened.plot] is not None
