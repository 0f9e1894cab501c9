"""The model server: ONE copy of the served model shared by every user of the app.

``ModelServer.chat`` is safe to call from many threads at once. A worker
thread collects the requests that arrive within ``batch_wait_ms`` of each
other (up to ``max_batch``) and answers them with one batched
``TransformersBackend.generate`` — so 8 concurrent playground or
``/v1/chat/completions`` users cost about one batched generate, not 8 in a
row. Requests are batched with others that share their sampling settings
(temperature, top_p); a batch runs to the largest ``max_new_tokens`` asked and
each answer is cut to its own limit (with greedy decoding that is exactly the
answer it would get alone). A sampled batch draws from one seeded generator,
so sampling is reproducible only for a request that runs alone.
Inputs are built by ``conditioning.build_input``: ``feedback`` steers the
model exactly as in training. ``reload`` switches the served version
(promote / rollback) without dropping requests; ``follow(db)`` does it by itself
when another process (``alt models promote``, a round) changes the served version.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from . import conditioning
from .sampling import SamplingParams, TransformersBackend

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """A request whose input is longer than ``ModelServer.max_prompt_tokens``; it is refused, not run."""


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # stopped at max_new_tokens without EOS

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"


@dataclass(eq=False)
class _Request:
    messages: conditioning.PromptLike
    feedback: str | None
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.temperature == 0 else (self.temperature, self.top_p)


class ModelServer:
    """Serves one model version; ``chat`` from any thread, ``reload`` to switch versions.

    Give a ready ``backend`` (tests, scripts) or a ``path``/``version_name`` to load
    lazily on first use (the web app starts fast and loads the model once).
    """

    def __init__(self, backend: TransformersBackend | None = None, *, path: str | None = None,
                 version_name: str | None = None, device: str = "auto", max_batch: int = 8,
                 batch_wait_ms: float = 30.0, fmt: conditioning.Format | None = None,
                 max_prompt_tokens: int | None = None):
        if backend is None and path is None:
            raise ValueError("ModelServer needs a backend or a model path")
        self.backend, self.path, self.device = backend, path, device
        self.version_name = version_name or path or "model"
        self.max_batch, self.batch_wait = max_batch, batch_wait_ms / 1000
        self.fmt = fmt or conditioning.Format()
        self.max_prompt_tokens = max_prompt_tokens  # longer inputs are refused (PromptTooLong), not run
        self.batches = 0  # batched generate calls so far (for tests and monitoring)
        self.answered = 0  # requests answered so far
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._load_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings, **kw) -> ModelServer:
        """The database's served version (else ``settings.model``), loaded on first use."""
        from .db import session_scope
        from .modeling import resolve_model
        from .versions import served_version

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
                    from .sampling import make_backend

                    log.info("loading %s for serving", self.path)
                    self.backend = make_backend("transformers", self.path, self.device)  # type: ignore[assignment]
        return self.backend  # type: ignore[return-value]

    def reload(self, version, version_name: str | None = None, backend: TransformersBackend | None = None) -> None:
        """Serve another version (a ``ModelVersion`` row or a model path): load it, then swap.

        Requests in flight finish on the old model. A server that has not loaded its
        model yet just switches what it will load.
        """
        from .sampling import make_backend

        path = getattr(version, "path", version)
        version_name = version_name or getattr(version, "name", None)
        new = backend
        if new is None and self.backend is not None:
            new = make_backend("transformers", path, self.device)
        with self._load_lock:
            self.backend, self.path, self.version_name = new, path, version_name or path  # type: ignore[assignment]
            if getattr(version, "conditioning", None):
                self.fmt = conditioning.format_of(version)
        log.info("now serving %s (%s)", self.version_name, path)

    def sync(self, db: str) -> bool:
        """Switch to the database's served version if it changed (promote / rollback); True if switched."""
        from .db import session_scope
        from .versions import served_version

        with session_scope(db) as s:
            served = served_version(s)
        if served is None or (served.name, served.path) == (self.version_name, self.path):
            return False
        self.reload(served)
        return True

    def follow(self, db: str, every: float = 5.0) -> None:
        """Check the database every ``every`` seconds and serve whatever version is promoted there."""
        def watch() -> None:
            while not self._closed:
                time.sleep(every)
                if not Path(db).exists():  # the database went away (tests' temp dirs): stop watching
                    return
                try:
                    self.sync(db)
                except Exception:
                    log.exception("could not switch to the served version")

        threading.Thread(target=watch, name="model-follow", daemon=True).start()

    # --------------------------------------------------------------- completions

    def complete(self, prompts: list[list[int] | str], params: SamplingParams) -> tuple[list[list[int]], list[list]]:
        """``params.n`` samples of each ready-made prompt (token ids, or text tokenized as is); (inputs, samples).

        For ``/v1/completions``: the caller built the inputs (conditioning included), so nothing is
        conditioned or templated here; the backend's lock runs it between the chat batches.
        """
        backend = self._ensure_loaded()
        vocab = len(backend.tokenizer)
        inputs = [list(backend.tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]
        for ids in inputs:
            if not ids or any(not 0 <= t < vocab for t in ids):
                raise ValueError(f"a prompt must be a non-empty list of token ids in [0, {vocab})")
            self._check_length(ids)
        samples = backend.generate(inputs, params)
        self.answered += len(inputs)
        return inputs, samples

    def _check_length(self, ids) -> None:
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; this server takes at most "
                                f"{self.max_prompt_tokens}")

    # --------------------------------------------------------------- chat

    def chat(self, messages: conditioning.PromptLike, feedback: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             timeout: float | None = None) -> tuple[str, Usage]:
        """The model's reply to a chat (or plain prompt), conditioned on ``feedback`` when given."""
        return self.submit(messages, feedback, max_new_tokens, temperature, top_p, seed).result(timeout)

    def submit(self, messages: conditioning.PromptLike, feedback: str | None = None, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Future:
        """Queue a chat; the future gives ``(text, usage)``. Cancelling it before its batch starts skips it."""
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
        if self._closed:
            raise RuntimeError("the model server is closed")
        self._ensure_loaded()
        request = _Request(messages, feedback, max_new_tokens, temperature, top_p, seed)
        self._start_worker()
        self._queue.put(request)
        return request.future

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

    def _run(self) -> None:
        pending: list[_Request] = []  # requests of another sampling group, answered in a later batch
        while True:
            first = pending.pop(0) if pending else self._queue.get()
            if first is None:
                return
            batch = [first] + [r for r in pending if r.group == first.group][: self.max_batch - 1]
            pending = [r for r in pending if r not in batch]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:  # the batching window
                try:
                    req = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if req is None:  # closing: answer what we have first
                    self._queue.put(None)
                    break
                (batch if req.group == first.group else pending).append(req)
            try:
                self._generate(batch)
            except Exception as e:  # answer every caller, keep serving
                log.exception("generation failed")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)

    def _generate(self, batch: list[_Request]) -> None:
        backend = self._ensure_loaded()  # inputs are built with the tokenizer of the model that answers
        inputs, ok = [], []
        for r in batch:  # one malformed chat fails alone, not its batch
            if not r.future.set_running_or_notify_cancel():  # the caller gave up while it waited
                continue
            try:
                ids = conditioning.build_input(backend.tokenizer, r.messages, r.feedback, self.fmt).input_ids
                self._check_length(ids)
                inputs.append(ids)
                ok.append(r)
            except PromptTooLong as e:
                r.future.set_exception(e)
            except Exception as e:
                r.future.set_exception(ValueError(f"cannot build the model input: {e}"))
        if not ok:
            return
        batch, first = ok, ok[0]
        params = SamplingParams(n=1, temperature=first.temperature, top_p=first.top_p, seed=first.seed,
                                max_new_tokens=max(r.max_new_tokens for r in batch), batch_size=len(batch))
        samples = backend.generate(inputs, params)
        self.batches += 1
        self.answered += len(batch)
        for r, ids, (s,) in zip(batch, inputs, samples):
            tokens = s.token_ids[: r.max_new_tokens]
            usage = Usage(len(ids), len(tokens), truncated=len(s.token_ids) >= r.max_new_tokens)
            r.future.set_result((backend.tokenizer.decode(tokens, skip_special_tokens=True), usage))
