"""Sign-in for the web app: one signed session cookie for the Gradio page, Gradio's HTTP API and /api/*.

The cookie holds ``user id : name : expiry : session generation`` signed with
HMAC-SHA256 under ``Settings.secret_key`` (when empty: a random key stored once in
the database, so every app process, ``alt serve --workers N`` or several machines,
signs alike). Every request re-reads the user from the database,
so a deactivated user or a changed role takes effect at once, and a cookie whose
generation is not the user's current one (after sign-out, a password change or
deactivation: ``users.revoke_sessions``) is refused. A cookie that does not
parse (tampered, not ASCII) is ignored, never an error. Sign-in attempts are
throttled per client address and per name before the password is checked
(``users.begin_sign_in``). Gradio learns the
user through ``mount_gradio_app(auth_dependency=...)``: it refuses its
config, queue and API routes (401) when that returns None, and hands the name
to handlers as ``gr.Request.username``; admin handlers still check the role
themselves with ``require_admin`` because Gradio exposes every handler as an
HTTP endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import time

import gradio as gr
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from alt_engine.settings import Settings
from alt_engine.users import (
    UserInfo,
    authenticate,
    begin_sign_in,
    end_sign_in,
    get_user,
    revoke_sessions,
    shared_secret,
)

COOKIE = "alt_session"
SESSION_SECONDS = 12 * 3600


class Auth:
    """Issues and checks session cookies; looks the user up on every request."""

    def __init__(self, settings: Settings):
        self.db = settings.db
        self.key = (settings.secret_key or shared_secret(settings.db, "session_key")).encode()

    async def sign_in(self, name: str, password: str, addr: str = "unknown") -> tuple[UserInfo | None, str]:
        """(user, "") or (None, why); attempts are admitted per address and per name before the hash is checked
        and counted as failed once it fails (``users.begin_sign_in``)."""
        wait = await run_in_threadpool(begin_sign_in, self.db, name, addr)
        if wait:
            return None, f"Too many failed sign-ins: try again in {int(wait) + 1} s."
        try:
            user = await run_in_threadpool(authenticate, self.db, name, password)  # scrypt: keep the loop free
        except BaseException:
            await run_in_threadpool(end_sign_in, self.db, name, addr, None)  # ended, neither failed nor passed
            raise
        await run_in_threadpool(end_sign_in, self.db, name, addr, user is not None)
        if user is None:
            return None, "Wrong user name or password."
        return user, ""

    def sign_out(self, request: Request) -> None:
        """Revoke every session of the request's user (server-side: the old cookie stops working everywhere)."""
        user = self.user(request)
        if user is not None:
            revoke_sessions(self.db, user.id)

    # ---- tokens
    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def issue(self, user: UserInfo) -> str:
        payload = f"{user.id}:{user.name}:{int(time.time()) + SESSION_SECONDS}:{user.session_gen}".encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def read(self, token: str | None) -> tuple[str, int] | None:
        """(user name, session generation) of a valid, unexpired token, else None — never an exception."""
        try:
            body, sig = (token or "").rsplit(".", 1)
            payload = base64.urlsafe_b64decode(body.encode("ascii") + b"=" * (-len(body) % 4))
            _uid, name, expiry, gen = payload.decode().split(":")
            if not hmac.compare_digest(sig.encode("ascii"), self._sign(payload).encode()) or int(expiry) < time.time():
                return None
            return name, int(gen)
        except (ValueError, UnicodeError, TypeError):  # no '.', not base64, not ASCII, wrong fields
            return None

    # ---- requests
    def user(self, request: Request) -> UserInfo | None:
        """The signed-in, active user of a FastAPI request (a revoked session counts as none)."""
        session = self.read(request.cookies.get(COOKIE))
        user = get_user(self.db, session[0]) if session else None
        if user is None or not user.active or user.session_gen != session[1]:
            return None
        return user

    def why_signed_out(self, request: Request) -> str:
        """For the sign-in page the page's script sends a signed-out user to (``/login?why=signed-out``): why."""
        session = self.read(request.cookies.get(COOKIE))
        user = get_user(self.db, session[0]) if session else None
        if user is not None and not user.active:
            return "Your account was deactivated; ask an admin to reactivate it."
        if request.query_params.get("why") == "signed-out":
            return "You were signed out (your session ended or your password changed). Please sign in again."
        return ""

    def gradio_dependency(self, request: Request) -> str | None:
        """For ``mount_gradio_app(auth_dependency=...)``: the user name, or None to refuse."""
        user = self.user(request)
        return user.name if user else None

    def require_user(self, request: gr.Request | None) -> UserInfo:
        """The user behind a Gradio event; raises gr.Error when there is none (call inside every handler)."""
        name = getattr(request, "username", None) if request is not None else None
        user = get_user(self.db, name) if name else None
        if user is None or not user.active:
            raise gr.Error("Please sign in again.", title="Not signed in")
        return user

    def require_admin(self, request: gr.Request | None) -> UserInfo:
        """Server-side role check for admin handlers."""
        user = self.require_user(request)
        if not user.is_admin:
            raise gr.Error("This needs an admin account.", title="Forbidden")
        return user

    def api_user(self, request: Request) -> UserInfo:
        user = self.user(request)
        if user is None:
            raise HTTPException(status_code=401, detail="not signed in: POST /api/login first")
        return user

    def api_admin(self, request: Request) -> UserInfo:
        user = self.api_user(request)
        if not user.is_admin:
            raise HTTPException(status_code=403, detail="admins only")
        return user

    def set_cookie(self, response, user: UserInfo, request: Request) -> None:
        response.set_cookie(COOKIE, self.issue(user), max_age=SESSION_SECONDS, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ALT Studio · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;background:#f4f5f7;display:flex;align-items:center;justify-content:center;
height:100vh;margin:0}}
form{{background:#fff;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 2px 12px #0002;width:320px}}
h1{{font-size:1.4rem;margin:0 0 .3rem}} p.sub{{color:#666;margin:0 0 1.2rem;font-size:.9rem}}
label{{display:block;font-size:.85rem;margin:.8rem 0 .3rem;color:#333}}
input{{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #ccc;border-radius:6px;font-size:1rem}}
button{{margin-top:1.3rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#ea580c;color:#fff;
font-size:1rem;cursor:pointer}} .err{{color:#b91c1c;font-size:.9rem;margin-top:.8rem}}
</style></head><body>
<form method="post" action="/login">
<h1>ALT Studio</h1><p class="sub">Sign in to annotate.</p>
<label for="username">User name</label><input id="username" name="username" autocomplete="username" autofocus
 value="{name}">
<label for="password">Password</label><input id="password" name="password" type="password"
 autocomplete="current-password">
<button id="login-button" type="submit">Sign in</button>
{error}
</form></body></html>"""


LOGOUT_PAGE = (_PAGE.split("<form")[0].replace("· sign in", "· sign out") + """<form method="post" action="/logout">
<h1>ALT Studio</h1><p class="sub">Sign out of ALT Studio on every device?</p>
<button id="logout-button" type="submit">Sign out</button>
<p class="sub" style="margin-top:1rem"><a href="/">Back to the app</a></p>
</form></body></html>""").replace("{{", "{").replace("}}", "}")


def login_page(name: str = "", error: str = "") -> str:
    err = f'<p class="err" id="login-error">{html.escape(error)}</p>' if error else ""
    return _PAGE.format(name=html.escape(name, quote=True), error=err)


async def _credentials(request: Request) -> tuple[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except ValueError as e:
            raise HTTPException(status_code=400, detail="body is not valid JSON") from e
    else:
        data = await request.form()
    if not isinstance(data, dict) and not hasattr(data, "get"):
        raise HTTPException(status_code=400, detail="send username and password")
    return str(data.get("username") or ""), str(data.get("password") or "")


def _client(request: Request) -> str:
    """The client address the throttle counts by (the peer; behind a proxy, uvicorn's --proxy-headers sets it)."""
    return request.client.host if request.client else "unknown"


def add_auth_routes(api: FastAPI, auth: Auth) -> None:
    """/login (page and form post), /logout, /api/login, /api/logout, /api/me; and the redirect of / to /login."""

    @api.get("/login", include_in_schema=False)
    def login_form(request: Request):
        if auth.user(request) is not None:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(login_page(error=auth.why_signed_out(request)))

    @api.post("/login", include_in_schema=False)
    async def login_submit(request: Request):
        name, password = await _credentials(request)
        user, why = await auth.sign_in(name, password, _client(request))
        if user is None:
            return HTMLResponse(login_page(name, why), status_code=429 if "Too many" in why else 401)
        response = RedirectResponse("/", status_code=303)
        auth.set_cookie(response, user, request)
        return response

    @api.get("/logout", include_in_schema=False)
    def logout_page(request: Request):
        """A link (the header's "Sign out") lands here; signing out itself is a POST, so a navigation from another
        site cannot sign anyone out."""
        if auth.user(request) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(LOGOUT_PAGE)

    @api.post("/logout", include_in_schema=False)
    def logout(request: Request):
        auth.sign_out(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @api.post("/api/login")
    async def api_login(request: Request):
        name, password = await _credentials(request)
        user, why = await auth.sign_in(name, password, _client(request))
        if user is None:
            return JSONResponse({"detail": why}, status_code=429 if "Too many" in why else 401)
        response = JSONResponse({"user": user.name, "role": user.role})
        auth.set_cookie(response, user, request)
        return response

    @api.post("/api/logout")
    def api_logout(request: Request):
        auth.sign_out(request)
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @api.get("/api/me")
    def me(request: Request):
        user = auth.api_user(request)
        return {"user": user.name, "role": user.role}

    api.add_middleware(LoginRedirect, auth=auth)


class LoginRedirect:
    """Send a browser that is not signed in from the app page (GET /) to the sign-in page.

    A plain ASGI middleware: it looks at nothing but GET / (Starlette's BaseHTTPMiddleware would
    add a task hop to every request, the JSON API's included).
    """

    def __init__(self, app, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/":
            if self.auth.user(Request(scope)) is None:
                await RedirectResponse("/login", status_code=303)(scope, receive, send)
                return
        await self.app(scope, receive, send)
