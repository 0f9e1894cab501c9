"""The model server's batching queue: queued chats, the worker that collects them into batches, and the
running batch that newcomers of its sampling group join between decoding steps (continuous batching).

``ChatBatcher`` is the worker half of ``ModelServer`` (a base class, so the batch code reads the server's
queue and counters as before); ``ReplyStream`` turns a request's tokens into text pieces for streaming.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from .. import conditioning
from ..sampling import SamplingParams, TransformersBackend
from ..vocab import Placement

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """A request whose input is longer than ``ModelServer.max_prompt_tokens``; it is refused, not run."""


@dataclass
class Usage:
    """What answering a chat cost, how it ended and which version answered."""

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
class QueuedChat:
    """A chat waiting for (or in) a batch: its input, sampling settings and the future its answer goes to."""

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


class ChatBatcher:
    """The worker side of ``ModelServer``: takes queued chats in arrival order, batches those that share a
    sampling group and runs them as one decoding batch that admits newcomers while it runs.

    The attributes below are set by ``ModelServer.__init__``; ``_current`` is the server's."""

    backend: TransformersBackend | None
    version_name: str
    max_batch: int
    batch_wait: float
    max_prompt_tokens: int | None
    batches: int
    answered: int
    _queue: queue.Queue[QueuedChat | None]
    _pending: list[QueuedChat]
    _joined: list[QueuedChat]
    _chat_waiting: bool
    _others_waiting: int

    def _current(self) -> tuple[TransformersBackend, str, conditioning.Format]:
        raise NotImplementedError

    def _check_length(self, ids) -> None:
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; this server takes at most "
                                f"{self.max_prompt_tokens}")

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

    def _generate(self, batch: list[QueuedChat]) -> None:
        """One running batch: ``batch``, then every request of the same sampling group that arrives while it
        decodes joins it at the next step (``admit``); each answer is sent as soon as its own row stops."""
        backend, version_name, fmt = self._current()  # a batch runs on one model, even if a reload happens meanwhile
        running: list[QueuedChat] = []  # input index → request
        inputs: list[list[int]] = []
        negatives: list[list[int] | None] = []  # guidance: the input under the negative feedback
        streams: list[ReplyStream | None] = []
        self._joined = running

        def prepare(r: QueuedChat) -> list[int] | None:
            """The request's input ids, or None when it was cancelled or cannot run (its future says why)."""
            if not r.future.set_running_or_notify_cancel():  # the caller gave up while it waited
                return None
            try:  # one malformed chat fails alone, not its batch
                ids = conditioning.build_input(backend.tokenizer, r.messages, r.feedback, fmt).input_ids
                self._check_length(ids)
                neg = None
                if r.guidance:
                    if fmt.for_tokenizer(backend.tokenizer).placement == Placement.NONE:
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
            streams.append(ReplyStream(r.on_text, r.max_new_tokens, backend) if r.on_text else None)
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
            keep: list[QueuedChat] = []
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


class ReplyStream:
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
