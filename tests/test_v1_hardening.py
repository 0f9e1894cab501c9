"""/v1 hardening: no default key, users' own keys (made in the app, hashed), input limits, a per-user cap.

In-process: sign-in, key and /v1 routes on a bare FastAPI app with a tiny model server.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from alt_engine.db import ApiKey, session_scope
from alt_engine.sampling import TransformersBackend
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from alt_engine.tiny import tiny_model, tiny_tokenizer
from alt_engine.users import add_user, set_active
from app.auth import Auth, add_auth_routes
from app.keys import add_key_routes
from app.openai_api import add_openai_routes


@pytest.fixture(scope="module")
def tiny_backend():
    tok = tiny_tokenizer()
    return TransformersBackend(tiny_model(tok, seed=0), tok)


def _app(db, backend, **settings_kw):
    settings = Settings(db=db, secret_key="k", **settings_kw)
    api = FastAPI()
    auth = Auth(settings)
    add_auth_routes(api, auth)
    add_key_routes(api, settings, auth)
    server = ModelServer(backend, version_name="v0-tiny")
    add_openai_routes(api, settings, server)
    return api, server


def _chat(content="Hi", **kw):
    return {"model": "v0-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2,
            "temperature": 0, **kw}


def _signed_in(api, name) -> TestClient:
    c = TestClient(api)
    assert c.post("/api/login", json={"username": name, "password": f"{name}pass1"}).status_code == 200
    return c


def test_no_default_key_and_users_make_their_own(db, tiny_backend):
    add_user(db, "alice", "alicepass1")
    add_user(db, "bob", "bobpass12x")
    api, server = _app(db, tiny_backend)  # default settings: no admin key
    anon = TestClient(api)
    for headers in ({}, {"Authorization": "Bearer sk-local"}, {"Authorization": "Bearer "}):
        r = anon.post("/v1/chat/completions", headers=headers, json=_chat())
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert anon.get("/v1/models", headers=headers).status_code == 401
    assert anon.post("/api/keys", json={"name": "x"}).status_code == 401  # keys only for signed-in users

    alice = _signed_in(api, "alice")
    made = alice.post("/api/keys", json={"name": "judge"})
    assert made.status_code == 201
    key = made.json()["key"]
    with session_scope(db) as s:  # only a hash is stored
        (row,) = s.exec(select(ApiKey)).all()
        assert key not in (row.key_hash, row.prefix) and row.key_hash != key
    bearer = {"Authorization": f"Bearer {key}"}
    r = anon.post("/v1/chat/completions", headers=bearer, json=_chat())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    listed = alice.get("/api/keys").json()["keys"]
    assert [k["name"] for k in listed] == ["judge"] and listed[0]["last_used_at"]
    bob = TestClient(api)
    bob.post("/api/login", json={"username": "bob", "password": "bobpass12x"})
    assert bob.get("/api/keys").json()["keys"] == []  # one's own keys only
    assert bob.delete(f"/api/keys/{listed[0]['id']}").status_code == 404  # and cannot revoke alice's
    set_active(db, "alice", False)  # a deactivated user's keys stop working
    assert anon.get("/v1/models", headers=bearer).status_code == 401
    set_active(db, "alice", True)
    assert anon.get("/v1/models", headers=bearer).status_code == 200
    alice = _signed_in(api, "alice")
    assert alice.delete(f"/api/keys/{listed[0]['id']}").status_code == 200
    assert anon.get("/v1/models", headers=bearer).status_code == 401  # revoked
    server.close()


def test_admin_key_from_settings(db, tiny_backend):
    api, server = _app(db, tiny_backend, serve_api_key="admin-set-key-123")
    c = TestClient(api)
    assert c.get("/v1/models", headers={"Authorization": "Bearer admin-set-key-123"}).status_code == 200
    assert c.get("/v1/models", headers={"Authorization": "Bearer admin-set-key-124"}).status_code == 401
    server.close()


def test_prompt_and_token_limits_are_clear_4xx(db, tiny_backend):
    api, server = _app(db, tiny_backend, serve_api_key="k1", serve_max_prompt_tokens=40, serve_max_tokens=16)
    c = TestClient(api, headers={"Authorization": "Bearer k1"})
    r = c.post("/v1/chat/completions", json=_chat("x" * (1024 * 1024 * 3)))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = c.post("/v1/chat/completions", json=_chat("word " * 1000))  # over 8 characters per allowed token
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = c.post("/v1/chat/completions", json=_chat("ab " * 100))  # 300 characters, but over 40 tokens
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert "40" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json=_chat(max_tokens=17))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = c.post("/v1/completions", json={"model": "v0-tiny", "prompt": [5] * 41, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = c.post("/v1/completions", json={"model": "v0-tiny", "prompt": [5, 6], "max_tokens": 100})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert c.post("/v1/chat/completions", json=_chat(max_tokens=16)).status_code == 200
    server.close()


def test_one_user_cannot_fill_the_queue(db, tiny_backend):
    from alt_engine.apikeys import create_key

    a, b = add_user(db, "anna", "annapass1"), add_user(db, "ben", "benpass12")
    key_a, key_b = create_key(db, a), create_key(db, b)
    api, server = _app(db, tiny_backend, serve_max_pending=2)
    gate = threading.Event()
    real = tiny_backend.generate

    def held(*args, **kw):  # the model is busy until the test lets it go
        gate.wait(30)
        return real(*args, **kw)

    server.backend = type("Held", (), {"generate": staticmethod(held), "tokenizer": tiny_backend.tokenizer})()

    async def burst():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as c:
            def post(key):
                return c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=_chat())
            flood = [asyncio.ensure_future(post(key_a)) for _ in range(6)]
            await asyncio.sleep(0.5)
            other = asyncio.ensure_future(post(key_b))
            await asyncio.sleep(0.5)
            gate.set()
            return [r.status_code for r in await asyncio.gather(*flood)], (await other).status_code

    flood, other = asyncio.run(burst())
    assert sorted(flood) == [200, 200, 429, 429, 429, 429]  # anna: two at a time
    assert other == 200  # ben is not starved by anna's flood
    server.close()


def test_a_streamed_request_holds_its_slot_until_the_stream_ends(db, tiny_backend):
    """The cap counts a streamed answer until its last event, not only until its response object exists."""
    from alt_engine.apikeys import create_key

    key = create_key(db, add_user(db, "cleo", "cleopass1"))
    api, server = _app(db, tiny_backend, serve_max_pending=1)
    gate = threading.Event()
    real = tiny_backend.generate

    def held(*args, **kw):
        gate.wait(30)
        return real(*args, **kw)

    server.backend = type("Held", (), {"generate": staticmethod(held), "tokenizer": tiny_backend.tokenizer,
                                       "stop_ids": tiny_backend.stop_ids})()
    bearer = {"Authorization": f"Bearer {key}"}

    async def run():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as c:
            streamed = asyncio.ensure_future(c.post("/v1/chat/completions", headers=bearer,
                                                    json=_chat(stream=True)))
            await asyncio.sleep(0.5)  # the stream's response has started; its tokens wait for the model
            second = await c.post("/v1/chat/completions", headers=bearer, json=_chat())
            gate.set()
            first = await streamed
            third = await c.post("/v1/chat/completions", headers=bearer, json=_chat(stream=True))
            return first, second, third

    first, second, third = asyncio.run(run())
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert first.status_code == 200 and first.text.rstrip().endswith("data: [DONE]")
    assert third.status_code == 200  # the slot came back when the stream ended
    server.close()
