"""The web server: one FastAPI app with sign-in, the JSON annotation API, the OpenAI routes and the Gradio UI.

Routes:
  /login, /logout              sign-in page (HTML form) and sign-out
  /healthz                     liveness, no sign-in
  /api/login /api/logout /api/me
  /api/annotate/...            next, submit, replace, skip, flag, undo, progress (signed in)
  /api/admin/...               users, jobs, agreement (admins)
  /api/keys                    your own API keys for /v1 (signed in; app/keys.py)
  /v1/...                      OpenAI-compatible, API key instead of sign-in (app/openai_api/)
  /                            the Gradio app (Annotate, Playground, Dashboard, Admin tabs), sign-in required
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from alt_engine import annotation as ann
from alt_engine import users as users_svc
from alt_engine.agreement import agreement_report
from alt_engine.db import init_db
from alt_engine.settings import Settings
from alt_engine.textpolicy import NulError

from .admin import AdminTab, jobs_table
from .annotate import CSS, SHORTCUTS_JS, AnnotateTab
from .auth import Auth, add_auth_routes
from .console.export import EXPORT_PREFIX
from .dashboard import DashboardTab
from .guard import FrontHeaders, RequestGuard, SameOrigin
from .keys import KeysTab, add_key_routes
from .openai_api import add_openai_routes
from .playground import PlaygroundTab

# --------------------------------------------------------------------------- JSON API


class LeaseBody(BaseModel):
    lease_id: int


class SubmitBody(BaseModel):
    lease_id: int
    category: str | None = None
    text: str | None = None
    critique: str | None = None
    revision: str | None = None
    judgment: str | None = None
    accept_suggestion: int | None = None


class FlagBody(BaseModel):
    lease_id: int
    reason: str = ""


class NewUser(BaseModel):
    name: str
    password: str
    role: str = "annotator"


EMPTY_MESSAGE = "Nothing to annotate — an admin samples a round in Admin → Rounds."


def _refuse(e: ann.AnnotationError) -> HTTPException:
    return HTTPException(status_code=409 if isinstance(e, ann.Conflict) else 400, detail=str(e))


def add_annotation_api(api: FastAPI, settings: Settings, auth: Auth) -> None:
    """The JSON API: the same ``alt_engine.annotation`` calls as the Annotate tab's handlers."""
    db = settings.db

    @api.get("/api/annotate/next")
    def next_item(request: Request, task: str | None = None):
        user = auth.api_user(request)
        try:
            item = ann.next_item(db, user, task, settings.lease_seconds)
        except ann.AnnotationError as e:
            raise _refuse(e) from e
        return {"item": item.to_dict() if item else None, "message": "" if item else EMPTY_MESSAGE}

    def _submit(action, body: SubmitBody, request: Request) -> dict:
        user = auth.api_user(request)
        sub = ann.Submission(**body.model_dump(exclude={"lease_id"}))
        try:
            return dataclasses.asdict(action(db, user, body.lease_id, sub))
        except ann.AnnotationError as e:
            raise _refuse(e) from e

    @api.post("/api/annotate/submit")
    def submit(body: SubmitBody, request: Request):
        return _submit(ann.submit, body, request)

    @api.post("/api/annotate/replace")
    def replace(body: SubmitBody, request: Request):
        """After ``already_labelled``: this submission replaces the user's saved label on the lease's item."""
        return _submit(ann.replace_label, body, request)

    @api.post("/api/annotate/skip")
    def skip(body: LeaseBody, request: Request):
        user = auth.api_user(request)
        try:
            ann.skip(db, user, body.lease_id)
        except ann.AnnotationError as e:
            raise _refuse(e) from e
        return {"status": "skipped"}

    @api.post("/api/annotate/flag")
    def flag(body: FlagBody, request: Request):
        user = auth.api_user(request)
        try:
            return dataclasses.asdict(ann.flag(db, user, body.lease_id, body.reason))
        except ann.AnnotationError as e:
            raise _refuse(e) from e

    @api.post("/api/annotate/undo")
    def undo(request: Request):
        user = auth.api_user(request)
        try:
            return {"item": ann.undo_last(db, user, settings.lease_seconds).to_dict()}
        except ann.AnnotationError as e:
            raise _refuse(e) from e

    @api.get("/api/annotate/progress")
    def progress(task: str, request: Request):
        user = auth.api_user(request)
        try:
            return dataclasses.asdict(ann.progress(db, user, task))
        except ann.AnnotationError as e:
            raise _refuse(e) from e

    @api.get("/api/admin/users")
    def list_users(request: Request):
        auth.api_admin(request)
        return {"users": [dataclasses.asdict(u) for u in users_svc.list_users(db)]}

    @api.post("/api/admin/users", status_code=201)
    def create_user(body: NewUser, request: Request):
        auth.api_admin(request)
        try:
            return dataclasses.asdict(users_svc.add_user(db, body.name, body.password, body.role))
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e

    @api.get("/api/admin/jobs")
    def jobs(request: Request):
        auth.api_admin(request)
        return {"jobs": jobs_table(db).to_dict(orient="records")}

    @api.get("/api/admin/agreement")
    def agreement(task: str, request: Request):
        auth.api_admin(request)
        try:
            report = agreement_report(db, task)
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        return _json_safe(dataclasses.asdict(report))


