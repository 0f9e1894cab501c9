"""OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` for the served model.

Anything that speaks the OpenAI API — the studio's own LLM judge included —
can use the served model: ``ALT_LLM_BASE_URL=http://127.0.0.1:7860/v1``.

Auth: these routes do not use the app's login; a request must carry
``Authorization: Bearer <key>`` with a key a signed-in user made in the app (API
keys tab, ``alt_engine.apikeys``) or the key the admin set as ``ALT_SERVE_API_KEY``.
There is no default key: without one of these every request is refused (401).

Limits (settings ``serve_*``), each refused with a clear 4xx before the model is touched:
a body over 2 MiB (413); a chat longer than 8 characters per allowed token or a prompt
over ``serve_max_prompt_tokens`` tokens (400, code ``context_length_exceeded``);
``max_tokens`` over ``serve_max_tokens`` (400). Fairness: one user (all their keys; or the
admin key) may have at most ``serve_max_pending`` requests waiting or running — a streamed
one until its last event is sent or its client leaves (429 beyond); the model server batches
requests in arrival order and ``serve_max_pending`` is at most its batch size, so anyone else's
request runs in the next batch at the latest, and the token caps bound how long a batch runs.

Model names: the served version's name (``GET /v1/models``), its path, or any other version's name; an
unknown name is a 404, so provenance (``llm:<model>``) names what really answered. Point the judge at it with
``ALT_LLM_MODEL=<version name>``.

Body: ``model``, ``messages`` (roles system/user/assistant, content a string
or text parts), ``temperature`` (default 1), ``top_p`` (default 1),
``max_tokens`` / ``max_completion_tokens`` (default 128, at most ``serve_max_tokens``),
``seed``, ``n`` = 1, ``stream`` (server-sent ``chat.completion.chunk`` events as the tokens are generated,
then ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk). ``model`` may name any model
version (``alt models list``): one that is not served is loaded on demand (an LRU of loaded versions).
Extra field ``feedback``: a feedback text to condition the generation on (steering), built by
``conditioning.build_input`` with that version's own format, exactly as in training; e.g.
``client.chat.completions.create(model="v2-alt", messages=[...], stream=True, extra_body={"feedback": "Concise"})``.
Extra fields ``guidance`` (γ, 0-10) and ``negative_feedback`` (a feedback text; absent or null: the plain prompt):
feedback guidance at decoding, logits ``l(feedback) + γ·(l(feedback) − l(negative_feedback))`` (docs/guidance.md);
it needs ``feedback``. ``/v1/completions`` takes ``guidance`` with ``negative_prompt`` (each prompt under f⁻, as
token ids or text) and echoes ``guidance`` in its response, so a client knows the server guided.
Extra field ``revision_passes`` (0-5, not with ``stream``): a Critique-and-Revise version critiques and revises
its answer that many times (greedy); the answer is the last revision and ``revisions`` lists every pass
(``answer``, ``critique``, ``revision``). Bad requests get 400 with an OpenAI-style ``{"error": {...}}`` body.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from alt_engine.apikeys import user_for_key
from alt_engine.sampling import SamplingParams
from alt_engine.serving import ModelServer, PromptTooLong
from alt_engine.settings import Settings

MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 128
MAX_BODY_BYTES = 2 * 1024 * 1024
CHARS_PER_TOKEN = 8  # a chat longer than this many characters per allowed token is refused before tokenizing


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


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
    stream: bool = False  # server-sent events, as the OpenAI client expects
    stream_options: StreamOptions | None = None
    feedback: str | None = None  # ALT steering: the feedback to condition on
    revision_passes: int = Field(0, ge=0, le=5)  # Critique-and-Revise: revise the answer this many times
    guidance: float = Field(0.0, ge=0, le=10)  # feedback guidance γ (needs feedback); 0 = plain sampling
    negative_feedback: str | None = None  # f⁻ of guidance: a feedback text; null = the plain prompt


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ()))
    return f"{param}: {err.get('msg')}" if param else str(err.get("msg")), param or None


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
            return _too_large(), _nothing
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


def _too_large() -> JSONResponse:
    return openai_error(413, f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB",
                        code="request_too_large")


async def _json_body(request: Request) -> Any:
    """The parsed body; a ValueError for bad JSON, a too-large body is refused while it is read."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise OverflowError
    return json.loads(bytes(body) or b"null")


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
                body = await _json_body(request)
            except OverflowError:
                return _too_large()
            except ValueError:
                return openai_error(400, "the request body is not valid JSON")
            return await _complete(server, settings, body, request, getattr(api.state, "model_hub", None))

        return await gate.gated(request, handle)

    add_completions_route(api, server, gate, settings)
    return server


