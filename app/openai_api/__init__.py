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

The code, by concern: ``schemas`` (request bodies), ``gate`` (keys, fairness cap, limits, errors), ``chat`` and
``streaming`` (``/v1/chat/completions``), ``completions`` (``/v1/completions``), ``routes`` (mounting them all).
"""

from .completions import add_completions_route
from .gate import CHARS_PER_TOKEN, MAX_BODY_BYTES, Gate, openai_error
from .routes import add_openai_routes
from .schemas import (
    DEFAULT_MAX_TOKENS,
    MAX_TOKENS_LIMIT,
    ChatRequest,
    CompletionRequest,
    Message,
    StreamOptions,
    TextPart,
)

__all__ = ["CHARS_PER_TOKEN", "DEFAULT_MAX_TOKENS", "MAX_BODY_BYTES", "MAX_TOKENS_LIMIT", "ChatRequest",
           "CompletionRequest", "Gate", "Message", "StreamOptions", "TextPart", "add_completions_route",
           "add_openai_routes", "openai_error"]
