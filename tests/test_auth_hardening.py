"""Sign-in throttling under concurrency, per address and per name; server-side session revocation; bad cookies.

In-process: the sign-in routes on a bare FastAPI app, driven over ASGI with chosen client addresses.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alt_engine.db import SignInThrottle, session_scope
from alt_engine.settings import Settings
from alt_engine.users import NAME_LIMIT, add_user, begin_sign_in, end_sign_in, set_active, set_password
from app.auth import Auth, add_auth_routes


@pytest.fixture
def auth_app(db):
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    api = FastAPI()
    add_auth_routes(api, Auth(Settings(db=db, secret_key="test-key")))
    return api, db


def _client(api, addr: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api, client=(addr, 4242)), base_url="http://app")


async def _login(c: httpx.AsyncClient, name: str, password: str) -> int:
    return (await c.post("/api/login", json={"username": name, "password": password})).status_code


def test_concurrent_guesses_are_counted_before_the_hash(auth_app):
    api, _ = auth_app

    async def burst():
        async with _client(api, "10.0.0.1") as c:
            guesses = [_login(c, "admin", f"guess-{i:03d}") for i in range(40)] + [_login(c, "admin", "adminpass1")]
            return await asyncio.gather(*guesses)

    codes = asyncio.run(burst())
    checked = [c for c in codes if c in (200, 401)]
    assert len(checked) <= NAME_LIMIT, codes  # the rest were refused before any password hash was computed
    assert codes.count(429) >= len(codes) - NAME_LIMIT


def test_spraying_names_from_one_address_is_limited(auth_app):
    api, _ = auth_app

    async def spray():
        async with _client(api, "10.0.0.2") as c:
            return [await _login(c, f"user{i}", "password99") for i in range(30)]

    codes = asyncio.run(spray())
    assert 429 in codes and codes.index(429) <= 20, codes
    assert set(codes[codes.index(429):]) == {429}


def test_a_locked_name_gives_no_address_a_guess(auth_app):
    """Item 5: once a name is locked, fresh addresses get no guess at it (100 of 100 were checked before), the
    right password included; a new password (``alt users passwd``) lifts the lock."""
    api, db = auth_app

    async def play():
        async with _client(api, "10.0.0.3") as attacker:
            bad = [await _login(attacker, "admin", f"wrong-{i}") for i in range(NAME_LIMIT + 1)]
        fresh = []
        for i in range(100):
            async with _client(api, f"10.9.{i // 250}.{i % 250 + 1}") as c:
                fresh.append(await _login(c, "admin", "adminpass1" if i == 99 else f"spray-{i}"))
        set_password(db, "admin", "adminpass2")
        async with _client(api, "10.0.0.4") as owner:
            return bad, fresh, await _login(owner, "admin", "adminpass2")

    bad, fresh, after_reset = asyncio.run(play())
    assert bad == [401] * NAME_LIMIT + [429]
    assert fresh == [429] * 100  # no password was checked
    with session_scope(db) as s:
        assert s.get(SignInThrottle, "name:admin") is None or s.get(SignInThrottle, "name:admin").failures == 0
    assert after_reset == 200


def test_a_team_behind_one_address_signs_in_at_once(auth_app):
    """Item 7: 30 colleagues behind one NAT address signing in together with the right passwords all get in (an
    attempt counts as failed only once it has failed; 9 of 30 got 429 before)."""
    api, db = auth_app
    for i in range(30):
        add_user(db, f"colleague{i}", f"colleague{i}pass")

    async def together():
        async with _client(api, "10.0.0.7") as c:
            return await asyncio.gather(*(_login(c, f"colleague{i}", f"colleague{i}pass") for i in range(30)))

    assert asyncio.run(together()) == [200] * 30


def test_lock_backs_off(db):
    for i in range(NAME_LIMIT):
        assert begin_sign_in(db, "bob", f"10.1.0.{i}") == 0
        end_sign_in(db, "bob", f"10.1.0.{i}", ok=False)
    first = begin_sign_in(db, "bob", "10.1.0.0")
    assert 50 < first <= 60
    with session_scope(db) as s:  # the lock ran out
        s.get(SignInThrottle, "name:bob").locked_until = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert begin_sign_in(db, "bob", "10.1.0.0") == 0
    end_sign_in(db, "bob", "10.1.0.0", ok=False)
    assert begin_sign_in(db, "bob", "10.1.0.0") > first + 50  # doubled


def _me(c: TestClient) -> int:
    return c.get("/api/me").status_code


def test_sessions_are_revoked_on_sign_out_password_change_and_deactivation(auth_app):
    api, db = auth_app
    for end in ("logout", "password", "deactivate"):
        c = TestClient(api)
        assert c.post("/api/login", json={"username": "alice", "password": "alicepass1"}).status_code == 200
        stolen = c.cookies["alt_session"]
        assert _me(c) == 200
        if end == "logout":
            c.post("/api/logout")
        elif end == "password":
            set_password(db, "alice", "alicepass1")  # same password, still a new session generation
        else:
            set_active(db, "alice", False)
        replay = TestClient(api, cookies={"alt_session": stolen})
        assert _me(replay) == 401, end
        set_active(db, "alice", True)
    c = TestClient(api)  # a fresh sign-in works again
    assert c.post("/api/login", json={"username": "alice", "password": "alicepass1"}).status_code == 200
    assert _me(c) == 200


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cookie", [
    _b64("1:admin:9999999999") + ".é", _b64("1:admin:9999999999:0") + ".sïg", _b64("1:admin:soon:0") + ".x",
    "é.é", "YWRtaW4.ü", "\u00ff\u00fe", "a.b.c", ".", ""])
def test_a_bad_cookie_is_ignored(auth_app, cookie):
    api, _ = auth_app
    c = TestClient(api, raise_server_exceptions=False)
    headers = {"cookie": f"alt_session={cookie}".encode("latin-1")}
    assert c.get("/login", headers=headers).status_code == 200  # the sign-in page is reachable
    assert c.get("/api/me", headers=headers).status_code == 401
    r = c.post("/api/login", headers=headers, json={"username": "alice", "password": "alicepass1"})
    assert r.status_code == 200


def test_a_new_password_ends_the_users_api_keys(db, capsys):
    """Item 12: API keys survived ``alt users passwd``; they end as sessions end, and the CLI says so."""
    from alt_engine.apikeys import create_key, user_for_key
    from alt_engine.users import get_user
    from app.cli import main

    add_user(db, "carol", "carolpass1")
    key = create_key(db, get_user(db, "carol"), "laptop")
    assert user_for_key(db, key).name == "carol"
    assert main(["users", "passwd", "carol", "--password", "carolpass2", "--db", db]) == 0
    assert "1 API key(s) revoked" in capsys.readouterr().out
    assert user_for_key(db, key) is None
    assert user_for_key(db, create_key(db, get_user(db, "carol"))).name == "carol"  # a new one works
