"""Agreement statistics against textbook values and on a database with people and an AI judge."""

from __future__ import annotations

import math

import pytest
from conftest import seed_annotation_db

from alt_engine import annotation as ann
from alt_engine.agreement import agreement_report, cohen_kappa, fleiss_kappa
from alt_engine.db import Feedback, session_scope
from alt_engine.users import add_user


def test_cohen_kappa_textbook():
    # Wikipedia "Cohen's kappa" example: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o .7, p_e .5
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))  # chance agreement 1: undefined
    with pytest.raises(ValueError):
        cohen_kappa(["x"], [])


def test_fleiss_kappa_textbook():
    # Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.20993, abs=1e-4)
    # two raters: Fleiss reduces to Scott's pi; here perfect agreement
    assert fleiss_kappa([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([["a"]]))  # no item with two ratings


def test_report_from_database(tmp_path):
    db = str(tmp_path / "agree.db")
    info = seed_annotation_db(db, n=4, k=3)
    users = [add_user(db, n, "password123") for n in ("ann", "bob", "cat")]
    # labels per item for ann, bob, cat (items 0..3)
    plan = {"ann": ["Good", "Bad", "Good", "Excellent"],
            "bob": ["Good", "Bad", "Bad", "Excellent"],
            "cat": ["Good", "Good", "Bad", "Excellent"]}
    for u in users:
        for label in plan[u.name]:
            item = ann.next_item(db, u)
            ann.submit(db, u, item.lease_id, ann.Submission(category=label))
    ai = ["Good", "Bad", "Good", "Bad"]
    with session_scope(db) as s:
        for gen, label in zip(info["generations"], ai):
            s.add(Feedback(generation_id=gen, source="llm:judge", kind="category", category=label))
    r = agreement_report(db, "default")
    assert r.annotators == {"ann": 4, "bob": 4, "cat": 4} and r.overlap_items == 4
    pairs = {(p.a, p.b): p for p in r.pairs}
    assert pairs[("ann", "bob")].agreement == pytest.approx(0.75)
    assert pairs[("ann", "bob")].kappa == pytest.approx(cohen_kappa(plan["ann"], plan["bob"]))
    assert r.fleiss == pytest.approx(fleiss_kappa(list(zip(*plan.values()))))
    # majority per item: Good, Bad, Bad, Excellent vs AI Good, Bad, Good, Bad -> 2/4
    (h,) = r.human_vs_ai
    assert h.source == "llm:judge" and h.items == 4 and h.agreement == pytest.approx(0.5)
    assert h.kappa == pytest.approx(cohen_kappa(["Good", "Bad", "Bad", "Excellent"], ai))
    with pytest.raises(ValueError, match="no task"):
        agreement_report(db, "missing")
