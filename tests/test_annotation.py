"""The annotation queue: leases, overlap k, expiry, double and late submits, undo, skip, flag."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from conftest import label_concurrently, seed_annotation_db
from sqlmodel import select

from alt_engine import annotation as ann
from alt_engine.db import Feedback, Lease, ModelVersion, Task, TrainingExample, session_scope
from alt_engine.users import add_user

pytestmark = pytest.mark.usefixtures("dbkind")  # every test on SQLite and on PostgreSQL


def _users(db, *names):
    return [add_user(db, n, "password123") for n in names]


def _expire(db, lease_id):
    with session_scope(db) as s:
        s.get(Lease, lease_id).expires_at = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _rows(db, **where):
    with session_scope(db) as s:
        q = select(Feedback)
        for k, v in where.items():
            q = q.where(getattr(Feedback, k) == v)
        return s.exec(q.order_by(Feedback.id)).all()


def test_lease_hands_each_item_to_one_annotator(annotation_db):
    db, info = annotation_db
    alice, bob = _users(db, "alice", "bob")
    a1 = ann.next_item(db, alice)
    b1 = ann.next_item(db, bob)
    assert a1.generation_id != b1.generation_id
    assert ann.next_item(db, alice).lease_id == a1.lease_id  # asking again resumes the same lease
    assert a1.categories[0] == "Excellent" and a1.conditioning is None  # hidden unless the task shows it
    seen = {a1.generation_id, b1.generation_id}
    for user, item in ((alice, a1), (bob, b1)):
        ann.submit(db, user, item.lease_id, ann.Submission(category="Good"))
    while (item := ann.next_item(db, alice)) is not None:
        assert item.generation_id not in seen
        seen.add(item.generation_id)
        ann.submit(db, alice, item.lease_id, ann.Submission(category="Bad"))
    assert seen == set(info["generations"])
    assert ann.next_item(db, bob) is None  # k = 1: nothing left for bob
    p = ann.progress(db, alice, "default")
    assert (p.done, p.remaining, p.total) == (5, 0, 6)


def test_concurrent_annotators_never_share_an_item(make_db):
    db = make_db("c", init=False)
    seed_annotation_db(db, n=40)
    users = _users(db, *[f"u{i}" for i in range(8)])
    got = label_concurrently(db, users)
    assert sorted(got) == sorted(set(got)) and len(got) == 40
    assert len(_rows(db, kind="category")) == 40


def test_overlap_k_distinct_annotators(make_db):
    db = make_db("k", init=False)
    info = seed_annotation_db(db, n=2, k=2)
    a, b, c = _users(db, "a", "b", "c")
    ia, ib = ann.next_item(db, a), ann.next_item(db, b)
    assert ia.generation_id == ib.generation_id == info["generations"][0]  # overlap: same item to two people
    ic = ann.next_item(db, c)
    assert ic.generation_id == info["generations"][1]  # the first one already has k = 2 claims
    ann.submit(db, a, ia.lease_id, ann.Submission(category="Good"))
    # a never gets the item they already labelled, even though it is shared
    ia2 = ann.next_item(db, a)
    assert ia2.generation_id == info["generations"][1]
    ann.submit(db, b, ib.lease_id, ann.Submission(category="Bad"))
    ann.submit(db, a, ia2.lease_id, ann.Submission(category="Good"))
    ann.submit(db, c, ic.lease_id, ann.Submission(category="Good"))
    for u in (a, b, c):
        assert ann.next_item(db, u) is None
    per_item = {}
    for r in _rows(db, kind="category"):
        per_item.setdefault(r.generation_id, set()).add(r.source)
    assert per_item == {info["generations"][0]: {"human:a", "human:b"}, info["generations"][1]: {"human:a", "human:c"}}


def test_expired_lease_goes_to_someone_else_and_late_submit(annotation_db):
    db, info = annotation_db
    alice, bob = _users(db, "alice", "bob")
    a = ann.next_item(db, alice)
    _expire(db, a.lease_id)
    b = ann.next_item(db, bob)
    assert b.generation_id == a.generation_id  # expired: handed out again
    # bob holds the item now (a lease is a promise): alice's late submit yields, or k = 1 would get two labels
    with pytest.raises(ann.Conflict, match="went to others"):
        ann.submit(db, alice, a.lease_id, ann.Submission(category="Good", text="fine"))
    assert ann.submit(db, bob, b.lease_id, ann.Submission(category="Bad")).status == "saved"
    assert [r.source for r in _rows(db, generation_id=a.generation_id)] == ["human:bob"]
    # a late submit on an item nobody took meanwhile is saved
    a2 = ann.next_item(db, alice)
    _expire(db, a2.lease_id)
    res = ann.submit(db, alice, a2.lease_id, ann.Submission(category="Good", text="fine"))
    assert res.status == "saved" and res.late


def test_undo_does_not_reopen_an_item_others_took_meanwhile(make_db):
    db = make_db("u", init=False)
    seed_annotation_db(db, n=1, k=2)
    alice, bob = _users(db, "alice", "bob")
    a = ann.next_item(db, alice)
    ann.submit(db, alice, a.lease_id, ann.Submission(category="Good"))
    b = ann.next_item(db, bob)
    ann.submit(db, bob, b.lease_id, ann.Submission(category="Bad"))
    with session_scope(db) as s:  # the admin lowers the overlap: bob's label alone fills the item now
        s.exec(select(Task)).one().annotations_per_item = 1
    with pytest.raises(ann.AnnotationError, match="went to others"):
        ann.undo_last(db, alice)  # re-opening would let her label it again: a second label at k = 1
    assert [r.source for r in _rows(db)] == ["human:alice", "human:bob"]  # nothing changed
    # her tab still shows it: a different label says what is saved and writes nothing
    res = ann.submit(db, alice, a.lease_id, ann.Submission(category="Bad"))
    assert res.status == "already_labelled" and res.existing["category"] == "Good"
    assert ann.submit(db, alice, a.lease_id, ann.Submission(category="Good")).status == "duplicate"
    assert [r.category for r in _rows(db)] == ["Good", "Bad"]


def test_huge_or_bad_ids_are_refused_not_a_crash(annotation_db):
    db, _ = annotation_db
    (alice,) = _users(db, "alice")
    item = ann.next_item(db, alice)
    for bad in (2**63, 2**80, -1, 0):
        with pytest.raises(ann.AnnotationError, match="lease_id"):
            ann.submit(db, alice, bad, ann.Submission(category="Good"))
        with pytest.raises(ann.AnnotationError, match="lease_id"):
            ann.skip(db, alice, bad)
        with pytest.raises(ann.AnnotationError, match="lease_id"):
            ann.get_item(db, alice, bad)
    with pytest.raises(ann.AnnotationError, match="accept_suggestion"):
        ann.submit(db, alice, item.lease_id, ann.Submission(accept_suggestion=2**64))
    assert not _rows(db)


def test_late_submit_refused_when_item_got_its_labels(annotation_db):
    db, _ = annotation_db
    alice, bob = _users(db, "alice", "bob")
    a = ann.next_item(db, alice)
    _expire(db, a.lease_id)
    b = ann.next_item(db, bob)
    ann.submit(db, bob, b.lease_id, ann.Submission(category="Bad"))
    with pytest.raises(ann.Conflict, match="nothing was saved"):
        ann.submit(db, alice, a.lease_id, ann.Submission(category="Good"))
    assert [r.source for r in _rows(db, generation_id=a.generation_id)] == ["human:bob"]
    with pytest.raises(ann.Conflict):  # and stays refused
        ann.submit(db, alice, a.lease_id, ann.Submission(category="Good"))
    assert ann.next_item(db, alice).generation_id != a.generation_id


def test_double_submit_writes_one_row(annotation_db):
    db, _ = annotation_db
    (alice,) = _users(db, "alice")
    item = ann.next_item(db, alice)
    sub = ann.Submission(category="Good", text="clear answer", critique="too long", revision="Short.",
                         judgment="The answer is verbose.")
    results = []
    threads = [threading.Thread(target=lambda: results.append(ann.submit(db, alice, item.lease_id, sub)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == ["duplicate"] * 3 + ["saved"]
    rows = _rows(db, generation_id=item.generation_id)
    assert [r.kind for r in rows] == ["critique", "judgment", "category"]  # the main label is the newest
    assert rows[2].category == "Good" and rows[2].text == "clear answer" and rows[2].source == "human:alice"
    assert rows[0].critique == "too long" and rows[0].revision == "Short." and rows[1].text == "The answer is verbose."
    assert {r.user_id for r in rows} == {alice.id}


def test_bad_input_is_refused_and_nothing_written(annotation_db):
    db, _ = annotation_db
    alice, bob = _users(db, "alice", "bob")
    item = ann.next_item(db, alice)
    with pytest.raises(ann.AnnotationError, match="not a category"):
        ann.submit(db, alice, item.lease_id, ann.Submission(category="Great!"))
    with pytest.raises(ann.AnnotationError, match="nothing to submit"):
        ann.submit(db, alice, item.lease_id, ann.Submission(text="   "))
    with pytest.raises(ann.AnnotationError, match="no lease"):
        ann.submit(db, bob, item.lease_id, ann.Submission(category="Good"))  # someone else's lease
    with pytest.raises(ann.AnnotationError, match="no task"):
        ann.next_item(db, alice, task="nope")
    assert _rows(db) == []
    assert ann.submit(db, alice, item.lease_id, ann.Submission(text="free text only")).status == "saved"
    assert _rows(db)[0].kind == "text"


def test_undo_reopens_last_submission(annotation_db):
    db, _ = annotation_db
    (alice,) = _users(db, "alice")
    first = ann.next_item(db, alice)
    ann.submit(db, alice, first.lease_id, ann.Submission(category="Good"))
    second = ann.next_item(db, alice)
    ann.submit(db, alice, second.lease_id, ann.Submission(category="Bad", critique="meh"))
    back = ann.undo_last(db, alice)
    assert back.lease_id == second.lease_id
    assert _rows(db, generation_id=second.generation_id) == []
    assert ann.next_item(db, alice).lease_id == second.lease_id  # the undone item is on screen again
    ann.submit(db, alice, second.lease_id, ann.Submission(category="Excellent"))
    assert [r.category for r in _rows(db, generation_id=second.generation_id)] == ["Excellent"]
    # a label a model was trained on cannot be undone
    with session_scope(db) as s:
        v = ModelVersion(name="v1", path="/x")
        s.add(v)
        s.flush()
        s.add(TrainingExample(model_version_id=v.id, feedback_id=_rows(db, generation_id=second.generation_id)[0].id))
    with pytest.raises(ann.AnnotationError, match="already used to train"):
        ann.undo_last(db, alice)


def test_undo_after_skip_brings_back_the_skipped_item(annotation_db):
    db, _ = annotation_db
    (alice,) = _users(db, "alice")
    first = ann.next_item(db, alice)
    ann.submit(db, alice, first.lease_id, ann.Submission(category="Good", text="clear"))
    second = ann.next_item(db, alice)
    ann.skip(db, alice, second.lease_id)
    back = ann.undo_last(db, alice)
    assert back.generation_id == second.generation_id and back.previous is None  # the skipped one, not the one before
    assert [r.category for r in _rows(db)] == ["Good"]  # the label before the skip is untouched
    assert ann.next_item(db, alice).generation_id == second.generation_id  # on screen again, labelable
    ann.submit(db, alice, back.lease_id, ann.Submission(category="Bad"))
    # undo again: the submission just made; then the one before — each returning what it said
    assert ann.undo_last(db, alice).previous["category"] == "Bad"
    third = ann.undo_last(db, alice)
    assert third.generation_id == first.generation_id
    assert third.previous == dict(category="Good", text="clear", critique=None, revision=None, judgment=None,
                                  flag=None)  # the text comes back to the screen, never deleted silently


def test_stale_second_tab_is_told_and_may_replace(annotation_db):
    db, _ = annotation_db
    alice, bob = _users(db, "alice", "bob")
    tab1 = ann.next_item(db, alice)
    tab2 = ann.next_item(db, alice)  # a second tab resumes the same lease
    assert tab2.lease_id == tab1.lease_id
    ann.submit(db, alice, tab1.lease_id, ann.Submission(category="Good", text="fine"))
    res = ann.submit(db, alice, tab2.lease_id, ann.Submission(category="Horrible"))
    assert res.status == "already_labelled" and res.existing["category"] == "Good" and res.existing["text"] == "fine"
    assert [r.category for r in _rows(db)] == ["Good"]  # nothing written
    with pytest.raises(ann.AnnotationError, match="no lease"):
        ann.replace_label(db, bob, tab2.lease_id, ann.Submission(category="Bad"))
    with pytest.raises(ann.AnnotationError, match="not a category"):
        ann.replace_label(db, alice, tab2.lease_id, ann.Submission(category="Great"))
    assert ann.replace_label(db, alice, tab2.lease_id, ann.Submission(category="Horrible")).status == "saved"
    rows = _rows(db)
    assert [(r.category, r.text, r.source) for r in rows] == [("Horrible", None, "human:alice")]
    assert ann.progress(db, alice, "default").done == 1  # still one label on the item
    assert ann.undo_last(db, alice).previous["category"] == "Horrible"  # the replacement is the last action


def test_fields_the_task_turns_off_are_refused(annotation_db):
    db, _ = annotation_db
    (alice,) = _users(db, "alice")
    with session_scope(db) as s:
        t = s.exec(select(Task)).one()
        t.allow_critique, t.allow_judgment = False, False
    item = ann.next_item(db, alice)
    assert not item.allow_critique and not item.allow_judgment
    with pytest.raises(ann.AnnotationError, match="critique"):
        ann.submit(db, alice, item.lease_id, ann.Submission(category="Good", revision="Better."))
    with pytest.raises(ann.AnnotationError, match="judgment"):
        ann.submit(db, alice, item.lease_id, ann.Submission(category="Good", judgment="Wrong."))
    assert _rows(db) == []


def test_skip_and_flag(make_db):
    db = make_db("s", init=False)
    info = seed_annotation_db(db, n=3, k=2)
    alice, bob = _users(db, "alice", "bob")
    a = ann.next_item(db, alice)
    ann.skip(db, alice, a.lease_id)
    assert ann.next_item(db, alice).generation_id != a.generation_id  # skipped: not offered again to alice
    b = ann.next_item(db, bob)
    assert b.generation_id == a.generation_id  # ...but to others
    ann.flag(db, bob, b.lease_id, "contains personal data")
    flags = _rows(db, kind="flag")
    assert len(flags) == 1 and flags[0].text == "contains personal data" and flags[0].source == "human:bob"
    with pytest.raises(ann.AnnotationError, match="skipped"):
        ann.submit(db, alice, a.lease_id, ann.Submission(category="Good"))
    # a flagged item leaves everyone's queue
    seen = set()
    for u in (alice, bob):
        while (item := ann.next_item(db, u)) is not None:
            seen.add(item.generation_id)
            ann.submit(db, u, item.lease_id, ann.Submission(category="Good"))
    assert info["generations"][0] not in seen


def test_ai_suggestion_shown_and_accepted(annotation_db):
    db, info = annotation_db
    (alice,) = _users(db, "alice")
    gen = info["generations"][0]
    with session_scope(db) as s:
        s.add(Feedback(generation_id=gen, source="llm:judge-x", kind="category", category="Mediocre"))
        t = s.exec(select(Task)).one()
        t.show_conditioning = True
    item = ann.next_item(db, alice)
    assert item.generation_id == gen and item.conditioning == "Excellent"
    assert item.suggestion.source == "llm:judge-x" and item.suggestion.category == "Mediocre"
    ann.submit(db, alice, item.lease_id, ann.Submission(accept_suggestion=item.suggestion.feedback_id))
    human = _rows(db, source="human:alice")
    assert len(human) == 1 and human[0].category == "Mediocre" and "llm:judge-x" in human[0].raw
    other = ann.next_item(db, alice)
    with pytest.raises(ann.AnnotationError, match="not an AI label"):
        ann.submit(db, alice, other.lease_id, ann.Submission(accept_suggestion=item.suggestion.feedback_id))


def test_only_open_rounds_are_queued(annotation_db):
    from alt_engine.db import Round

    db, info = annotation_db
    (alice,) = _users(db, "alice")
    assert ann.next_item(db, alice) is not None
    with session_scope(db) as s:
        s.get(Round, info["round"]).status = "closed"
    assert ann.next_item(db, alice) is None  # not even the item alice holds: the round is closed


def test_raising_overlap_reopens_finished_items(make_db):
    db = make_db("r", init=False)
    info = seed_annotation_db(db, n=3, k=1)
    alice, bob = _users(db, "alice", "bob")
    while (item := ann.next_item(db, alice)) is not None:
        ann.submit(db, alice, item.lease_id, ann.Submission(category="Good"))
    assert ann.next_item(db, bob) is None
    with session_scope(db) as s:
        s.exec(select(Task)).one().annotations_per_item = 2
    assert ann.next_item(db, bob).generation_id == info["generations"][0]


def test_json_api(make_db, tiny_model_dir):
    """The JSON API in-process: same service, HTTP status codes for refusals."""
    from fastapi.testclient import TestClient

    from alt_engine.settings import Settings
    from app.server import create_app

    db = make_db("api", init=False)
    info = seed_annotation_db(db, n=4, k=1)
    _users(db, "alice", "bob")
    app = create_app(Settings(db=db, model=tiny_model_dir, secret_key="k"))
    alice, bob = TestClient(app), TestClient(app)
    assert alice.get("/api/annotate/next").status_code == 401
    for c, name in ((alice, "alice"), (bob, "bob")):
        assert c.post("/api/login", data={"username": name, "password": "password123"}).status_code == 200
    item = alice.get("/api/annotate/next").json()["item"]
    assert item["generation_id"] == info["generations"][0] and item["categories"][0] == "Excellent"
    body = {"lease_id": item["lease_id"], "category": "Good", "text": "ok"}
    assert bob.post("/api/annotate/submit", json=body).status_code == 400  # not bob's lease
    assert alice.post("/api/annotate/submit", json={**body, "category": "Great"}).status_code == 400
    assert alice.post("/api/annotate/submit", json=body).json()["status"] == "saved"
    assert alice.post("/api/annotate/submit", json=body).json()["status"] == "duplicate"
    nxt = alice.get("/api/annotate/next").json()["item"]
    assert alice.post("/api/annotate/skip", json={"lease_id": nxt["lease_id"]}).json() == {"status": "skipped"}
    third = alice.get("/api/annotate/next").json()["item"]
    assert alice.post("/api/annotate/flag", json={"lease_id": third["lease_id"], "reason": "spam"}).status_code == 200
    assert alice.post("/api/annotate/undo").json()["item"]["lease_id"] == third["lease_id"]
    assert alice.get("/api/annotate/progress", params={"task": "default"}).json() == {"done": 1, "remaining": 2,
                                                                                       "total": 4}
    # late submission refused once someone else labelled the item: 409 with the reason
    _expire(db, third["lease_id"])
    b = bob.get("/api/annotate/next").json()["item"]
    assert b["generation_id"] == info["generations"][1]  # the one alice skipped
    b2 = bob.post("/api/annotate/submit", json={"lease_id": b["lease_id"], "category": "Bad"})
    assert b2.status_code == 200
    b3 = bob.get("/api/annotate/next").json()["item"]
    assert b3["generation_id"] == third["generation_id"]
    bob.post("/api/annotate/submit", json={"lease_id": b3["lease_id"], "category": "Bad"})
    late = alice.post("/api/annotate/submit", json={"lease_id": third["lease_id"], "category": "Good"})
    assert late.status_code == 409 and "nothing was saved" in late.json()["detail"]
    assert len(_rows(db, generation_id=third["generation_id"])) == 1
    # ids SQLite cannot hold: 400 with a message, not a 500
    for path, body in (("submit", {"lease_id": 2**64, "category": "Good"}), ("skip", {"lease_id": 2**63}),
                       ("flag", {"lease_id": 2**70}),
                       ("submit", {"lease_id": b3["lease_id"], "accept_suggestion": 2**63, "category": None})):
        r = bob.post(f"/api/annotate/{path}", json=body)
        assert r.status_code == 400 and "must be a whole number" in r.json()["detail"], (path, r.text)
