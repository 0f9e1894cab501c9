"""``ModelServer``: ONE copy of a model version shared by every user of the app.

``chat`` / ``submit`` / ``stream`` queue a chat for the batching worker (``batching.ChatBatcher``);
``complete`` runs ready-made prompts (``/v1/completions``) a few at a time, taking turns with the chat
batches; ``reload`` / ``sync`` / ``follow`` switch the served version without dropping requests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path

from .. import conditioning
from ..db import is_url
from ..sampling import SamplingParams, TransformersBackend
from .batching import ChatBatcher, QueuedChat, Usage
from .model_cache import BackendCache

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """A ``complete`` call whose client left: stopped between turns at the model."""


class ModelServer(ChatBatcher):
    """Serves one model version; ``chat`` from any thread, ``reload`` to switch versions.

    Give a ready ``backend`` (tests, scripts) or a ``path``/``version_name`` to load
    lazily on first use (the web app starts fast and loads the model once).
    """

    def __init__(self, backend: TransformersBackend | None = None, *, path: str | None = None,
                 version_name: str | None = None, device: str = "auto", max_batch: int = 8,
                 batch_wait_ms: float = 30.0, fmt: conditioning.Format | None = None,
                 max_prompt_tokens: int | None = None, cache: BackendCache | None = None):
        if backend is None and path is None:
            raise ValueError("ModelServer needs a backend or a model path")
        self.backend, self.path, self.device = backend, path, device
        self.cache = cache  # shared loaded models: the previous version stays there for an instant rollback
        self.previous: tuple[str, str] | None = None  # (name, path) served before the last reload
        self.version_name = version_name or path or "model"
        self.max_batch, self.batch_wait = max_batch, batch_wait_ms / 1000
        self.fmt = fmt or conditioning.Format()
        self.max_prompt_tokens = max_prompt_tokens  # longer inputs are refused (PromptTooLong), not run
        self.batches = 0  # batched generate calls so far (for tests and monitoring)
        self.answered = 0  # requests answered so far
        self._queue: queue.Queue[QueuedChat | None] = queue.Queue()
        self._pending: list[QueuedChat] = []  # requests of another sampling group, for a later batch (worker thread)
        self._joined: list[QueuedChat] = []  # the requests of the batch running now (answered on failure)
        self._chat_waiting = False  # a chat batch waits for the model (``complete`` lets it go between its turns)
        self._others_waiting = 0  # ``complete`` calls waiting for the model: a running batch stops admitting
        self._count_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings, **kw) -> ModelServer:
        """The database's served version (else ``settings.model``), loaded on first use."""
        from ..db import session_scope
        from ..modeling import resolve_model
        from ..versions import served_version

        name, path, fmt = None, None, None
        try:
            with session_scope(settings.db) as s:
                served = served_version(s)
                if served is not None:
                    name, path = served.name, served.path
                    fmt = conditioning.format_of(served) if served.conditioning else None
        except Exception as e:  # no database yet: serve the configured model
            log.info("no served version in %s (%s); serving %s", settings.db, e, settings.model)
        if path is None:
            name, path = settings.model, settings.model
        kw.setdefault("fmt", fmt)
        return cls(path=resolve_model(path, settings.cache_dir), version_name=name, device=settings.device, **kw)

    # --------------------------------------------------------------- loading

    @property
    def model_ids(self) -> list[str]:
        """Names this server answers to (the version name first)."""
        return [n for n in dict.fromkeys([self.version_name, self.path]) if n]

    def _ensure_loaded(self) -> TransformersBackend:
        if self.backend is None:
            with self._load_lock:
                if self.backend is None:
                    from ..sampling import make_backend

                    log.info("loading %s for serving", self.path)
                    self.backend = (self.cache.get(self.path) if self.cache is not None else  # type: ignore[assignment]
                                    make_backend("transformers", self.path, self.device))
        return self.backend  # type: ignore[return-value]

    def reload(self, version, version_name: str | None = None, backend: TransformersBackend | None = None) -> None:
        """Serve another version (a ``ModelVersion`` row or a model path): load it, then swap.

        Requests in flight finish on the old model. A server that has not loaded its
        model yet just switches what it will load.
        """
        from ..sampling import make_backend

        path = getattr(version, "path", version)
        version_name = version_name or getattr(version, "name", None)
        new = backend
        if new is None and self.backend is not None:  # load first (outside the lock): requests keep flowing
            new = self.cache.get(path) if self.cache is not None else make_backend("transformers", path, self.device)
        with self._load_lock:
            if (self.version_name, self.path) != (version_name or path, path):
                self.previous = (self.version_name, self.path)
            self.backend, self.path, self.version_name = new, path, version_name or path  # type: ignore[assignment]
            if getattr(version, "conditioning", None):
                self.fmt = conditioning.format_of(version)
            if self.cache is not None:
                self.cache.pin([p for p in (path, self.previous and self.previous[1]) if p])
        log.info("now serving %s (%s)", self.version_name, path)

    def sync(self, db: str) -> bool:
        """Switch to the database's served version if it changed (promote / rollback); True if switched."""
        from ..db import session_scope
        from ..versions import served_version

        with session_scope(db) as s:
            served = served_version(s)
        if served is None or (served.name, served.path) == (self.version_name, self.path):
            return False
        self.reload(served)
        return True

    def follow(self, db: str, every: float = 5.0) -> None:
        """Check the database every ``every`` seconds and serve whatever version is promoted there."""
        def watch() -> None:
            while True:
                time.sleep(every)
                if self._closed or (not is_url(db) and not Path(db).exists()):  # closed, or the file went away
                    return
                try:
                    self.sync(db)
                except Exception:
                    log.exception("could not switch to the served version")

        threading.Thread(target=watch, name="model-follow", daemon=True).start()

    # --------------------------------------------------------------- completions

    def complete(self, prompts: list[list[int] | str], params: SamplingParams, *,
                 negatives: list[list[int] | str] | None = None,
                 cancel: threading.Event | None = None) -> tuple[list[list[int]], list[list]]:
        """``params.n`` samples of each ready-made prompt (token ids, or text tokenized as is); (inputs, samples).

        For ``/v1/completions``: the caller built the inputs (conditioning included), so nothing is
        conditioned or templated here; the backend's lock runs it between the chat batches. It runs a few
        prompts at a time and lets a waiting chat batch go between them, so a large request cannot hold every
        chat back; ``cancel`` set (the client left) stops it between turns (``Cancelled``). With
        ``params.guidance`` > 0, ``negatives`` are the same prompts under the negative feedback (one per prompt).
        """
        backend = self._ensure_loaded()
        vocab = len(backend.tokenizer)
        inputs = [list(backend.tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]
        negs = None
        if params.guidance:
            if negatives is None or len(negatives) != len(inputs):
                raise ValueError("guidance needs one negative_prompt per prompt (the prompt under the negative "
                                 "feedback)")
            negs = [list(backend.tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in negatives]
        for ids in inputs + (negs or []):
            if not ids or any(not 0 <= t < vocab for t in ids):
                raise ValueError(f"a prompt must be a non-empty list of token ids in [0, {vocab})")
            self._check_length(ids)
        if any(not 0 <= t < vocab for t in params.suppress_tokens):
            raise ValueError(f"logit_bias: token ids must be in [0, {vocab})")
        samples: list[list] = []
        per_call = max(1, (params.batch_size or 16) // max(1, params.n))  # prompts per turn at the model
        for start in range(0, len(inputs), per_call):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the client left")
            if start:  # between turns: a chat batch that waits for the model runs first (fair interleaving)
                self._let_chat_run()
            with self._count_lock:  # a running chat batch admits no newcomers now: it drains and lets this run
                self._others_waiting += 1
            try:  # input i keeps its own random streams (seed + i) however the inputs are split
                chunk = SamplingParams(**{**asdict(params), "seed": params.seed + start})
                guided = {"negatives": negs[start:start + per_call]} if negs else {}
                samples += backend.generate(inputs[start:start + per_call], chunk, **guided)
            finally:
                with self._count_lock:
                    self._others_waiting -= 1
        self.answered += len(inputs)
        return inputs, samples

    def _let_chat_run(self, timeout: float = 30.0) -> None:
        """If a chat batch is waiting for the model, wait until it has started (it then holds the model)."""
        started, deadline = self.batches, time.monotonic() + timeout
        while self._chat_waiting and self.batches == started and time.monotonic() < deadline:
            time.sleep(0.002)

    # --------------------------------------------------------------- chat

    def chat(self, messages: conditioning.PromptLike, feedback: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             timeout: float | None = None, *, guidance: float = 0.0, negative: str | None = None) -> tuple[str, Usage]:
        """The model's reply to a chat (or plain prompt), conditioned on ``feedback`` when given."""
        return self.submit(messages, feedback, max_new_tokens, temperature, top_p, seed, guidance=guidance,
                           negative=negative).result(timeout)

    def submit(self, messages: conditioning.PromptLike, feedback: str | None = None, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
               on_text: Callable[[str], None] | None = None, *, guidance: float = 0.0,
               negative: str | None = None) -> Future:
        """Queue a chat; the future gives ``(text, usage)``. Cancelling it before its batch starts skips it.

        ``on_text`` streams: it is called from the model's thread with each new piece of the reply as the
        tokens are generated (the pieces joined are the final text). ``guidance`` > 0 decodes with feedback
        guidance away from ``negative`` (a feedback text; None: the plain prompt) — it needs ``feedback``."""
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
        from ..sampling import MAX_GUIDANCE

        if not 0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE}")
        if guidance and feedback is None:
            raise ValueError("guidance steers by the feedback: give a feedback to condition on (or guidance 0)")
        if self._closed:
            raise RuntimeError("the model server is closed")
        self._ensure_loaded()
        request = QueuedChat(messages, feedback, max_new_tokens, temperature, top_p, seed, on_text=on_text,
                           guidance=float(guidance), negative=negative if guidance else None)
        self._start_worker()
        self._queue.put(request)
        return request.future

    def stream(self, messages: conditioning.PromptLike, feedback: str | None = None, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
               timeout: float | None = None, *, guidance: float = 0.0,
               negative: str | None = None) -> Iterator[tuple[str, Usage | None]]:
        """The reply as it is generated: ``(piece, None)`` per new piece, then ``("", usage)`` once at the end.

        Closing the iterator early cancels the request if its batch has not started."""
        pieces: queue.Queue = queue.Queue()
        future = self.submit(messages, feedback, max_new_tokens, temperature, top_p, seed, on_text=pieces.put,
                             guidance=guidance, negative=negative)
        future.add_done_callback(lambda _: pieces.put(None))
        try:
            while (piece := pieces.get(timeout=timeout)) is not None:
                yield piece, None
            _, usage = future.result()
            yield "", usage
        finally:
            future.cancel()

    def model_input(self, messages: conditioning.PromptLike,
                    feedback: str | None = None) -> tuple[conditioning.ConditionedInput, str, conditioning.Format]:
        """The exact input this server builds for a chat (its tokenizer, its version's format): the ids with the
        feedback segment's position, the ids decoded as text, and the format (for "show the model input")."""
        backend, _, fmt = self._current()
        built = conditioning.build_input(backend.tokenizer, messages, feedback, fmt)
        return built, backend.tokenizer.decode(built.input_ids), fmt.for_tokenizer(backend.tokenizer)

    def revise(self, messages: conditioning.PromptLike, answer: str, passes: int, max_new_tokens: int = 256,
               seed: int = 0) -> list:
        """Critique-and-Revise at inference (``revise.revise``): ``passes`` greedy revisions of ``answer`` to the
        chat by this server's model (meaningful for a ``cnr`` version); one ``RevisionStep`` per pass made."""
        from ..revise import MAX_PASSES, revise

        if not 1 <= passes <= MAX_PASSES:
            raise ValueError(f"revision passes must be between 1 and {MAX_PASSES}")
        backend, _, _ = self._current()  # its generate holds the model's lock: runs between the chat batches
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
        return revise(backend, messages, answer, passes, params)

    def preload(self) -> None:
        """Load the model now (e.g. in a background thread at app start) instead of on the first request."""
        try:
            self._ensure_loaded()
        except Exception:
            log.exception("could not load %s for serving", self.path)

    def _start_worker(self) -> None:
        with self._load_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="model-server", daemon=True)
                self._worker.start()

    def close(self, timeout: float = 60.0) -> None:
        """Answer what is queued, then stop the worker."""
        self._closed = True
        self._queue.put(None)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def _current(self) -> tuple[TransformersBackend, str, conditioning.Format]:
        """The backend, version name and format, read together (a reload swaps them under the lock)."""
        self._ensure_loaded()
        with self._load_lock:
            return self.backend, self.version_name, self.fmt  # type: ignore[return-value]
