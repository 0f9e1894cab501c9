"""OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` for the served model.

Anything that speaks the OpenAI API — the studio's own LLM judge included —
can use the served model: ``ALT_LLM_BASE_URL=http://127.0.0.1:7860/v1``.

Auth: these routes do not use the app's login; a request must carry
``Authorization: Bearer <key>`` with the key equal to ``Settings.llm_api_key``
(env ``ALT_LLM_API_KEY``, default ``sk-local``; an empty key disables the check).

Model names: the served version's name (``GET /v1/models``) or its path; any
other name is a 404, so provenance (``llm:<model>``) names what really answered. Point the judge at it with
``ALT_LLM_MODEL=<version name>``.

Body: ``model``, ``messages`` (roles system/user/assistant, content a string
or text parts), ``temperature`` (default 1), ``top_p`` (default 1),
``max_tokens`` / ``max_completion_tokens`` (default 128, at most 2048),
``seed``, ``n`` = 1; no streaming. Extra field ``feedback``: a feedback text
to condition the generation on (steering), exactly as in training.
Bad requests get 400 with an OpenAI-style ``{"error": {...}}`` body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import threading
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from alt_engine.sampling import SamplingParams
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings

MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 128


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    seed: int | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False
    feedback: str | None = None  # ALT steering: the feedback to condition on


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ()))
    return f"{param}: {err.get('msg')}" if param else str(err.get("msg")), param or None


def add_openai_routes(api: FastAPI, settings: Settings, server: ModelServer | None = None) -> ModelServer:
    """Mount the routes on ``api`` (before any catch-all mount such as Gradio's at "/").

    Without ``server`` a ``ModelServer`` for the served version is created; it starts
    loading the model in the background and follows promotions in the database. The
    server is returned and kept on ``api.state.model_server`` so the rest of the app
    (the playground) shares the same model copy.
    """
    if server is None:
        server = ModelServer.from_settings(settings)
        threading.Thread(target=server.preload, name="model-preload", daemon=True).start()
        server.follow(settings.db)  # a promoted version is served within seconds
    api.state.model_server = server

    def unauthorized(request: Request) -> JSONResponse | None:
        if not settings.llm_api_key:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.llm_api_key.encode()):
            return openai_error(401, "Invalid API key: send 'Authorization: Bearer <ALT_LLM_API_KEY>'.",
                                code="invalid_api_key")
        return None

    @api.get("/v1/models")
    def list_models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": server.version_name, "object": "model", "created": 0,
                                            "owned_by": "alt-studio"}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return openai_error(400, "the request body is not valid JSON")
        return await _complete(server, settings, body, request)

    add_completions_route(api, server, unauthorized)
    return server


async def _complete(server: ModelServer, settings: Settings, body: Any, request: Request) -> JSONResponse | dict:
    if not isinstance(body, dict):
        return openai_error(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        message, param = _validation_message(e)
        return openai_error(400, message, param=param)
    if req.model not in server.model_ids:
        return openai_error(404, f"model {req.model!r} is not served here; available: {server.version_name} "
                                 "(set ALT_LLM_MODEL to it)", param="model", code="model_not_found")
    messages = [m.as_dict() for m in req.messages]
    try:
        # loading the model (first request only) blocks: do it off the event loop
        future = await run_in_threadpool(
            server.submit, messages, req.feedback or None,
            req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS, req.temperature, req.top_p,
            req.seed if req.seed is not None else random.randrange(2**31))
        waiting = asyncio.wrap_future(future)
        while True:  # concurrent requests meet in the server's batches; a client that left is dropped from the queue
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            if done:
                break
            if await request.is_disconnected():
                future.cancel()
                return openai_error(499, "client closed the request", type_="client_closed")
        text, usage = waiting.result()
    except ValueError as e:
        return openai_error(400, str(e))
    except Exception as e:  # the model failed to load or generate: say so in the API's own format
        return openai_error(503, f"the served model failed: {type(e).__name__}: {e}", type_="server_error")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": server.version_name, "system_fingerprint": server.version_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": usage.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens},
    }


# --------------------------------------------------------------------------- /v1/completions


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` as vLLM takes it: ``prompt`` is text, token ids, or a list of either.

    The prompt is used as given (no chat template, no conditioning: the caller — the studio's ``openai``
    sampling backend — built it with ``conditioning.build_input``). ``n`` samples per prompt, drawn with
    ``seed`` (reproducible); ``finish_reason`` is ``length`` when a sample stopped at ``max_tokens``.
    ``return_token_ids`` (vLLM's extra field) adds each choice's sampled ``token_ids``.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # the OpenAI default
    seed: int | None = None
    stream: Literal[False] = False
    echo: Literal[False] = False
    return_token_ids: bool = False

    def prompts(self) -> list[list[int] | str]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


def add_completions_route(api: FastAPI, server: ModelServer, unauthorized) -> None:
    """Mount ``POST /v1/completions`` (same key check as the chat route)."""

    @api.post("/v1/completions")
    async def completions(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"null")
            req = CompletionRequest.model_validate(body)
        except ValueError as e:  # bad JSON or a ValidationError (a ValueError too)
            message, param = _validation_message(e) if isinstance(e, ValidationError) else (
                "the request body is not valid JSON", None)
            return openai_error(400, message, param=param)
        if req.model not in server.model_ids:
            return openai_error(404, f"model {req.model!r} is not served here; available: {server.version_name}",
                                param="model", code="model_not_found")
        prompts = req.prompts()
        if not prompts:
            return openai_error(400, "prompt: empty", param="prompt")
        params = SamplingParams(n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_tokens,
                                seed=req.seed if req.seed is not None else random.randrange(2**31),
                                batch_size=min(16, req.n * len(prompts)))
        try:
            inputs, samples = await run_in_threadpool(server.complete, prompts, params)
        except ValueError as e:
            return openai_error(400, str(e), param="prompt")
        except Exception as e:
            return openai_error(503, f"the served model failed: {type(e).__name__}: {e}", type_="server_error")
        choices = []
        for i, per_prompt in enumerate(samples):
            for j, s in enumerate(per_prompt):
                choice = {"index": i * req.n + j, "text": s.text, "logprobs": None,
                          "finish_reason": "length" if s.truncated else "stop"}
                if req.return_token_ids:
                    choice["token_ids"] = s.token_ids
                choices.append(choice)
        completion_tokens = sum(len(s.token_ids) for per in samples for s in per)
        prompt_tokens = sum(len(x) for x in inputs)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": server.version_name, "system_fingerprint": server.version_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