def _max_tokens_error(asked: int, settings: Settings, param: str) -> JSONResponse | None:
    if asked > settings.serve_max_tokens:
        return openai_error(400, f"{param}: {asked} is more than this server allows ({settings.serve_max_tokens})",
                            param=param)
    return None


async def _server_for(server: ModelServer, hub, name: str) -> ModelServer | None:
    """The server answering as ``name``: the served one, else any version by name (loaded on demand)."""
    if name in server.model_ids:
        return server
    if hub is None:
        return None
    try:
        return await run_in_threadpool(hub.for_version, name)
    except ValueError:
        return None


async def _complete(server: ModelServer, settings: Settings, body: Any, request: Request,
                    hub=None) -> JSONResponse | dict:
    if not isinstance(body, dict):
        return openai_error(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        message, param = _validation_message(e)
        return openai_error(400, message, param=param)
    served = server
    server = await _server_for(served, hub, req.model)
    if server is None:
        return openai_error(404, f"model {req.model!r} is not a model version here; served: {served.version_name} "
                                 "(any version name from `alt models list` works)", param="model",
                            code="model_not_found")
    max_new = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, settings.serve_max_tokens)
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if (too_many := _max_tokens_error(max_new, settings, param)) is not None:
        return too_many
    messages = [m.as_dict() for m in req.messages]
    chars = sum(len(m["content"]) for m in messages) + len(req.feedback or "") + len(req.negative_feedback or "")
    if chars > CHARS_PER_TOKEN * settings.serve_max_prompt_tokens:
        return openai_error(400, f"the prompt has {chars} characters; this server takes at most "
                                 f"{settings.serve_max_prompt_tokens} tokens", param="messages",
                            code="context_length_exceeded")
    seed = req.seed if req.seed is not None else random.randrange(2**31)
    if req.guidance and not req.feedback:
        return openai_error(400, "guidance steers by the feedback: give feedback too (or guidance 0)",
                            param="guidance")
    if req.stream:
        if req.revision_passes:
            return openai_error(400, "revision_passes needs stream: false (the answer is revised after it is "
                                     "complete)", param="revision_passes")
        return await _stream(server, req, messages, max_new, seed, request)
    try:
        # loading the model (first request only) blocks: do it off the event loop
        future = await run_in_threadpool(
            functools.partial(server.submit, messages, req.feedback or None, max_new, req.temperature, req.top_p,
                              seed, guidance=req.guidance, negative=req.negative_feedback or None))
        waiting = asyncio.wrap_future(future)
        # concurrent requests meet in the server's batches; a client that left is dropped from the queue
        if not await _answered(request, waiting, future.cancel):
            return openai_error(499, "client closed the request", type_="client_closed")
        text, usage = waiting.result()
        revisions = []
        if req.revision_passes:  # Critique-and-Revise: the final revision is the answer, every pass reported
            from alt_engine.revise import final_answer

            steps = await run_in_threadpool(server.revise, messages, text, req.revision_passes, 2 * max_new, seed)
            revisions = [{"answer": st.answer, "critique": st.critique, "revision": st.revision} for st in steps]
            text = final_answer(steps, text)
    except PromptTooLong as e:
        return openai_error(400, str(e), param="messages", code="context_length_exceeded")
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
        **({"revisions": revisions} if req.revision_passes else {}),
    }


