"""Request bounds at the boundary: one plain ASGI middleware that refuses, before any handler (Gradio events,
the JSON API, ``/v1``, sign-in) does any work:

* a NUL character in the path, the query string or a JSON / form body → 400 (``alt_engine.textpolicy``);
* JSON nested deeper than ``MAX_JSON_DEPTH`` → 400 (the hand-parsed bodies of ``/v1``, ``/login`` and
  ``/api/login`` raised ``RecursionError``: a 500);
* a JSON / form body over ``Settings.max_request_bytes`` → 413, and any one text in it over
  ``Settings.max_text_chars`` → 413 (a playground message is refused by size before it is tokenized).

Multipart bodies (uploads) pass: uploads are admins only and the importer checks each line.

``SameOrigin`` refuses a state-changing request (any method but GET, HEAD, OPTIONS) that a browser sent from
another origin — ``Origin`` naming another host, or ``Sec-Fetch-Site: cross-site / same-site`` — so a page on
another origin (same site included, where the ``SameSite=Lax`` cookie still goes) cannot submit a form to the
app (CSRF). Clients that send neither header (scripts, the OpenAI client) are not browsers and pass; ``/v1``
takes API keys, not cookies.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi.responses import JSONResponse

from alt_engine.settings import Settings
from alt_engine.textpolicy import find_nul

MAX_JSON_DEPTH = 64


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _depth_and_longest(value: Any) -> tuple[int, int]:
    """(nesting depth, longest text) of parsed JSON, iteratively (no recursion on hostile input)."""
    depth, longest, stack = 0, 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            longest = max(longest, len(v))
        elif isinstance(v, dict):
            depth = max(depth, d)
            longest = max([longest, *(len(k) for k in v)])
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth, longest


def check_body(body: bytes, content_type: str, settings: Settings) -> None:
    """Raise ``Refused`` for a body the app must not act on (see the module docstring)."""
    if len(body) > settings.max_request_bytes:
        raise Refused(413, f"the request body is larger than {settings.max_request_bytes} bytes")
    if content_type.startswith("application/x-www-form-urlencoded"):
        value: Any = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    else:  # JSON, whatever the header says (/v1 and /api/login parse the body as JSON)
        try:
            value = json.loads(body)
        except RecursionError as e:
            raise Refused(400, f"the JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from e
        except ValueError:  # not JSON (or not UTF-8): the route reports it; a raw NUL is refused still
            if b"\x00" in body:
                raise Refused(400, "the request body contains a NUL character (\\x00)") from None
            return
    depth, longest = _depth_and_longest(value)
    if depth > MAX_JSON_DEPTH:
        raise Refused(400, f"the JSON body is nested too deeply ({depth} levels, at most {MAX_JSON_DEPTH})")
    if longest > settings.max_text_chars:
        raise Refused(413, f"a text in the request has {longest} characters, more than this server takes "
                           f"({settings.max_text_chars})")
    if (at := find_nul(value, "the request body")) is not None:
        raise Refused(400, f"{at} contains a NUL character (\\x00), which cannot be stored; remove it")


def _refusal(path: str, e: Refused) -> JSONResponse:
    if path.startswith("/v1/"):  # the OpenAI error shape its clients parse
        return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error", "param": None,
                                       "code": "request_too_large" if e.status == 413 else None}}, e.status)
    return JSONResponse({"detail": str(e)}, e.status)


class RequestGuard:
    """The ASGI middleware: reads a JSON / form body (bounded), checks it, then hands it on unchanged."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        try:
            query = scope.get("query_string", b"").decode("latin-1")
            if "\x00" in path or find_nul(parse_qsl(query, keep_blank_values=True)) is not None:
                raise Refused(400, "the URL contains a NUL character (\\x00)")
            headers = dict(scope.get("headers") or [])
            content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
            if scope["method"] not in ("POST", "PUT", "PATCH") or content_type.startswith("multipart/"):
                await self.app(scope, receive, send)
                return
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.settings.max_request_bytes:
                    raise Refused(413, f"the request body is larger than {self.settings.max_request_bytes} bytes")
            check_body(bytes(body), content_type, self.settings)
        except Refused as e:
            await _refusal(path, e)(scope, receive, send)
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later: http.disconnect, as the routes that watch for it expect

        await self.app(scope, replay, send)


class FrontHeaders:
    """In a worker of ``alt serve --workers``: the client address and scheme from the front's ``X-Forwarded-For``
    / ``-Proto`` — only on a request carrying the front's token (``x-alt-front``), never from anyone else."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if hmac.compare_digest(headers.get(b"x-alt-front", b""), self.token):
                addr = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[-1].strip()
                if addr:
                    scope = {**scope, "client": (addr, 0)}
                proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1")
                if proto in ("http", "https"):
                    scope = {**scope, "scheme": proto}
        await self.app(scope, receive, send)


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cross_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser sent this request from a page of another origin than the app's own (its Host)."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    if origin:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        return origin == "null" or urlsplit(origin).netloc.lower() != host
    return headers.get(b"sec-fetch-site", b"") in (b"cross-site", b"same-site")


class SameOrigin:
    """CSRF: a state-changing request from another origin gets 403 (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] not in SAFE_METHODS
                and not scope.get("path", "").startswith("/v1/") and cross_origin(dict(scope.get("headers") or []))):
            await JSONResponse({"detail": "refused: this request came from a page of another origin"},
                               status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
