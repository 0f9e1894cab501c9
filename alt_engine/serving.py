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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import conditioning
from .db import is_url
from .sampling import SamplingParams, TransformersBackend

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """A ``complete`` call whose client left: stopped between turns at the model."""


class PromptTooLong(ValueError):
    """A request whose input is longer than ``ModelServer.max_prompt_tokens``; it is refused, not run."""


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # stopped at max_new_tokens without EOS
    version: str = ""  # the model version that answered

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
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of the reply
    guidance: float = 0.0  # feedback guidance γ (``guidance.py``), away from ``negative`` (None: the plain prompt)
    negative: str | None = None

    @property
    def group(self) -> tuple[float, float, float]:
        """Requests that can share a batch: the same sampling settings and guidance strength."""
        return (0.0, 1.0, self.guidance) if self.temperature == 0 else (self.temperature, self.top_p, self.guidance)


class ModelServer:
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
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[_Request] = []  # requests of another sampling group, for a later batch (worker thread)
        self._joined: list[_Request] = []  # the requests of the batch running now (answered on failure)
        self._chat_waiting = False  # a chat batch waits for the model (``complete`` lets it go between its turns)
        self._others_waiting = 0  # ``complete`` calls waiting for the model: a running batch stops admitting
        self._count_lock = threading.Lock()
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
                    self.backend = (self.cache.get(self.path) if self.cache is not None else  # type: ignore[assignment]
                                    make_backend("transformers", self.path, self.device))
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

    def _check_length(self, ids) -> None:
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; this server takes at most "
                                f"{self.max_prompt_tokens}")

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
        from .sampling import MAX_GUIDANCE

        if not 0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE}")
        if guidance and feedback is None:
            raise ValueError("guidance steers by the feedback: give a feedback to condition on (or guidance 0)")
        if self._closed:
            raise RuntimeError("the model server is closed")
        self._ensure_loaded()
        request = _Request(messages, feedback, max_new_tokens, temperature, top_p, seed, on_text=on_text,
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
        from .revise import MAX_PASSES, revise

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

    def _run(self) -> None:
        while True:
            pending = self._pending
            first = pending.pop(0) if pending else self._queue.get()
            if first is None:
                return
            batch = [first] + [r for r in pending if r.group == first.group][: self.max_batch - 1]
            self._pending = [r for r in pending if r not in batch]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:  # the batching window
                try:
                    req = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if req is None:  # closing: answer what we have first
                    self._queue.put(None)
                    break
                (batch if req.group == first.group else self._pending).append(req)
            try:
                self._generate(batch)
            except Exception as e:  # answer every caller, keep serving
                log.exception("generation failed")
                for r in batch + self._joined:
                    if not r.future.done():
                        r.future.set_exception(e)

    def _current(self) -> tuple[TransformersBackend, str, conditioning.Format]:
        """The backend, version name and format, read together (a reload swaps them under the lock)."""
        self._ensure_loaded()
        with self._load_lock:
            return self.backend, self.version_name, self.fmt  # type: ignore[return-value]

    def _generate(self, batch: list[_Request]) -> None:
        """One running batch: ``batch``, then every request of the same sampling group that arrives while it
        decodes joins it at the next step (``admit``); each answer is sent as soon as its own row stops."""
        backend, version_name, fmt = self._current()  # a batch runs on one model, even if a reload happens meanwhile
        running: list[_Request] = []  # input index → request
        inputs: list[list[int]] = []
        negatives: list[list[int] | None] = []  # guidance: the input under the negative feedback
        streams: list[_Stream | None] = []
        self._joined = running

        def prepare(r: _Request) -> list[int] | None:
            """The request's input ids, or None when it was cancelled or cannot run (its future says why)."""
            if not r.future.set_running_or_notify_cancel():  # the caller gave up while it waited
                return None
            try:  # one malformed chat fails alone, not its batch
                ids = conditioning.build_input(backend.tokenizer, r.messages, r.feedback, fmt).input_ids
                self._check_length(ids)
                neg = None
                if r.guidance:
                    if fmt.for_tokenizer(backend.tokenizer).placement == "none":
                        raise ValueError(f"version {version_name} reads no feedback (an sft, cut or cnr version): "
                                         "guidance has nothing to steer; use guidance 0")
                    neg = conditioning.build_input(backend.tokenizer, r.messages, r.negative, fmt).input_ids
                    self._check_length(neg)
            except PromptTooLong as e:
                r.future.set_exception(e)
                return None
            except ValueError as e:
                r.future.set_exception(e)
                return None
            except Exception as e:
                r.future.set_exception(ValueError(f"cannot build the model input: {e}"))
                return None
            running.append(r)
            inputs.append(ids)
            negatives.append(neg)
            streams.append(_Stream(r.on_text, r.max_new_tokens, backend) if r.on_text else None)
            return ids

        for r in batch:
            prepare(r)
        if not running:
            return
        group, closing = running[0].group, False

        def admit(free: int) -> list[tuple]:
            """Up to ``free`` requests of this batch's sampling group that came in meanwhile. None once another
            group or a ``complete`` call waits (the batch drains, then they run: no starvation) or another
            version is served (a promotion's newcomers go to the new model)."""
            nonlocal closing
            new: list[tuple] = []
            if self.backend is not backend or self.version_name != version_name or self._others_waiting or any(
                    r.group != group for r in self._pending):
                return new
            keep: list[_Request] = []
            for r in self._pending:  # same-group requests set aside earlier first
                if len(new) < free and r.group == group and (ids := prepare(r)) is not None:
                    new.append((ids, r.max_new_tokens, r.seed, negatives[-1]))
                elif len(new) >= free or r.group != group:
                    keep.append(r)
            self._pending = keep
            while len(new) < free and not closing:
                try:
                    r = self._queue.get_nowait()
                except queue.Empty:
                    break
                if r is None:  # closing: finish what runs, admit nothing more
                    self._queue.put(None)
                    closing = True
                elif r.group != group:
                    self._pending.append(r)
                    break  # it waits for this batch to drain: admit no more
                elif (ids := prepare(r)) is not None:
                    new.append((ids, r.max_new_tokens, r.seed, negatives[-1]))
            return new

        def on_step(rows, tokens):  # rows = (input index, 0): one sample per request
            for (i, _), token in zip(rows, tokens):
                if streams[i] is not None:
                    streams[i].add(token)

        def on_sample(i: int, _j: int, s) -> None:  # a request is answered as soon as its own row stops
            tokens = s.token_ids
            usage = Usage(len(inputs[i]), len(tokens), truncated=s.truncated, version=version_name)
            running[i].future.set_result((backend.tokenizer.decode(tokens, skip_special_tokens=True), usage))
            self.answered += 1

        first = running[0]
        params = SamplingParams(n=1, temperature=first.temperature, top_p=first.top_p, seed=first.seed,
                                max_new_tokens=max(r.max_new_tokens for r in running), batch_size=self.max_batch,
                                guidance=first.guidance)
        guided = {"negatives": negatives} if first.guidance else {}  # the list grows as requests join
        self._chat_waiting = True
        while self._others_waiting:  # a ``complete`` call waited for the model first: it goes first
            time.sleep(0.005)
        self.batches += 1  # counted as it starts: its answers may be out before it returns
        self._chat_waiting = False
        if getattr(backend, "supports_admit", False):
            backend.generate(inputs, params, on_step=on_step, limits=[r.max_new_tokens for r in running],
                             seeds=[r.seed for r in running], admit=admit, on_sample=on_sample, **guided)
        else:  # a backend without joining: the batch as it is, each answer cut to its own limit
            samples = backend.generate(inputs, params, on_step=on_step, **guided) if any(streams) else \
                backend.generate(inputs, params, **guided)
            for i, (s,) in enumerate(samples):
                limit = running[i].max_new_tokens
                on_sample(i, 0, replace(s, token_ids=s.token_ids[:limit], truncated=len(s.token_ids) >= limit))
        for r in running:
            if not r.future.done():
                r.future.set_exception(RuntimeError("the model returned no sample"))


class _Stream:
    """One request's tokens as they come: text pieces to ``on_text`` until its stop token or its own limit.

    The reply so far is decoded whole each step and only what is new is sent, so a character spread over
    several tokens is sent once complete (a trailing U+FFFD waits for the next token)."""

    def __init__(self, on_text: Callable[[str], None], limit: int, backend):
        self.on_text, self.limit, self.backend = on_text, limit, backend
        self.tokens: list[int] = []
        self.sent, self.done = "", False

    def add(self, token: int) -> None:
        if self.done:
            return
        if token in self.backend.stop_ids:
            self.done = True
            return
        self.tokens.append(token)
        self.done = len(self.tokens) >= self.limit
        text = self.backend.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") and not self.done:
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            piece, self.sent = text[len(self.sent):], text
            try:
                self.on_text(piece)
            except Exception:  # a consumer's failure must not stop the batch
                log.exception("stream consumer failed")


# --------------------------------------------------------------------------- many versions in one process


def model_bytes(backend) -> int:
    """Memory a loaded model takes (parameters and buffers)."""
    model = getattr(backend, "model", None)
    if model is None:
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class BackendCache:
    """Loaded models by path, least recently used evicted first: at most ``max_models`` and ``max_bytes``.

    ``pin`` marks paths that must stay (the served version and the one before it, for an instant
    rollback); an unpinned one is dropped when a new load would exceed either bound.
    """

    def __init__(self, device: str = "auto", max_models: int = 3, max_bytes: int | None = None, loader=None):
        from collections import OrderedDict

        self.device, self.max_models, self.max_bytes = device, max_models, max_bytes
        self._loader = loader or (lambda path: __import__("alt_engine.sampling", fromlist=["make_backend"])
                                  .make_backend("transformers", path, device))
        self._models: OrderedDict[str, object] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._pinned: set[str] = set()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0  # models loaded so far (a rollback to a cached version loads nothing)

    def __contains__(self, path: str) -> bool:
        return path in self._models

    @property
    def paths(self) -> list[str]:
        """Loaded paths, least recently used first."""
        return list(self._models)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def pin(self, paths) -> None:
        with self._lock:
            self._pinned = set(paths)

    def get(self, path: str):
        """The loaded model at ``path`` (loaded now if needed; one load per path at a time)."""
        with self._lock:
            if path in self._models:
                self._models.move_to_end(path)
                return self._models[path]
            gate = self._loading.setdefault(path, threading.Lock())
        with gate:
            with self._lock:
                if path in self._models:
                    return self._models[path]
            backend = self._loader(path)
            size = model_bytes(backend)
            with self._lock:
                self.loads += 1
                self._evict_for(size)
                self._models[path], self._sizes[path] = backend, size
                self._loading.pop(path, None)
            return backend

    def _evict_for(self, size: int) -> None:
        def over() -> bool:
            too_many = len(self._models) + 1 > self.max_models
            too_big = self.max_bytes is not None and self.total_bytes + size > self.max_bytes
            return too_many or too_big

        for path in list(self._models):  # least recently used first
            if not over():
                return
            if path not in self._pinned:
                del self._models[path], self._sizes[path]
                log.info("unloaded %s (model cache full)", path)


class ModelHub:
    """The process-wide model server: the served version, the one before it, and others on request.

    - ``hub.served`` is the ``ModelServer`` for the promoted version (``/v1``, the playground's default);
    - ``hub.for_version(name_or_id)`` is a ``ModelServer`` for any version (the playground comparing
      versions), sharing loaded weights through one memory-bounded ``BackendCache``;
    - ``hub.promote(version_id)`` / ``hub.rollback()`` change the database's served version and hot-swap
      ``served``: requests in flight finish on the old model, new ones get the new one; the previous
      version stays loaded, so rolling back loads nothing.
    - ``hub.follow()`` picks up promotions made by other processes (``alt models promote``, a round job).
    """

    def __init__(self, settings, *, max_models: int = 3, max_bytes: int | None = None,
                 served: ModelServer | None = None, loader=None, **server_kw):
        self.db, self.settings = settings.db, settings
        self.cache = BackendCache(settings.device, max_models, max_bytes, loader)
        self._server_kw = server_kw
        self.served = served or ModelServer.from_settings(settings, cache=self.cache, **server_kw)
        if self.served.cache is None:
            self.served.cache = self.cache
        if self.served.backend is not None and self.served.path:
            with self.cache._lock:  # a ready backend given by the caller counts as loaded
                self.cache._models[self.served.path] = self.served.backend
                self.cache._sizes[self.served.path] = model_bytes(self.served.backend)
        self.cache.pin([self.served.path])
        self._others: dict[str, ModelServer] = {}
        self._lock = threading.Lock()

    def _version(self, version):
        from .db import ModelVersion, select, session_scope

        if hasattr(version, "path"):
            return version
        with session_scope(self.db) as s:
            row = s.get(ModelVersion, version) if isinstance(version, int) else s.exec(
                select(ModelVersion).where(ModelVersion.name == version)).first()
        if row is None:
            raise ValueError(f"no model version {version!r}")
        return row

    def for_version(self, version) -> ModelServer:
        """A server for ``version`` (name, id or row): the served one, or one loaded on request (LRU)."""
        row = self._version(version)
        if (row.name, row.path) == (self.served.version_name, self.served.path):
            return self.served
        with self._lock:
            server = self._others.get(row.path)
            if server is None:
                fmt = conditioning.format_of(row) if getattr(row, "conditioning", None) else None
                server = ModelServer(path=row.path, version_name=row.name, device=self.settings.device,
                                     cache=self.cache, fmt=fmt, **self._server_kw)
                server.max_prompt_tokens = self.served.max_prompt_tokens
                self._others[row.path] = server
            for path in [p for p in self._others if p not in self.cache and p != row.path]:
                self._others.pop(path).close(timeout=0)  # its model was evicted
        return server

    def promote(self, version_id: int):
        """Serve ``version_id``: load it, mark it served in the database, swap. Returns the version row."""
        from .db import session_scope
        from .versions import promote

        row = self._version(version_id)
        self.cache.get(row.path)  # load before anything changes: a failed load leaves serving as it was
        with session_scope(self.db) as s:
            row = promote(s, row.id)
        self.served.reload(row)
        return row

    def rollback(self):
        """Serve the parent of the served version (usually still loaded: instant)."""
        from .db import session_scope
        from .versions import rollback

        with session_scope(self.db) as s:
            row = rollback(s)
        self.served.reload(row)
        return row

    def sync(self) -> bool:
        return self.served.sync(self.db)

    def follow(self, every: float = 5.0) -> None:
        self.served.follow(self.db, every)

    def close(self) -> None:
        for server in [self.served, *self._others.values()]:
            server.close(timeout=5)


_hubs: dict[str, ModelHub] = {}
_hubs_lock = threading.Lock()


def _hub_key(db: str) -> str:
    return db if is_url(db) else str(Path(db).resolve())


def hub_for(settings, **kw) -> ModelHub:
    """The one ``ModelHub`` of this process for ``settings.db`` (created on first use)."""
    key = _hub_key(settings.db)
    with _hubs_lock:
        if key not in _hubs:
            _hubs[key] = ModelHub(settings, **kw)
        return _hubs[key]


def close_hub(db: str) -> None:
    """Stop this process's hub for ``db`` — its model servers and its promotion watcher — e.g. before the
    database is dropped (else the watcher keeps asking a database that is gone)."""
    with _hubs_lock:
        hub = _hubs.pop(_hub_key(db), None)
    if hub is not None:
        hub.close()