async def _answered(request: Request, waiting: asyncio.Future, on_gone: Callable[[], Any]) -> bool:
    """Wait for ``waiting``; True once it is done, False (after ``on_gone()``) if the client disconnects first."""
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        if done:
            return True
        if await request.is_disconnected():
            on_gone()
            return False


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _stream(server: ModelServer, req: ChatRequest, messages: list[dict], max_new: int, seed: int,
                  request: Request):
    """``stream: true``: ``chat.completion.chunk`` events (role, content pieces as they are generated, the
    finish reason, usage if ``stream_options.include_usage``), then ``data: [DONE]``."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    try:
        future = await run_in_threadpool(
            functools.partial(server.submit, messages, req.feedback or None, max_new, req.temperature, req.top_p,
                              seed, lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece),
                              guidance=req.guidance, negative=req.negative_feedback or None))
    except ValueError as e:
        return openai_error(400, str(e))
    except Exception as e:
        return openai_error(503, f"the served model failed: {type(e).__name__}: {e}", type_="server_error")
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": server.version_name, "system_fingerprint": server.version_name}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    async def events():
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (piece := await pieces.get()) is not None:
                yield chunk({"content": piece})
            try:
                _, usage = future.result()
            except Exception as e:  # headers are sent: report the failure as an error event
                yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
                return
            yield chunk({}, usage.finish_reason)
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**head, "choices": [], "usage": {
                    "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens}})
            yield _sse("[DONE]")
        finally:
            future.cancel()  # the client left before its batch started: skip it

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- /v1/completions


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` as vLLM takes it: ``prompt`` is text, token ids, or a list of either.

    The prompt is used as given (no chat template, no conditioning: the caller — the studio's ``openai``
    sampling backend — built it with ``conditioning.build_input``). ``n`` samples per prompt, drawn with
    ``seed`` (reproducible); ``finish_reason`` is ``length`` when a sample stopped at ``max_tokens``.
    ``return_token_ids`` (vLLM's extra field) adds each choice's sampled ``token_ids``. ``logit_bias``
    bans tokens (``{"id": -100}``, e.g. Quark's control tokens); other biases are refused.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    logit_bias: dict[int, float] | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # the OpenAI default
    seed: int | None = None
    stream: Literal[False] = False
    echo: Literal[False] = False
    return_token_ids: bool = False
    guidance: float = Field(0.0, ge=0, le=10)  # the studio's extra: feedback guidance γ (echoed in the response)
    negative_prompt: str | list[int] | list[str] | list[list[int]] | None = None  # per prompt, under f⁻

    def prompts(self) -> list[list[int] | str]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


def add_completions_route(api: FastAPI, server: ModelServer, gate: Gate, settings: Settings) -> None:
    """Mount ``POST /v1/completions`` (same keys, limits and fairness cap as the chat route)."""

    @api.post("/v1/completions")
    async def completions(request: Request):
        return await gate.gated(request, lambda: _completions(request, server, settings))


async def _completions(request: Request, server: ModelServer, settings: Settings):
    try:
        body = await _json_body(request)
        req = CompletionRequest.model_validate(body)
    except OverflowError:
        return _too_large()
    except ValueError as e:  # bad JSON or a ValidationError (a ValueError too)
        message, param = _validation_message(e) if isinstance(e, ValidationError) else (
            "the request body is not valid JSON", None)
        return openai_error(400, message, param=param)
    if (too_many := _max_tokens_error(req.max_tokens, settings, "max_tokens")) is not None:
        return too_many
    if req.model not in server.model_ids:
        return openai_error(404, f"model {req.model!r} is not served here; available: {server.version_name}",
                            param="model", code="model_not_found")
    prompts = req.prompts()
    if not prompts:
        return openai_error(400, "prompt: empty", param="prompt")
    bias = req.logit_bias or {}
    if any(v != -100 for v in bias.values()):
        return openai_error(400, "logit_bias: only -100 (never sample the token) is supported", param="logit_bias")
    budget = len(prompts) * req.n * req.max_tokens
    if budget > settings.serve_max_request_tokens:
        return openai_error(400, f"prompts × n × max_tokens = {len(prompts)} × {req.n} × {req.max_tokens} = {budget} "
                                 f"new tokens; this server takes at most {settings.serve_max_request_tokens} per "
                                 "request: split it", param="prompt", code="request_too_large")
    params = SamplingParams(n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_tokens,
                            seed=req.seed if req.seed is not None else random.randrange(2**31),
                            batch_size=min(16, req.n * len(prompts)), suppress_tokens=sorted(bias),
                            guidance=req.guidance)
    negatives = None
    if req.guidance:
        if req.negative_prompt is None:
            return openai_error(400, "guidance needs negative_prompt: each prompt under the negative feedback",
                                param="negative_prompt")
        negatives = CompletionRequest(model=req.model, prompt=req.negative_prompt).prompts()
        if len(negatives) != len(prompts):
            return openai_error(400, f"negative_prompt: {len(negatives)} given for {len(prompts)} prompts",
                                param="negative_prompt")
    cancel = threading.Event()
    try:
        waiting = asyncio.ensure_future(run_in_threadpool(server.complete, prompts, params, negatives=negatives,
                                                          cancel=cancel))
        if not await _answered(request, waiting, cancel.set):  # a client that left stops the work at its next turn
            return openai_error(499, "client closed the request", type_="client_closed")
        inputs, samples = waiting.result()
    except PromptTooLong as e:
        return openai_error(400, str(e), param="prompt", code="context_length_exceeded")
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
                      "total_tokens": prompt_tokens + completion_tokens},
            **({"guidance": req.guidance} if req.guidance else {})}  # a server that guided says so
