"""Every admin-only handler and route is refused to an annotator and to an anonymous client.

The test enumerates the app's API — every Gradio event (``blocks.fns``, public and private alike, called by
``fn_index`` through the queue as any client can) and every FastAPI route — so a new endpoint without a role
check, or one nobody classified, fails it.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

# Gradio handlers by module: admin modules must refuse everyone but admins; the rest serve signed-in users
ADMIN_MODULES = ("app.console", "app.admin")
USER_MODULES = ("app.annotate", "app.keys", "app.server", "app.playground", "app.dashboard")
# FastAPI routes by path
ADMIN_ROUTES = ("/api/admin/",)
USER_ROUTES = ("/api/annotate/", "/api/keys", "/api/me", "/api/logout")
PUBLIC_ROUTES = ("/login", "/logout", "/healthz", "/api/login", "/v1/")  # /v1: API keys, tested in test_openai_api
REFUSED = "This needs an admin account."
SELECT = {"index": [0, 0], "value": "1", "row_value": ["1"], "col_value": ["1"], "selected": True}  # select events


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from alt_engine.db import init_db
    from alt_engine.settings import Settings
    from alt_engine.tiny import save_tiny
    from alt_engine.users import add_user
    from app.server import create_app

    work = tmp_path_factory.mktemp("console-auth")
    db = str(work / "c.db")
    init_db(db)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "bob", "bobpass12")
    return create_app(Settings(db=db, device="cpu", model=save_tiny(work / "m"), secret_key="s" * 32))


class Caller:
    """One user's requests, all through the module's one entered TestClient: a client per user would start the
    app's lifespan (and Gradio's queue loop) once per client, each on its own event loop, with the queue's state
    shared between them — the full suite once hung on that. A user is the session cookie sent with each request."""

    def __init__(self, c: TestClient, cookie: str | None):
        self.c, self.headers = c, {"cookie": cookie} if cookie else {}

    def request(self, method: str, url: str, **kw):
        self.c.cookies.clear()  # nothing a response set travels with another user's request
        return self.c.request(method, url, headers=self.headers, **kw)

    def post(self, url: str, **kw):
        return self.request("POST", url, **kw)

    def get(self, url: str, **kw):
        return self.request("GET", url, **kw)

    def stream(self, method: str, url: str, **kw):
        self.c.cookies.clear()
        return self.c.stream(method, url, headers=self.headers, **kw)


@pytest.fixture(scope="module")
def entered(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def client(c: TestClient, user: str | None) -> Caller:
    if not user:
        return Caller(c, None)
    password = {"admin": "adminpass1", "bob": "bobpass12"}[user]
    r = c.post("/api/login", json={"username": user, "password": password})
    assert r.status_code == 200
    c.cookies.clear()  # the cookie travels only with this user's requests
    return Caller(c, "; ".join(f"{k}={v}" for k, v in r.cookies.items()))


def call(c: Caller, fn_index: int, n_inputs: int) -> tuple[int, dict | None]:
    """Call one Gradio event the way any client can (queue join by fn_index); (HTTP status, completion)."""
    session = uuid.uuid4().hex
    r = c.post("/gradio_api/queue/join", json={"data": [None] * n_inputs, "fn_index": fn_index,
                                                 "session_hash": session, "trigger_id": None,
                                                 "event_data": SELECT})
    if r.status_code != 200:
        return r.status_code, None
    with c.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return 200, msg
    return 200, None


def module_of(fn) -> str:
    return getattr(getattr(fn, "__wrapped__", fn), "__module__", "") or ""


def test_every_gradio_event_is_classified_and_admin_ones_are_refused(app, entered):
    fns = app.state.blocks.fns
    admin_fns = {i: f for i, f in fns.items() if module_of(f.fn).startswith(ADMIN_MODULES)}
    unclassified = [(f.api_name, module_of(f.fn)) for f in fns.values()
                    if not module_of(f.fn).startswith(ADMIN_MODULES + USER_MODULES)]
    assert not unclassified, f"classify these events (admin or user) and check the role: {unclassified}"
    assert len(admin_fns) >= 25  # the console's tabs and the admin tab are all here
    anon, bob, admin = client(entered, None), client(entered, "bob"), client(entered, "admin")
    for i, f in admin_fns.items():
        print(f.api_name, flush=True)
        status, _ = call(anon, i, len(f.inputs))
        assert status == 401, (f.api_name, status)
        status, done = call(bob, i, len(f.inputs))
        assert status == 200 and done is not None and done["success"] is False, (f.api_name, done)
        assert done["output"].get("error") == REFUSED, (f.api_name, done)
        _, done = call(admin, i, len(f.inputs))  # an admin gets past the check (maybe to an input error)
        assert done is None or (done["output"] or {}).get("error") != REFUSED, f.api_name


def test_console_data_is_not_sent_to_annotators(app, entered):
    """The page's load events fill the console for admins only."""
    fns = app.state.blocks.fns
    bob = client(entered, "bob")
    (index,) = [i for i, f in fns.items() if f.api_name == "console_load"]
    _, done = call(bob, index, 0)
    assert done["success"] is True, done
    def empty(v) -> bool:  # no value: None, {}, or an update with nothing in it (some components nest "props")
        return v is None or v == {} or (isinstance(v, dict) and v.get("__type__") == "update"
                                        and all(k == "__type__" or (k == "props" and empty(x)) for k, x in v.items()))

    assert [v for v in done["output"]["data"] if not empty(v)] == []


def test_every_route_is_classified_and_admin_routes_are_refused(app, entered):
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    unclassified = [r.path for r in routes if not r.path.startswith(ADMIN_ROUTES + USER_ROUTES + PUBLIC_ROUTES)]
    assert not unclassified, f"classify these routes and check the role: {unclassified}"
    admin_routes = [r for r in routes if r.path.startswith(ADMIN_ROUTES)]
    assert admin_routes
    anon, bob = client(entered, None), client(entered, "bob")
    for r in admin_routes:
        path, params, body = valid_request(r)  # past FastAPI's validation, so the role check is what answers
        for method in r.methods - {"HEAD", "OPTIONS"}:
            assert anon.request(method, path, params=params, json=body).status_code == 401, (method, path)
            assert bob.request(method, path, params=params, json=body).status_code == 403, (method, path)


def valid_request(route: APIRoute) -> tuple[str, dict, dict | None]:
    """A path, query and JSON body that pass the route's validation (dummy values of the right types)."""
    def dummy(annotation):
        return 1 if annotation in (int, int | None, float) else "x"

    path = re.sub(r"\{[^}]+\}", "1", route.path)
    params = {p.name: dummy(p.field_info.annotation) for p in route.dependant.query_params}
    body = None
    if route.body_field is not None:
        model = route.body_field.field_info.annotation
        body = {name: dummy(f.annotation) for name, f in model.model_fields.items()}
    return path, params, body
