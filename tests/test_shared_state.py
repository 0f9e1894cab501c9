"""State several app processes must share lives in the database: the sign-in throttle and the cookie key."""

from __future__ import annotations

import asyncio

import pytest

from alt_engine.settings import Settings
from alt_engine.users import add_user
from app.auth import Auth

pytestmark = pytest.mark.usefixtures("dbkind")  # on SQLite and on PostgreSQL


def test_two_app_processes_share_throttle_and_session_key(db):
    add_user(db, "frank", "frankpass1")
    one, two = Auth(Settings(db=db)), Auth(Settings(db=db))  # two processes: nothing shared in memory
    assert one.key == two.key  # no configured secret: one random key, stored once in the database
    assert Auth(Settings(db=db, secret_key="configured")).key == b"configured"
    token = one.issue(asyncio.run(one.sign_in("frank", "frankpass1"))[0])
    assert two.read(token)[0] == "frank"  # signed in on one process, recognised by the other
    for auth in (one, two, one, two, one):  # 5 failures spread over both processes
        assert asyncio.run(auth.sign_in("frank", "wrong-password", "10.0.0.9"))[0] is None
    for auth in (one, two):
        user, why = asyncio.run(auth.sign_in("frank", "frankpass1", "10.0.0.9"))
        assert user is None and "Too many failed sign-ins" in why
