"""The data pool: balanced per prompt, shortfall filled, truncated last, human over AI, flush vs accumulate."""

from __future__ import annotations

from collections import Counter

import pytest

from alt_engine.db import Feedback, Generation, Prompt, Round, Task, init_db, session_scope
from alt_engine.pool import build_pool

CATS = ["good", "ok", "bad"]


class Data:
    """A tiny database with one task; helpers add prompts, rounds, generations and feedback."""

    def __init__(self, db: str, categories=CATS):
        self.db = db
        init_db(db)
        with session_scope(db) as s:
            task = Task(name="t", categories=categories)
            s.add(task)
            s.flush()
            self.task_id = task.id
        self.rounds: list[int] = []

    def prompt(self, text="same prompt") -> int:
        with session_scope(self.db) as s:
            p = Prompt(task_id=self.task_id, text=text)
            s.add(p)
            s.flush()
            return p.id

    def round(self) -> int:
        with session_scope(self.db) as s:
            r = Round(task_id=self.task_id, number=len(self.rounds) + 1)
            s.add(r)
            s.flush()
            self.rounds.append(r.id)
            return r.id

    def gen(self, prompt_id, label=None, source="rule:x", truncated=False, kind="category", round_id=None) -> int:
        with session_scope(self.db) as s:
            g = Generation(prompt_id=prompt_id, round_id=round_id or self.rounds[-1], response=f"r{prompt_id}",
                           truncated=truncated)
            s.add(g)
            s.flush()
            if label is not None:
                s.add(Feedback(generation_id=g.id, source=source, kind=kind,
                               category=label if kind == "category" else None, text=label if kind == "text" else None))
            return g.id

    def label(self, gen_id, label, source, kind="category"):
        with session_scope(self.db) as s:
            s.add(Feedback(generation_id=gen_id, source=source, kind=kind, category=label if kind != "text" else None,
                           text=label if kind == "text" else None))


@pytest.fixture
def data(tmp_path):
    d = Data(str(tmp_path / "pool.db"))
    d.round()
    return d


def test_balanced_draw_k_per_category(data):
    p = data.prompt()
    for label, count in (("good", 5), ("ok", 3), ("bad", 4)):
        for _ in range(count):
            data.gen(p, label)
    pool = build_pool(data.db, data.task_id, k_per_category=2)
    assert Counter(it.feedback for it in pool) == {"good": 2, "ok": 2, "bad": 2}
    assert all(it.prompt_id == p and it.prompt == "same prompt" for it in pool)


def test_shortfall_filled_from_leftovers_and_no_feedback_dropped(data):
    p = data.prompt()
    goods = [data.gen(p, "good") for _ in range(5)]
    bad = data.gen(p, "bad")
    unlabelled = data.gen(p, None)
    pool = build_pool(data.db, data.task_id, k_per_category=2)
    ids = [it.generation_id for it in pool]
    assert len(pool) == 6  # 2 per category × 3 categories; "ok" missing → filled with more "good"
    assert bad in ids and unlabelled not in ids
    assert sum(i in goods for i in ids) == 5


def test_truncated_only_to_avoid_a_shortfall(data):
    p = data.prompt()
    complete = [data.gen(p, "good") for _ in range(3)]
    truncated_good = data.gen(p, "good", truncated=True)
    pool = build_pool(data.db, data.task_id, k_per_category=1, truncated="last")  # quota 3: complete ones suffice
    assert sorted(it.generation_id for it in pool) == complete
    truncated_bad = data.gen(p, "bad", truncated=True)
    pool = build_pool(data.db, data.task_id, k_per_category=2, truncated="last")  # quota 6, 5 exist: truncated last
    ids = [it.generation_id for it in pool]
    assert set(ids) == {*complete, truncated_good, truncated_bad}
    assert {ids[-1], ids[-2]} == {truncated_good, truncated_bad}
    assert pool[-1].truncated and not pool[0].truncated


def test_human_outranks_ai_and_free_text_conditions(data):
    p = data.prompt()
    g1 = data.gen(p, "bad", source="llm:judge")
    data.label(g1, "good", "human:ann")
    data.label(g1, "ok", "llm:judge")  # newer AI label does not beat the person
    g2 = data.gen(p, "Clear but a bit long.", source="llm:judge", kind="text")
    pool = {it.generation_id: it for it in build_pool(data.db, data.task_id)}
    assert pool[g1].feedback == "good" and pool[g1].category == "good"
    assert pool[g2].feedback == "Clear but a bit long." and pool[g2].category is None


