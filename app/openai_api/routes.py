"""Mounting ``/v1``: the model server the routes answer from, ``GET /v1/models`` and the chat and completions
routes behind one ``Gate``."""

from __future__ import annotations

import threading

from fastapi import FastAPI, Request

from alt_engine.serving import ModelServer
from alt_engine.settings import Settings

from .chat import complete_chat
from .completions import add_completions_route
from .gate import Gate, json_body, openai_error, too_large


def add_openai_routes(api: FastAPI, settings: Settings, server: ModelServer | None = None) -> ModelServer:
    """Mount the routes on ``api`` (before any catch-all mount such as Gradio's at "/").

    Without ``server`` a ``ModelServer`` for the served version is created; it starts
    loading the model in the background and follows promotions in the database. The
    server is returned and kept on ``api.state.model_server`` so the rest of the app
    (the playground) shares the same model copy.
    """
    if server is None:
        from alt_engine.serving import hub_for

        hub = hub_for(settings)  # the process-wide model server (served + previous + others on request)
        server = hub.served
        threading.Thread(target=server.preload, name="model-preload", daemon=True).start()
        hub.follow()  # a promoted version is served within seconds
        api.state.model_hub = hub
    if server.max_prompt_tokens is None:
        server.max_prompt_tokens = settings.serve_max_prompt_tokens
    api.state.model_server = server
    gate = Gate(settings)

    @api.get("/v1/models")
    def list_models(request: Request):
        if (denied := gate.unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": server.version_name, "object": "model", "created": 0,
                                            "owned_by": "alt-studio"}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        async def handle():
            try:
                body = await json_body(request)
            except OverflowError:
                return too_large()
            except ValueError:
                return openai_error(400, "the request body is not valid JSON")
            return await complete_chat(server, settings, body, request, getattr(api.state, "model_hub", None))

        return await gate.gated(request, handle)

    add_completions_route(api, server, gate, settings)
    return server
