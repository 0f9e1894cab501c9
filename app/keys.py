"""Users' own API keys for the /v1 routes: a tab in the app and ``/api/keys`` (signed in; each user sees only theirs).

A new key is shown once, right after it is made; only its hash is kept (``alt_engine.apikeys``).
"""

from __future__ import annotations

import dataclasses

import gradio as gr
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from alt_engine import apikeys
from alt_engine.settings import Settings

from .auth import Auth

COLUMNS = ["id", "name", "prefix", "created_at", "last_used_at", "revoked"]


class NewKey(BaseModel):
    name: str = ""


def keys_table(db: str, user) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(k) for k in apikeys.list_keys(db, user)], columns=COLUMNS)


def add_key_routes(api: FastAPI, settings: Settings, auth: Auth) -> None:
    """GET /api/keys (yours), POST /api/keys {name} (the new key, shown once), DELETE /api/keys/{id}."""

    @api.get("/api/keys")
    def list_keys(request: Request):
        user = auth.api_user(request)
        return {"keys": [dataclasses.asdict(k) for k in apikeys.list_keys(settings.db, user)]}

    @api.post("/api/keys", status_code=201)
    def create_key(body: NewKey, request: Request):
        user = auth.api_user(request)
        try:
            return {"key": apikeys.create_key(settings.db, user, body.name),
                    "note": "shown once: store it now; send it as 'Authorization: Bearer <key>' to /v1"}
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e

    @api.delete("/api/keys/{key_id}")
    def revoke_key(key_id: int, request: Request):
        user = auth.api_user(request)
        try:
            apikeys.revoke_key(settings.db, user, key_id)
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        return {"revoked": key_id}


class KeysTab:
    """Make, list and revoke your own keys (every handler resolves the user server-side)."""

    def __init__(self, settings: Settings, auth: Auth):
        self.db, self.auth = settings.db, auth

    def _list(self, request: gr.Request):
        return keys_table(self.db, self.auth.require_user(request))

    def _create(self, name, request: gr.Request):
        user = self.auth.require_user(request)
        try:
            key = apikeys.create_key(self.db, user, name or "")
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return keys_table(self.db, user), gr.update(value=key, visible=True), ""

    def _revoke(self, key_id, request: gr.Request):
        user = self.auth.require_user(request)
        try:
            apikeys.revoke_key(self.db, user, int(key_id or 0))
        except (ValueError, OverflowError) as e:
            raise gr.Error(str(e)) from e
        return keys_table(self.db, user)

    def build_ui(self) -> None:
        gr.Markdown("Keys for the OpenAI-compatible endpoint `/v1` (e.g. `ALT_LLM_API_KEY` for the judge). "
                    "A new key is shown **once**.")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="keys-table")
        with gr.Row():
            name = gr.Textbox(label="Name (what the key is for)", scale=3, elem_id="keys-name")
            create = gr.Button("Make a key", variant="primary", elem_id="keys-create")
        new_key = gr.Textbox(label="Your new key (copy it now)", interactive=False, visible=False,
                             elem_id="keys-new", buttons=["copy"])
        with gr.Row():
            key_id = gr.Number(label="Key id", precision=0, scale=1)
            revoke = gr.Button("Revoke", variant="stop", elem_id="keys-revoke")
            refresh = gr.Button("Refresh", size="sm")
        create.click(self._create, [name], [table, new_key, name], api_visibility="private")
        revoke.click(self._revoke, [key_id], [table], api_visibility="private")
        refresh.click(self._list, None, [table], api_visibility="private")
        self.table = table
