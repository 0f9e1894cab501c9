"""Property test of the annotation queue: at overlap k, never more than k labels on an item.

A seeded random driver plays thousands of interleavings of next / submit (on time, late, twice) / undo /
skip / flag by four annotators over three items, with a fake clock and short leases so that leases expire
all the time, and checks after every step, straight from the database:
  * no item has more than k labels (done leases), nor human labels from more than k people;
  * every done lease has its Feedback rows and every Feedback row of a lease belongs to a done lease;
  * every acknowledged submission is still there unless its author undid it (nothing lost).
A failure prints the seed and the steps that led to it (rerun one seed with ``ALT_PROPERTY_SEED``).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time

from conftest import seed_annotation_db
from sqlalchemy import text

from alt_engine import annotation as ann
from alt_engine import annotation_items
from alt_engine.db import get_engine
from alt_engine.users import add_user

RUNS = 1000
STEPS = 14
N_USERS = 4


class Clock:
    def __init__(self):
        self.t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += dt.timedelta(seconds=seconds)


def _check(db: str, k: int, acked: dict[int, list[int]], trace: list[str]) -> None:
    with get_engine(db).connect() as c:
        over = c.execute(text("SELECT generation_id, COUNT(*) FROM lease WHERE state = 'done' "
                              "GROUP BY generation_id HAVING COUNT(*) > :k"), {"k": k}).all()
        people = c.execute(text("SELECT generation_id, COUNT(DISTINCT user_id) FROM feedback "
                                "WHERE source LIKE 'human:%' GROUP BY generation_id "
                                "HAVING COUNT(DISTINCT user_id) > :k"), {"k": k}).all()
        unlabelled = c.execute(text(
            "SELECT l.id FROM lease l WHERE l.state = 'done' AND NOT EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.request_key LIKE 'lease:' || l.id || ':%')")).all()
        orphans = c.execute(text("SELECT f.id FROM feedback f WHERE f.request_key IS NOT NULL AND NOT EXISTS "
                                 "(SELECT 1 FROM lease l WHERE f.request_key LIKE 'lease:' || l.id || ':%' "
                                 "AND l.state = 'done')")).all()
        present = {r[0] for r in c.execute(text("SELECT id FROM feedback"))}
    lost = [fid for ids in acked.values() for fid in ids if fid not in present]
    problems = dict(over_k=over, over_k_people=people, done_without_rows=unlabelled, rows_without_done=orphans,
                    lost=lost)
    assert not any(problems.values()), f"k={k}: {problems}\n" + "\n".join(trace)


def _play(db: str, users, clock: Clock, rng: random.Random, k: int) -> None:
    with get_engine(db).begin() as c:
        c.execute(text("DELETE FROM feedback"))
        c.execute(text("DELETE FROM lease"))
        c.execute(text("UPDATE task SET annotations_per_item = :k"), {"k": k})
    ann._floors.clear()
    lease_s = rng.choice([1, 2, 3])
    held: dict[str, list[int]] = {u.name: [] for u in users}  # every lease each user was given
    acked: dict[int, list[int]] = {}  # lease id -> feedback ids of an acknowledged submission
    trace = [f"k={k} lease={lease_s}s"]
    for _ in range(STEPS):
        user = rng.choice(users)
        op = rng.choices(["next", "submit", "submit", "undo", "skip", "flag", "wait"], [4, 4, 2, 1, 1, 0.5, 3])[0]
        outcome = ""
        try:
            if op == "next":
                item = ann.next_item(db, user, lease_seconds=lease_s)
                if item is not None:
                    held[user.name].append(item.lease_id)
                outcome = f"-> {item and (item.lease_id, item.generation_id)}"
            elif op in ("submit", "skip", "flag") and held[user.name]:
                lease = rng.choice(held[user.name])
                if op == "submit":
                    res = ann.submit(db, user, lease, ann.Submission(category="Good"))
                    if res.status == "saved":
                        acked[lease] = res.feedback_ids
                elif op == "flag":
                    res = ann.flag(db, user, lease, "odd")
                    if res.status == "saved":
                        acked[lease] = res.feedback_ids
                else:
                    ann.skip(db, user, lease)
                outcome = f"lease {lease}"
            elif op == "undo":
                item = ann.undo_last(db, user, lease_seconds=lease_s)
                acked.pop(item.lease_id, None)
                outcome = f"-> lease {item.lease_id}"
            elif op == "wait":
                seconds = rng.choice([0.5, 1, 1.5, 2, 4])
                clock.advance(seconds)
                outcome = f"{seconds}s"
        except ann.AnnotationError as e:
            outcome += f" refused: {e}"
        trace.append(f"{user.name} {op} {outcome}")
        _check(db, k, acked, trace)


def test_never_more_than_k_labels_under_random_interleavings(tmp_path, monkeypatch):
    db = str(tmp_path / "prop.db")
    seed_annotation_db(db, n=3)
    users = [add_user(db, f"u{i}", "password123") for i in range(N_USERS)]
    clock = Clock()
    monkeypatch.setattr(annotation_items, "_now", clock)  # the queue's clock, looked up there by every caller
    seeds = [int(os.environ["ALT_PROPERTY_SEED"])] if os.environ.get("ALT_PROPERTY_SEED") else range(RUNS)
    start = time.perf_counter()
    for seed in seeds:
        rng = random.Random(seed)
        try:
            _play(db, users, clock, rng, k=rng.choice([1, 1, 2, 3]))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from None
    assert time.perf_counter() - start < 120  # "thousands of interleavings in seconds" (~10 s idle), generous for CI
