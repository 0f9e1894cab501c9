"""The web server: one FastAPI app holding the Gradio UI (and, later, JSON APIs)."""

from __future__ import annotations

import gradio as gr
import uvicorn
from fastapi import FastAPI

from alt_engine.settings import Settings
from alt_engine.versions import served_version
from alt_engine.db import session_scope


def build_blocks(settings: Settings) -> gr.Blocks:
    with session_scope(settings.db) as s:
        served = served_version(s)
    with gr.Blocks(title="ALT Studio") as blocks:
        gr.Markdown("# ALT Studio")
        gr.Markdown(f"Database: `{settings.db}`  \nServed model: `{served.name if served else 'none'}` "
                    f"(`{served.path if served else ''}`)")
    return blocks


def create_app(settings: Settings) -> FastAPI:
    api = FastAPI(title="ALT Studio")

    @api.get("/healthz")
    def healthz():
        return {"ok": True}

    return gr.mount_gradio_app(api, build_blocks(settings), path="/")


def serve(settings: Settings) -> None:
    print(f"ALT Studio on http://{settings.host}:{settings.port}  (db {settings.db}, model {settings.model})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
