"""What every ``/v1`` request passes before the model: the API key, the per-caller fairness cap (``Gate``),
the body-size and token limits — each refused with an OpenAI-style error (``openai_error``) — and noticing a
client that left while it waited."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from alt_engine.apikeys import user_for_key
from alt_engine.settings import Settings

MAX_BODY_BYTES = 2 * 1024 * 1024
CHARS_PER_TOKEN = 8  # a chat longer than this many characters per allowed token is refused before tokenizing


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)



class Gate:
    """Who may call /v1 (users' keys, the admin's key) and how many requests each caller has in flight."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pending: dict[str, int] = {}
        self.lock = threading.Lock()

    def caller(self, request: Request) -> str | None:
        """``user:<id>`` for a user's key, ``admin-key`` for the settings' key, else None."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        admin = self.settings.serve_api_key
        if admin and hmac.compare_digest(key.encode("utf-8", "surrogatepass"), admin.encode()):
            return "admin-key"
        user = user_for_key(self.settings.db, key)
        return f"user:{user.id}" if user is not None else None

    def unauthorized(self, request: Request) -> JSONResponse | None:
        if self.caller(request) is None:
            return openai_error(401, "Invalid or missing API key: make one in the app (API keys tab) and send "
                                     "'Authorization: Bearer <key>'.", code="invalid_api_key")
        return None

    async def admit(self, request: Request) -> tuple[JSONResponse | None, Callable[[], None]]:
        """(None, release) when the request may go on — its slot is held until ``release()`` (idempotent) —
        else (the refusal, a no-op)."""
        caller = await run_in_threadpool(self.caller, request)
        if caller is None:
            return self.unauthorized(request), _nothing
        cap = max(1, self.settings.serve_max_pending)
        with self.lock:
            held = self.pending.get(caller, 0)
            if held >= cap:
                return openai_error(429, f"you have {held} requests waiting or running (at most {cap} at once): "
                                         "wait for one to finish", type_="rate_limit_error",
                                    code="rate_limit_exceeded"), _nothing
            self.pending[caller] = held + 1
        released = threading.Event()

        def release() -> None:
            with self.lock:
                if released.is_set():
                    return
                released.set()
                self.pending[caller] -= 1
                if not self.pending[caller]:
                    del self.pending[caller]

        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            release()
            return too_large(), _nothing
        return None, release

    async def gated(self, request: Request, handle: Callable[[], Awaitable[Response | dict]]) -> Response | dict:
        """Run ``handle`` inside the caller's slot: held until the answer is complete — for a streamed answer,
        until its last event is sent or the client leaves, not merely until the response object exists."""
        denied, release = await self.admit(request)
        if denied is not None:
            return denied
        try:
            response = await handle()
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            _release_after_stream(response, release)
        else:
            release()
        return response


def _nothing() -> None:
    pass


def _release_after_stream(response: StreamingResponse, release: Callable[[], None]) -> None:
    """Call ``release`` when ``response``'s body is done: its iterator ends, fails or is closed (client gone), or
    — should it never start — when Starlette runs the response's background task."""
    inner = response.body_iterator

    async def body():
        try:
            async for chunk in inner:
                yield chunk
        finally:
            release()

    response.body_iterator = body()
    previous = response.background

    async def after() -> None:
        release()
        if previous is not None:
            await previous()

    response.background = BackgroundTask(after)


def too_large() -> JSONResponse:
    return openai_error(413, f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB",
                        code="request_too_large")


async def json_body(request: Request) -> Any:
    """The parsed body; a ValueError for bad JSON, a too-large body is refused while it is read."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise OverflowError
    return json.loads(bytes(body) or b"null")


def max_tokens_error(asked: int, settings: Settings, param: str) -> JSONResponse | None:
    if asked > settings.serve_max_tokens:
        return openai_error(400, f"{param}: {asked} is more than this server allows ({settings.serve_max_tokens})",
                            param=param)
    return None


async def answered(request: Request, waiting: asyncio.Future, on_gone: Callable[[], Any]) -> bool:
    """Wait for ``waiting``; True once it is done, False (after ``on_gone()``) if the client disconnects first."""
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        if done:
            return True
        if await request.is_disconnected():
            on_gone()
            return False
