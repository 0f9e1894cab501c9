"""Annotation queue strategies: each one's order on a hand-built set, leases and overlap unchanged under each,
the scoring job after sampling (a tiny model), the admin's view and the CLI; on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from conftest import label_concurrently, seed_annotation_db
from sqlmodel import select

from alt_engine import annotation as ann
from alt_engine import queue_order as qo
from alt_engine.db import Feedback, Generation, Lease, ModelVersion, Prompt, QueueScore, Round, Task, session_scope
from alt_engine.users import add_user

pytestmark = pytest.mark.usefixtures("dbkind")  # every test on SQLite and on PostgreSQL

STRATEGIES = ["fixed", "uncertainty", "disagreement", "coverage", "mix"]


def _strategy(db, spec):
    with session_scope(db) as s:
        s.exec(select(Task)).one().queue_strategy = spec


def _scores(db, **by_generation):
    with session_scope(db) as s:
        for gid, (u, d) in by_generation.items():
            s.add(QueueScore(generation_id=int(gid), uncertainty=u, disagreement=d))


def _drain(db, user) -> list[int]:
    """What one annotator is handed, in order, labelling each item before asking for the next."""
    order = []
    while (item := ann.next_item(db, user)) is not None:
        order.append(item.generation_id)
        ann.submit(db, user, item.lease_id, ann.Submission(category="Good"))
    return order


def _coverage_set(db) -> list[int]:
    """3 prompts × 2 generations in an open round; an earlier (closed) round gave prompt 0 two labels, prompt 1
    one. Returns the open round's generation ids, prompt by prompt."""
    seed_annotation_db(db, n=0)
    users = [add_user(db, f"earlier{i}", "password123") for i in range(2)]
    with session_scope(db) as s:
        task = s.exec(select(Task)).one()
        old = Round(task_id=task.id, number=2, status="closed")
        rnd = Round(task_id=task.id, number=3, status="labelling")
        s.add_all([old, rnd])
        s.flush()
        prompts = [Prompt(task_id=task.id, text=f"Prompt {i}?") for i in range(3)]
        s.add_all(prompts)
        s.flush()
        for p, earlier in zip(prompts, (2, 1, 0)):
            for u in users[:earlier]:
                g = Generation(prompt_id=p.id, round_id=old.id, response="old")
                s.add(g)
                s.flush()
                s.add(Lease(generation_id=g.id, user_id=u.id, expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                            state="done"))
        gens = [Generation(prompt_id=p.id, round_id=rnd.id, response=f"new {p.id}.{j}") for p in prompts
                for j in range(2)]
        s.add_all(gens)
        s.flush()
        return [g.id for g in gens]


# --------------------------------------------------------------------------- each strategy's order


def test_fixed_uncertainty_and_disagreement_orders(make_db):
    db = make_db("order", init=False)
    g = seed_annotation_db(db, n=6)["generations"]
    alice, bob, carol = (add_user(db, n, "password123") for n in ("alice", "bob", "carol"))
    assert _drain(db, alice) == g  # fixed: generation order

    db = make_db("order-u", init=False)
    g = seed_annotation_db(db, n=6)["generations"]
    _strategy(db, "uncertainty")
    _scores(db, **{str(g[0]): (0.1, None), str(g[1]): (0.9, None), str(g[2]): (0.5, None), str(g[4]): (0.7, None),
                   str(g[5]): (0.3, None)})  # g[3]: not scored yet
    bob = add_user(db, "bob", "password123")
    assert _drain(db, bob) == [g[1], g[4], g[2], g[5], g[0], g[3]]  # least decisive first, unscored last

    db = make_db("order-d", init=False)
    g = seed_annotation_db(db, n=6)["generations"]
    _strategy(db, "disagreement")
    labels = {0: ("Excellent", "Excellent"), 1: ("Excellent", "Horrible"), 2: ("Good", "Bad"), 3: ("Good", None),
              4: ("Excellent", "Bad"), 5: ("Bad", "Good")}
    with session_scope(db) as s:
        for i, (a, b) in labels.items():
            s.add(Feedback(generation_id=g[i], source="rule:concise:10,20", category=a))
            if b:
                s.add(Feedback(generation_id=g[i], source="llm:judge", category=b))
    qo.score_disagreement(db, _task(db), g)
    with session_scope(db) as s:
        d = {q.generation_id: q.disagreement for q in s.exec(select(QueueScore))}
    # 5 categories: rank distance / 4; one label is nothing to compare
    assert [d[x] for x in g] == [0.0, 1.0, 0.5, None, 0.75, 0.5]
    carol = add_user(db, "carol", "password123")
    assert _drain(db, carol) == [g[1], g[4], g[2], g[5], g[0], g[3]]