def _json_safe(x):
    """NaN κ (undefined) becomes null in JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


# --------------------------------------------------------------------------- Gradio UI


def build_blocks(settings: Settings, auth: Auth, hub=None) -> gr.Blocks:
    from .console import build_console, header_markdown

    annotate = AnnotateTab(settings, auth)
    admin = AdminTab(settings, auth)
    keys = KeysTab(settings, auth)
    playground = PlaygroundTab(settings, auth)
    dashboard = DashboardTab(settings, auth)
    with gr.Blocks(title="ALT Studio", delete_cache=(3600, 3600)) as blocks:  # uploaded files go after an hour
        with gr.Row():
            gr.Markdown("## ALT Studio")
            header = gr.Markdown(elem_id="alt-whoami", latex_delimiters=[])
        clock = gr.Timer(2, active=False)  # the console's refresh: outside every tab, so it ticks on any tab
        with gr.Tabs() as main_tabs:
            with gr.Tab("Annotate", id="annotate"):
                annotate.build_ui()
            with gr.Tab("Playground", id="playground", elem_id="alt-playground-tab"):
                playground.build_ui()
            with gr.Tab("Dashboard", id="dashboard", visible=False, elem_id="alt-dashboard-tab") as dashboard_tab:
                dashboard.build_ui()
            with gr.Tab("Admin", id="admin", visible=False, elem_id="alt-admin-tab") as admin_tab:
                with gr.Tabs() as admin_tabs:  # the console (Tasks, Data, Rounds, Training, Jobs, Models, Export)
                    console = build_console(settings, auth, hub, header, admin_tabs, clock)
                    admin.build_ui()  # Users, Agreement
            with gr.Tab("API keys", id="keys", elem_id="alt-keys-tab") as keys_tab:
                keys.build_ui()
        keys_tab.select(keys._list, None, [keys.table], api_visibility="private")
        dashboard.wire_open(dashboard_tab)

        def page_load(request: gr.Request):
            from .console.start import first_run

            user = auth.require_user(request)
            opening = gr.Tabs(selected="admin") if user.is_admin and first_run(settings.db) else gr.update()
            return (header_markdown(settings.db, user), gr.update(visible=user.is_admin), *admin.page_load(user),
                    *playground.page_load(user), gr.update(visible=dashboard.allowed(user)),
                    *dashboard.page_load(user), opening)

        blocks.load(page_load, None, [header, admin_tab, *admin.load_outputs, *playground.load_outputs,
                                      dashboard_tab, *dashboard.load_outputs, main_tabs],
                    api_visibility="private")  # a new database: an admin lands on Admin → Start

        console_outputs = [c for tab in console for c in tab.load_outputs]

        def console_load(request: gr.Request):
            user = auth.require_user(request)
            if not user.is_admin:  # nothing of the console reaches an annotator's page
                return {c: gr.update() for c in console_outputs}
            return {k: v for tab in console for k, v in tab.page_load().items()}

        blocks.load(console_load, None, console_outputs, api_visibility="private")
        annotate.on_load(blocks)
    return blocks


def create_app(settings: Settings) -> FastAPI:
    """The whole server as one ASGI app (used by ``alt serve`` and by tests in-process)."""
    init_db(settings.db)
    api = FastAPI(title="ALT Studio", docs_url=None, redoc_url=None, openapi_url=None)
    auth = Auth(settings)

    @api.get("/healthz")
    def healthz():
        return {"ok": True}

    add_auth_routes(api, auth)
    add_annotation_api(api, settings, auth)
    add_key_routes(api, settings, auth)
    add_openai_routes(api, settings)
    blocks = build_blocks(settings, auth, getattr(api.state, "model_hub", None))
    blocks.queue(default_concurrency_limit=8)
    api.add_middleware(AdminOnlyPaths, auth=auth)
    api.add_middleware(SchemaForRole, auth=auth, hidden=admin_endpoints(blocks))
    api.add_middleware(RequestGuard, settings=settings)  # bounds and NUL before anything runs
    api.add_middleware(SameOrigin)  # CSRF: state-changing requests from another origin are refused
    api.add_exception_handler(NulError, _nul_refused)
    if settings.front_token:  # a worker of `alt serve --workers`: the front says who the client is
        api.add_middleware(FrontHeaders, token=settings.front_token)
    # no schema, no monitoring dashboard; uploads size-limited (and admins only: AdminOnlyPaths)
    api.state.blocks = blocks  # tests enumerate every event (tests/test_console_auth.py)
    return gr.mount_gradio_app(api, blocks, path="/", auth_dependency=auth.gradio_dependency, head=SHORTCUTS_JS,
                               css=CSS, footer_links=[], run_history=False, show_error=True, theme=gr.themes.Soft(),
                               enable_monitoring=False, max_file_size=MAX_UPLOAD, app_kwargs={"openapi_url": None})


async def _nul_refused(_request: Request, e: NulError) -> JSONResponse:
    """Text with a NUL that reached the database layer (``alt_engine.textpolicy``): the same 400 on both databases."""
    return JSONResponse({"detail": str(e)}, status_code=400)


MAX_UPLOAD = "10mb"
FILE_ROUTES = ("/gradio_api/file=", "/file=")  # Gradio's cache: an admin's export is served to admins only
ADMIN_ONLY = ("/gradio_api/upload", "/gradio_api/openapi.json", "/gradio_api/monitoring", "/monitoring",
              "/gradio_api/mcp")


class AdminOnlyPaths:
    """Gradio routes the app does not need for annotators: uploads (no annotator handler takes a file), the API
    schema and monitoring. Refused (401 / 403) unless an admin is signed in; a plain ASGI middleware."""

    def __init__(self, app, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(ADMIN_ONLY) or (path.startswith(FILE_ROUTES) and EXPORT_PREFIX in path):
            user = self.auth.user(Request(scope))
            if user is None or not user.is_admin:
                status = 401 if user is None else 403
                await JSONResponse({"detail": "admins only"}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


ADMIN_MODULES = ("app.console", "app.admin")  # Gradio handlers here are for admins (each checks the role)


def admin_endpoints(blocks: gr.Blocks) -> tuple[set[str], set[str]]:
    """(named endpoints "/name", unnamed fn indices) of the admin handlers, by the module that defines them."""
    names, ids = set(), set()
    for i, f in blocks.fns.items():
        fn = getattr(f.fn, "__wrapped__", f.fn)
        if (getattr(fn, "__module__", "") or "").startswith(ADMIN_MODULES):
            ids.add(str(i))
            if f.api_name:
                names.add(f"/{f.api_name}")
    return names, ids


class SchemaForRole:
    """``/gradio_api/info`` (the API schema the page's client needs) lists only the endpoints the signed-in user
    may call: an annotator's copy has no admin endpoint (the page works without them; each handler still checks
    the role). Admins get Gradio's schema unchanged; anyone not signed in gets Gradio's 401."""

    def __init__(self, app, auth: Auth, hidden: tuple[set[str], set[str]]):
        self.app, self.auth, (self.names, self.ids) = app, auth, hidden

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != "/gradio_api/info":
            await self.app(scope, receive, send)
            return
        user = self.auth.user(Request(scope))
        if user is None or user.is_admin:
            await self.app(scope, receive, send)
            return
        start, chunks = {}, []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            await JSONResponse({"detail": "no API schema"}, status_code=start.get("status", 500))(scope, receive, send)
            return
        info = json.loads(b"".join(chunks))
        info["named_endpoints"] = {k: v for k, v in info.get("named_endpoints", {}).items() if k not in self.names}
        info["unnamed_endpoints"] = {k: v for k, v in info.get("unnamed_endpoints", {}).items()
                                     if str(k) not in self.ids}
        await JSONResponse(info)(scope, receive, send)


def serve(settings: Settings) -> None:
    print(f"ALT Studio on http://{settings.host}:{settings.port}  (db {settings.db}, model {settings.model})",
          flush=True)
    box = first_admin(settings)
    if settings.workers > 1:  # N processes behind one port, each session kept on one (app/proxy.py)
        from .proxy import serve_workers

        if box:
            print(box, flush=True)
        serve_workers(settings, settings.host, settings.port, settings.workers)
        return
    from .proxy import forwarded_options

    app = create_app(settings)  # imports and the model load: their output comes before the box
    if box:
        print(box, flush=True)  # the last thing printed before the server listens
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", **forwarded_options(settings))


def credentials_path(settings: Settings) -> Path:
    """Where the first admin's password is written: beside a SQLite database, else in the cache directory."""
    from alt_engine.db import is_url

    if is_url(settings.db):
        return Path(settings.cache_dir) / "admin-credentials.txt"
    return Path(settings.db).resolve().with_name(Path(settings.db).name + ".admin-credentials.txt")


