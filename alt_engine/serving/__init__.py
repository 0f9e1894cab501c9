"""The model server: ONE copy of the served model shared by every user of the app.

``ModelServer.chat`` is safe to call from many threads at once. A worker
thread collects the requests that arrive within ``batch_wait_ms`` of each
other (up to ``max_batch``) and answers them with one batched
``TransformersBackend.generate`` — so 8 concurrent playground or
``/v1/chat/completions`` users cost about one batched generate, not 8 in a
row. Requests are batched with others that share their sampling settings
(temperature, top_p), and one that arrives while a batch decodes joins it at the
next step (continuous batching: it does not wait for the others' answers to end).
Each row stops at its own ``max_new_tokens`` and draws from its own seeded random
stream, so a request's answer is the one it gets alone with the same seed (up to
float rounding with the batch's shape), and each is sent as soon as its own row stops.
Inputs are built by ``conditioning.build_input``: ``feedback`` steers the
model exactly as in training. ``reload`` switches the served version
(promote / rollback) without dropping requests; ``follow(db)`` does it by itself
when another process (``alt models promote``, a round) changes the served version.

``ModelHub`` (one per process, ``hub_for(settings)``) holds the served version's ``ModelServer``, keeps the
previous version loaded for an instant rollback and loads any other version on request
(``hub.for_version(name)``, for the playground) in a small memory-bounded LRU (``BackendCache``).

The code, by concern: ``server`` (``ModelServer``: the chat / completions / reload API), ``batching``
(the queue, the worker and the running batch), ``model_cache`` (``BackendCache``) and ``hub``
(``ModelHub``, ``hub_for``, ``close_hub``). Import from here: ``from alt_engine.serving import ModelServer``.
"""

from .batching import PromptTooLong, Usage
from .hub import ModelHub, close_hub, hub_for
from .model_cache import BackendCache, model_bytes
from .server import Cancelled, ModelServer

__all__ = ["BackendCache", "Cancelled", "ModelHub", "ModelServer", "PromptTooLong", "Usage", "close_hub", "hub_for",
           "model_bytes"]
