"""``alt serve --workers N``: N app processes behind one port, each user's requests kept on one process.

Gradio keeps a browser session's state in the process that serves it (its event queue: ``queue/join`` and the
``queue/data`` stream must meet in one process; ``gr.State``), so N processes that merely share a socket break
the browser UI (measured: 9 of 12 Gradio calls got "session not found" under uvicorn's own ``--workers 2``).
Here the port belongs to a small front process that forwards each request, streamed both ways (server-sent
events included), to the worker chosen by the request's session cookie — else its API key, else its client
address — so one person's page always talks to one process, while people, annotators and ``/v1`` callers
spread over all of them. Everything else the processes share lives in the database (sessions, the sign-in
throttle, leases, jobs).

The front replaces ``X-Forwarded-For`` with the peer it sees and signs each request with a token only it and its
workers know (``Settings.front_token``, made at start); a worker believes the header only with that token, so the
sign-in throttle counts real client addresses, not the front's, and a local client talking to a worker port
directly cannot pose as another address. An idempotent request (GET, HEAD, OPTIONS without a body) whose worker
connection fails before an answer — a kept-alive connection the worker had just closed — is retried once on a
fresh connection. Behind another proxy, use an ASGI
server's own workers with sticky sessions there instead (README). A worker that dies is restarted.
The hop costs about 1 ms per request (measured: a small JSON route 0.9 → 1.9 ms through the front).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator

import httpcore
import httpx

log = logging.getLogger(__name__)

# not forwarded as the client sent them (content-length / transfer-encoding are: they frame the body re-sent)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade",
              "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-alt-front"}
RESPONSE_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS"}  # retried once on a fresh connection when the worker's connection fails
KEEPALIVE_S = 3.0  # the front drops an idle worker connection after this (uvicorn closes its own after 5 s)


def sticky_key(headers: dict[str, str], client: str) -> str:
    """What keeps a user on one worker: the session cookie, else the API key, else the client address."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "alt_session" and value:
            return "s:" + value
    return "k:" + headers["authorization"] if headers.get("authorization") else "a:" + client


class StickyProxy:
    """An ASGI app forwarding every HTTP request to ``backends[hash(sticky_key) % N]``, streaming both ways."""

    def __init__(self, backends: list[str], token: str = ""):
        self.backends, self.token = backends, token
        # httpx's transport used bare: forwarding needs none of httpx's request/response models (cheaper per request);
        # idle connections expire before uvicorn's keep-alive timeout (5 s) closes them under us
        self.pool = httpcore.AsyncConnectionPool(max_connections=None, max_keepalive_connections=64,
                                                 keepalive_expiry=KEEPALIVE_S)
        self.fresh = httpcore.AsyncConnectionPool(max_connections=None, max_keepalive_connections=0)  # retries

    def index(self, headers: dict[str, str], client: str) -> int:
        """The worker for a request (the same for every request of one session)."""
        return zlib.crc32(sticky_key(headers, client).encode()) % len(self.backends)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.pool.aclose()
                    await self.fresh.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # the app uses no websockets
            await send({"type": "websocket.close", "code": 1003})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = scope["client"][0] if scope.get("client") else "unknown"
        index = self.index(headers, peer)
        target = self.backends[index]
        forward = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items() if k not in HOP_BY_HOP]
        host = headers.get("host", "").encode("latin-1")
        forward += [(b"host", host), (b"x-forwarded-host", host), (b"x-forwarded-for", peer.encode()),
                    (b"x-forwarded-proto", scope.get("scheme", "http").encode())]
        if self.token:
            forward.append((b"x-alt-front", self.token.encode()))
        query = scope.get("query_string", b"")
        url = target.encode() + scope.get("raw_path", scope["path"].encode()) + (b"?" + query if query else b"")

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        has_body = "content-length" in headers or "transfer-encoding" in headers
        retry = not has_body and scope["method"] in IDEMPOTENT
        for pool in (self.pool, self.fresh) if retry else (self.pool,):
            try:
                response = await pool.handle_async_request(httpcore.Request(
                    scope["method"].encode(), url, headers=forward, content=body() if has_body else None,
                    extensions={"timeout": {"connect": 10.0}}))
                break
            except (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.RemoteProtocolError,
                    httpcore.ReadError, httpcore.WriteError) as e:
                log.warning("worker %s did not answer: %s", target, e)
                error = e
        else:
            await _plain(send, 502, f"the app worker did not answer ({type(error).__name__}); try again")
            return
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [*((k, v) for k, v in response.headers if k.lower() not in RESPONSE_HOP_BY_HOP),
                                    (b"x-alt-worker", str(index).encode())]})
            async for chunk in response.aiter_stream():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _plain(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})


def _die_with_parent() -> None:
    """In a worker before exec: SIGTERM when the front process dies, even by SIGKILL (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """N ``uvicorn --factory app.server:app_from_env`` processes on 127.0.0.1 ports (settings from ``ALT_*``),
    restarted when one dies."""

    def __init__(self, n: int, env: dict[str, str]):
        self.env, self.ports = env, [_free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.stopping = threading.Event()

    def _start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.server:app_from_env", "--host", "127.0.0.1",
             "--port", str(self.ports[i]), "--no-proxy-headers",  # the app believes the front's token only
             "--log-level", "warning", "--timeout-graceful-shutdown", "5"], env=self.env, preexec_fn=_die_with_parent)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start(self, wait: float = 300.0) -> None:
        for i in range(len(self.ports)):
            self._start(i)
        deadline = time.monotonic() + wait
        for i, url in enumerate(self.urls):
            while True:
                if self.procs[i].poll() is not None:
                    self.stop()
                    raise RuntimeError(f"app worker {i} exited with status {self.procs[i].returncode}")
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"app worker {i} did not start within {wait:.0f} s")
                time.sleep(0.3)
        threading.Thread(target=self._watch, name="app-workers", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping.wait(2.0):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self.stopping.is_set():
                    log.warning("app worker %d exited (%s): restarting it", i, proc.returncode)
                    print(f"app worker {i} exited ({proc.returncode}): restarting it", file=sys.stderr, flush=True)
                    self._start(i)

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def forwarded_options(settings) -> dict:
    """uvicorn's options for the port people connect to: ``X-Forwarded-*`` believed from ``trusted_proxies`` only
    (uvicorn's own default believes any client on 127.0.0.1)."""
    trusted = settings.trusted_proxies.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def serve_workers(settings, host: str, port: int, n: int) -> None:
    """Start ``n`` app workers with ``settings`` (passed as ``ALT_*``), then the sticky front on ``host:port``."""
    import dataclasses
    import secrets

    import uvicorn

    settings = dataclasses.replace(settings, front_token=secrets.token_urlsafe(32))
    env = {**os.environ, **{f"ALT_{f.name.upper()}": str(getattr(settings, f.name))
                            for f in dataclasses.fields(settings)}, "ALT_WORKERS": "1"}
    workers = Workers(n, env)
    workers.start()
    print(f"{n} app workers ready ({', '.join(workers.urls)}); each session stays on one", flush=True)
    # uvicorn re-raises SIGTERM after its shutdown: with this handler that is a SystemExit, so ``finally`` runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(StickyProxy(workers.urls, settings.front_token), host=host, port=port, log_level="warning",
                    lifespan="on", **forwarded_options(settings))
    finally:
        workers.stop()