def test_coverage_and_mix_orders(make_db):
    db = make_db("cov", init=False)
    g = _coverage_set(db)  # prompts p0 (2 earlier labels): g0, g1; p1 (1): g2, g3; p2 (0): g4, g5
    _strategy(db, "coverage")
    alice = add_user(db, "alice", "password123")
    # fewest labels on the prompt first, counting each label as it is given; ties in generation order
    assert _drain(db, alice) == [g[4], g[2], g[5], g[0], g[3], g[1]]

    db = make_db("mix", init=False)
    g = _coverage_set(db)
    _strategy(db, "mix:uncertainty=1,coverage=1")
    _scores(db, **{str(x): (u, None) for x, u in zip(g, (0.9, 0.7, 0.1, 0.2, 0.0, 0.05))})
    bob = add_user(db, "bob", "password123")
    # uncertainty + 1 / (1 + labels on the prompt), recounted after each label (worked out by hand)
    assert _drain(db, bob) == [g[0], g[5], g[1], g[3], g[4], g[2]]


def test_strategy_specs_are_checked():
    assert qo.parse_strategy(None).name == "fixed"
    assert qo.parse_strategy("mix").spec == "mix"
    assert qo.parse_strategy("mix:uncertainty=2, coverage=1").spec == "mix:uncertainty=2,disagreement=0,coverage=1"
    for bad in ("random", "mix:speed=1", "mix:uncertainty=-1", "mix:coverage=0", "uncertainty:2", "mix:coverage"):
        with pytest.raises(ValueError):
            qo.parse_strategy(bad)
    assert qo.label_entropy([0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert qo.label_entropy([0.0, -30.0]) < 1e-6
    assert 0 < qo.label_entropy([-1.0, -2.0]) < qo.label_entropy([-1.0, -1.5]) < 1


# --------------------------------------------------------------------------- leases and overlap under every order


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_item_twice_at_overlap_1_under_concurrency(make_db, strategy):
    db = make_db("c", init=False)
    g = seed_annotation_db(db, n=24)["generations"]
    _strategy(db, strategy)
    _scores(db, **{str(x): ((i * 7 % 24) / 24, (i * 5 % 24) / 24) for i, x in enumerate(g)})
    users = [add_user(db, f"u{i}", "password123") for i in range(6)]
    got = label_concurrently(db, users)
    assert sorted(got) == sorted(g)  # every item once, none twice
    with session_scope(db) as s:
        assert len(s.exec(select(Feedback).where(Feedback.kind == "category")).all()) == 24


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_overlap_expiry_and_late_submit_under_every_order(make_db, strategy):
    db = make_db("k", init=False)
    g = seed_annotation_db(db, n=3, k=2)["generations"]
    _strategy(db, strategy)
    _scores(db, **{str(x): (u, u) for x, u in zip(g, (0.2, 0.8, 0.5))})
    a, b, c, d = (add_user(db, n, "password123") for n in ("a", "b", "c", "d"))
    held = [ann.next_item(db, u) for u in (a, b, c, d)]  # 4 live leases on 3 items at k = 2
    claims = [h.generation_id for h in held]
    assert max(claims.count(x) for x in claims) <= 2
    with session_scope(db) as s:  # a's lease expires: it no longer holds a place
        s.get(Lease, held[0].lease_id).expires_at = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for user, item in zip((b, c, d), held[1:]):
        ann.submit(db, user, item.lease_id, ann.Submission(category="Good"))
    for user in (b, c, d):
        _drain(db, user)
    with pytest.raises(ann.Conflict):  # the item got its 2 labels from others meanwhile
        ann.submit(db, a, held[0].lease_id, ann.Submission(category="Bad"))
    assert _drain(db, a) == []
    with session_scope(db) as s:
        rows = s.exec(select(Feedback).where(Feedback.kind == "category")).all()
    per_item: dict[int, list[str]] = {}
    for r in rows:
        per_item.setdefault(r.generation_id, []).append(r.source)
    assert set(per_item) == set(g)
    assert all(len(v) == 2 and len(set(v)) == 2 for v in per_item.values()), per_item  # k labels, k people


# --------------------------------------------------------------------------- scores from the model, the job, views


def _task(db) -> Task:
    with session_scope(db) as s:
        return s.exec(select(Task)).one()


def test_uncertainty_is_the_label_diagnostics_likelihood(make_db, tiny_model_dir):
    from alt_engine import conditioning
    from alt_engine.evaluation import label_diagnostic, reference_model
    from alt_engine.settings import Settings

    db = make_db("unc", init=False)
    g = seed_annotation_db(db, n=3, responses=["Short.", "A somewhat longer answer, with a clause.", "Yes"])[
        "generations"]
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    settings = Settings(db=db, device="cpu", model=tiny_model_dir)
    task = _task(db)
    assert qo.score_uncertainty(db, settings, task, g) == 3
    with session_scope(db) as s:
        rows = {q.generation_id: q for q in s.exec(select(QueueScore))}
        prompts = {gen.id: conditioning.prompt_of(s.get(Prompt, gen.prompt_id)) for gen in
                   s.exec(select(Generation))}
        responses = {gen.id: gen.response for gen in s.exec(select(Generation))}
    cats = list(task.categories)
    model, tok = reference_model(tiny_model_dir, settings)
    fmt = conditioning.format_of(None, task).for_tokenizer(tok)
    for gid in g:
        q = rows[gid]
        ll = q.detail["loglik"]
        assert list(ll) == cats and 0.0 <= q.uncertainty <= 1.0 and q.guess == max(ll, key=ll.get)
        assert q.uncertainty == pytest.approx(qo.label_entropy(list(ll.values())))
        # the same numbers as the label-learned diagnostic: own − opposite label on the same response
        d = label_diagnostic(model, tok, fmt, [(prompts[gid], responses[gid], False, cats[0], cats[-1])])
        assert d["ll_gap"] == pytest.approx(ll[cats[0]] - ll[cats[-1]], abs=1e-3)
    assert not math.isclose(rows[g[0]].uncertainty, rows[g[1]].uncertainty)


def test_sampling_queues_the_score_job_and_annotators_never_see_scores(db, dbkind, tiny_model_dir, tmp_path):
    if dbkind == "postgresql":
        pytest.skip("the job path is the same on both; its worker subprocess costs 30 s (the queue's order on "
                    "PostgreSQL is tested above)")
    from alt_engine.jobs import JobStatus, create_job, run_job_inline, wait_job
    from alt_engine.prompts import import_prompts
    from alt_engine.tasks import get_or_create_task

    with session_scope(db) as s:
        get_or_create_task(s, "default").queue_strategy = "uncertainty"
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"prompt": "Question {i}?", "split": "train"}}\n' for i in range(4)))
    import_prompts(db, str(path), "default")
    settings = {"models_dir": str(tmp_path / "models"), "cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    job = run_job_inline(db, create_job(db, "sample", {"task_id": _task(db).id, "sampling": {
        "n": 2, "max_new_tokens": 6, "seed": 1}, "condition": "none", "settings": settings}))
    assert job.status == JobStatus.SUCCEEDED and job.result["score_job"], job.error
    score = wait_job(db, job.result["score_job"], timeout=240)  # the worker runs it, in the background
    assert score.status == JobStatus.SUCCEEDED, score.error
    with session_scope(db) as s:
        scores = {q.generation_id: q.uncertainty for q in s.exec(select(QueueScore))}
    assert len(scores) == 8 and all(v is not None for v in scores.values())
    rows = qo.explain(db, "default", 3)  # the admin's view: what comes next, and why
    alice = add_user(db, "alice", "password123")
    item = ann.next_item(db, alice)
    assert item.generation_id == max(scores, key=lambda k: (scores[k], -k))  # the least decisive first
    assert rows[0]["generation"] == item.generation_id and "uncertainty" in rows[0]["why"]
    shown = item.to_dict()  # what the annotator's page and the JSON API get
    assert not {"uncertainty", "disagreement", "guess", "score", "why"} & set(shown)
    assert str(round(scores[item.generation_id], 3)) not in str(shown)


def test_cli_sets_scores_and_shows_the_queue(make_db, tiny_model_dir, capsys):
    from app.cli import main

    db = make_db("cli", init=False)
    g = seed_annotation_db(db, n=4)["generations"]
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    assert main(["queue", "set", "random", "--db", db]) == 1
    assert "unknown queue strategy" in capsys.readouterr().err
    assert main(["queue", "set", "uncertainty", "--db", db]) == 0
    assert _task(db).queue_strategy == "uncertainty"
    assert main(["queue", "score", "--db", db]) == 0
    assert "scored 4 generations of default (4 by the served model)" in capsys.readouterr().out
    assert main(["queue", "show", "--db", db, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    with session_scope(db) as s:
        first = max(s.exec(select(QueueScore)), key=lambda q: (q.uncertainty, -q.generation_id))
    assert "queue order uncertainty" in out and f"generation {first.generation_id} " in out.splitlines()[1]
    assert set(g) == {q for q, _ in ann.upcoming(db, "default", 10)}
