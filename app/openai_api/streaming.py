"""``stream: true`` on ``/v1/chat/completions``: the reply as server-sent ``chat.completion.chunk`` events,
sent as the model generates it."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from alt_engine.serving import ModelServer

from .gate import openai_error
from .schemas import ChatRequest


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def stream_chat(server: ModelServer, req: ChatRequest, messages: list[dict], max_new: int, seed: int,
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
