"""``POST /v1/chat/completions``: checks the body against the limits, picks the version asked for, and
answers from the model server's batches (whole, revised by Critique-and-Revise, or streamed)."""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from alt_engine.serving import ModelServer, PromptTooLong
from alt_engine.settings import Settings

from .gate import CHARS_PER_TOKEN, answered, max_tokens_error, openai_error
from .schemas import DEFAULT_MAX_TOKENS, ChatRequest, validation_message
from .streaming import stream_chat


async def server_for(server: ModelServer, hub, name: str) -> ModelServer | None:
    """The server answering as ``name``: the served one, else any version by name (loaded on demand)."""
    if name in server.model_ids:
        return server
    if hub is None:
        return None
    try:
        return await run_in_threadpool(hub.for_version, name)
    except ValueError:
        return None


async def complete_chat(server: ModelServer, settings: Settings, body: Any, request: Request,
                        hub=None) -> JSONResponse | dict:
    """One chat completion: the body checked against the limits, then answered (or streamed) by the version
    it names; every refusal is an OpenAI-style error."""
    if not isinstance(body, dict):
        return openai_error(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        message, param = validation_message(e)
        return openai_error(400, message, param=param)
    served = server
    server = await server_for(served, hub, req.model)
    if server is None:
        return openai_error(404, f"model {req.model!r} is not a model version here; served: {served.version_name} "
                                 "(any version name from `alt models list` works)", param="model",
                            code="model_not_found")
    max_new = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, settings.serve_max_tokens)
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if (too_many := max_tokens_error(max_new, settings, param)) is not None:
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
        return await stream_chat(server, req, messages, max_new, seed, request)
    try:
        # loading the model (first request only) blocks: do it off the event loop
        future = await run_in_threadpool(
            functools.partial(server.submit, messages, req.feedback or None, max_new, req.temperature, req.top_p,
                              seed, guidance=req.guidance, negative=req.negative_feedback or None))
        waiting = asyncio.wrap_future(future)
        # concurrent requests meet in the server's batches; a client that left is dropped from the queue
        if not await answered(request, waiting, future.cancel):
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
