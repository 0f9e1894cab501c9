"""The ``--workers`` front and forwarded headers: who the client is, and a worker connection that drops.

In-process: ``StickyProxy`` over ASGI in front of a small real HTTP server on 127.0.0.1; ``FrontHeaders`` on a
bare FastAPI app; and one real ``alt serve`` for uvicorn's own forwarded-header handling.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest
from conftest import LiveServer
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app.guard import FrontHeaders
from app.proxy import StickyProxy


class DroppingServer:
    """HTTP/1.1 on 127.0.0.1 that answers the first request on each connection with keep-alive, then closes the
    connection without a word when a second request arrives on it (a worker's keep-alive timeout racing the
    front's reuse of the connection)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            if not conn.recv(65536):
                return
            self.answered += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            conn.recv(65536)  # the next request on this connection: dropped

    def close(self):
        self.sock.close()


def test_an_idempotent_request_is_retried_on_a_fresh_connection():
    """Item 14: 4 of ~1,000 calls got 502 "the app worker did not answer" (a reused keep-alive connection)."""
    backend = DroppingServer()
    proxy = StickyProxy([backend.url])

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://front") as c:
            return [(await c.get("/healthz")).status_code for _ in range(5)]

    try:
        assert asyncio.run(calls()) == [200] * 5
    finally:
        backend.close()
    assert backend.answered == 5


def _whoami_app(token: str) -> FastAPI:
    api = FastAPI()

    @api.get("/who")
    def who(request: Request):
        return {"client": request.client.host, "scheme": request.url.scheme}

    api.add_middleware(FrontHeaders, token=token)
    return api


def test_a_worker_believes_forwarded_headers_from_its_front_only():
    """Item 5: a local client talking to a worker port directly cannot pose as another address."""
    c = TestClient(_whoami_app("front-secret"))
    spoof = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    assert c.get("/who", headers=spoof).json() == {"client": "testclient", "scheme": "http"}
    assert c.get("/who", headers={**spoof, "x-alt-front": "guess"}).json()["client"] == "testclient"
    assert c.get("/who", headers={**spoof, "x-alt-front": "front-secret"}).json() == {
        "client": "203.0.113.9", "scheme": "https"}


@pytest.mark.slow  # one `alt serve` start
def test_alt_serve_ignores_forwarded_for_from_local_clients(tmp_path, tiny_model_dir):
    """Item 5: `alt serve` believed X-Forwarded-For from any client on 127.0.0.1 (uvicorn's default), so one local
    client made every guess from a fresh address (539 guesses in 20 s) and could lock a victim's address."""
    from alt_engine.users import ADDR_LIMIT

    server = LiveServer(str(tmp_path / "f.db"), tiny_model_dir, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            codes = [http.post("/api/login", json={"username": f"nobody{i}", "password": "wrongpass1"},
                               headers={"X-Forwarded-For": f"198.51.100.{i + 1}"}).status_code
                     for i in range(ADDR_LIMIT + 2)]
    finally:
        server.stop()
    assert codes[:ADDR_LIMIT] == [401] * ADDR_LIMIT and codes[ADDR_LIMIT:] == [429, 429]  # one address: the peer