def test_flagged_by_a_person_is_dropped(data):
    p = data.prompt()
    g = data.gen(p, "good")
    data.label(g, None, "human:ann", kind="flag")
    assert build_pool(data.db, data.task_id) == []


def test_keyed_by_prompt_id_not_text(data):
    a, b = data.prompt("repeat"), data.prompt("repeat")
    for p in (a, b):
        for label in CATS * 3:
            data.gen(p, label)
    pool = build_pool(data.db, data.task_id, k_per_category=1)
    assert Counter(it.prompt_id for it in pool) == {a: 3, b: 3}
    assert len(build_pool(data.db, data.task_id, k_per_category=1, max_per_prompt=2)) == 4


def test_deterministic_under_seed(data):
    p = data.prompt()
    for label in CATS * 6:
        data.gen(p, label)
    draws = [[it.generation_id for it in build_pool(data.db, data.task_id, seed=s)] for s in (0, 0, 1, 2, 3)]
    assert draws[0] == draws[1]
    assert any(d != draws[0] for d in draws[2:])


def test_flush_uses_latest_round_accumulate_all(data):
    p = data.prompt()
    first = [data.gen(p, label) for label in CATS]
    data.round()
    second = [data.gen(p, label) for label in CATS]
    assert {it.generation_id for it in build_pool(data.db, data.task_id, policy="flush")} == set(second)
    acc = {it.generation_id for it in build_pool(data.db, data.task_id, policy="accumulate")}
    assert acc == set(first + second)
    explicit = {it.generation_id for it in build_pool(data.db, data.task_id, round_ids=[data.rounds[0]])}
    assert explicit == set(first)
    with pytest.raises(ValueError, match="policy"):
        build_pool(data.db, data.task_id, policy="sometimes")


def test_eval_generations_without_round_never_enter_the_pool(data):
    p = data.prompt()
    with session_scope(data.db) as s:
        g = Generation(prompt_id=p, round_id=None, response="eval", sampling_params={"purpose": "eval"})
        s.add(g)
        s.flush()
        s.add(Feedback(generation_id=g.id, source="rule:x", category="good"))
    assert build_pool(data.db, data.task_id, policy="accumulate") == []


def test_truncation_policies(data):
    """exclude: never; last: only to fill the quota; worst: kept under the worst category, whatever the label."""
    from alt_engine.pool import pool_summary

    p = data.prompt()
    complete = [data.gen(p, "good"), data.gen(p, "ok")]
    cut_good = data.gen(p, "good", truncated=True)
    cut_bad = data.gen(p, "bad", truncated=True)
    excluded = build_pool(data.db, data.task_id, k_per_category=2)  # the default
    assert sorted(it.generation_id for it in excluded) == complete
    assert pool_summary(excluded)["truncated"] == 0
    last = build_pool(data.db, data.task_id, k_per_category=2, truncated="last")
    assert {it.generation_id for it in last} == {*complete, cut_good, cut_bad}
    assert pool_summary(last)["truncated"] == 2
    worst = {it.generation_id: it for it in build_pool(data.db, data.task_id, k_per_category=2, truncated="worst")}
    assert worst[cut_good].feedback == worst[cut_good].category == "bad"  # relabelled: not stopping is "bad"
    assert worst[cut_bad].feedback == "bad" and worst[complete[0]].feedback == "good"
    with pytest.raises(ValueError, match="truncation policy"):
        build_pool(data.db, data.task_id, truncated="sometimes")


def test_free_text_pool_balances_over_scores_0_to_3(tmp_path):
    """ALT-LMU: per prompt k per score 0–3 (8 with k = 2), not k per (always distinct) text."""
    data = Data(str(tmp_path / "lmu.db"), categories=[])
    data.round()
    p = data.prompt()
    by_score = {3: 6, 2: 1, 1: 3, 0: 4}  # generations per score, each with its own feedback text
    for score, n in by_score.items():
        for i in range(n):
            g = data.gen(p)
            with session_scope(data.db) as s:
                s.add(Feedback(generation_id=g, source="llm:free_text", kind="text", text=f"s{score} #{i}",
                               score=float(score)))
    pool = build_pool(data.db, data.task_id, k_per_category=2)
    assert len(pool) == 8  # k x 4 scores
    first = Counter(it.score for it in pool[:7])  # the balanced part: 2 per score, 1 for the short score 2
    assert first == {3.0: 2, 1.0: 2, 0.0: 2, 2.0: 1}
