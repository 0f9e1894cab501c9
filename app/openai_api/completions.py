"""``POST /v1/completions`` (vLLM-style: ready-made prompts, ``n`` samples each) on the model server's
``complete``, which takes turns with the chat batches."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from alt_engine.sampling import SamplingParams
from alt_engine.serving import ModelServer, PromptTooLong
from alt_engine.settings import Settings

from .gate import Gate, answered, json_body, max_tokens_error, openai_error, too_large
from .schemas import CompletionRequest, validation_message


def add_completions_route(api: FastAPI, server: ModelServer, gate: Gate, settings: Settings) -> None:
    """Mount ``POST /v1/completions`` (same keys, limits and fairness cap as the chat route)."""

    @api.post("/v1/completions")
    async def completions(request: Request):
        return await gate.gated(request, lambda: complete_prompts(request, server, settings))


async def complete_prompts(request: Request, server: ModelServer, settings: Settings):
    """One ``/v1/completions`` request: the body checked against the limits, then ``server.complete``."""
    try:
        body = await json_body(request)
        req = CompletionRequest.model_validate(body)
    except OverflowError:
        return too_large()
    except ValueError as e:  # bad JSON or a ValidationError (a ValueError too)
        message, param = validation_message(e) if isinstance(e, ValidationError) else (
            "the request body is not valid JSON", None)
        return openai_error(400, message, param=param)
    if (too_many := max_tokens_error(req.max_tokens, settings, "max_tokens")) is not None:
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
        if not await answered(request, waiting, cancel.set):  # a client that left stops the work at its next turn
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