def first_admin(settings: Settings) -> str | None:
    """On a database with no users, make the admin (password: ``ALT_ADMIN_PASSWORD`` or random), write the
    credentials to a file only its owner can read (0600) and return the box to print; None when users exist."""
    if users_svc.list_users(settings.db):
        return None
    password = os.environ.get("ALT_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
    users_svc.add_user(settings.db, "admin", password, "admin")
    path = credentials_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"ALT Studio first admin\nuser: admin\npassword: {password}\nurl: http://{settings.host}:"
                f"{settings.port}\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    lines = ["ALT Studio: the first admin", "", "  user:      admin", f"  password:  {password}", "",
             f"  sign in at http://{settings.host}:{settings.port}", f"  saved in   {path} (readable by you only)",
             "  change it: alt users passwd admin; add people: alt users add NAME"]
    width = max(len(line) for line in lines) + 2
    return "\n".join(["", "#" * (width + 2), *(f"#{line.ljust(width)}#" for line in lines), "#" * (width + 2), ""])


def app_from_env() -> FastAPI:
    """The app from ``ALT_*`` settings: for ``alt serve --workers N`` and any ASGI server
    (``uvicorn --factory app.server:app_from_env --workers N``, gunicorn with uvicorn workers).

    Every process shares the database and nothing else: sign-in throttling, the cookie key (when
    ``ALT_SECRET_KEY`` is unset), leases and jobs live in the database; each process loads its own
    copy of the served model. The JSON API and ``/v1`` work across processes as they are; Gradio's
    browser UI keeps per-process queue state: ``alt serve --workers N`` puts a sticky front before the
    processes (``app/proxy.py``); with another ASGI server put a proxy with sticky sessions in front.
    """
    return create_app(Settings.from_env())
