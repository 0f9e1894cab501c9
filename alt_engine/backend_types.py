"""What every sampling backend speaks: how to sample, what a sample is, the ``Backend`` protocol, progress.

Plain Python (no torch), so the backends (transformers, vLLM, an OpenAI-compatible server) and the sampling
stage share it without importing one another.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# progress(done, total) or progress(done, total, info): info has tokens, tokens_per_s, elapsed_s, eta_s
Progress = Callable[..., None]
OnStep = Callable[[list[tuple[int, int]], list[int]], None]  # (rows as (input, sample), one new token per row)


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` means greedy."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 160  # a small chat model's answers run long; the pool's truncation policy handles the rest
    seed: int = 0
    batch_size: int = 0  # sequences decoded together; 0: the backend's choice (measured: modeling.auto_batch_size)
    suppress_tokens: list[int] = field(default_factory=list)  # token ids never sampled (their logits masked)
    # Quark: mask every control token of the input's format (the conditioning token's siblings and itself) —
    # resolved to ``suppress_tokens`` where the format is known (``sample_prompts``, the playground)
    mask_control_tokens: bool = False
    # feedback guidance (docs/guidance.md): logits l(f) + γ·(l(f) − l(f⁻)) per step; 0 = plain sampling. Applies
    # to inputs conditioned on feedback; ``negative`` names f⁻: "worst" (the worst feedback; for the worst
    # itself, the best), "plain" (the prompt without feedback) or any feedback text — resolved by the caller
    guidance: float = 0.0
    negative: str = "worst"

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 0:
            raise ValueError("n and max_new_tokens must be >= 1, batch_size >= 0 (0 = automatic)")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError("need 0 < top_p <= 1 and temperature >= 0")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE}, got {self.guidance}")
        if not (self.negative or "").strip():
            raise ValueError("negative: 'worst', 'plain' or a feedback text")


MAX_GUIDANCE = 10.0  # beyond this the guided distribution is all on the few tokens the two inputs disagree most on


@dataclass
class Sample:
    token_ids: list[int]  # generated ids, EOS and padding removed
    text: str
    truncated: bool  # stopped at max_new_tokens without EOS
    prompt_tokens: int
    seed: int


class Backend(Protocol):
    """Anything that can sample: ``generate(inputs, params) -> samples[i][j]`` (input i, sample j)."""

    name: str
    tokenizer: object

    def generate(self, inputs: Sequence[list[int]], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[Sample]]: ...


def report(progress, done: int, total: int, info: dict) -> None:
    """Call ``progress(done, total, info)``, or ``progress(done, total)`` for a two-argument callback."""
    if progress is None:
        return
    try:
        params = inspect.signature(progress).parameters.values()
        takes_info = any(p.kind == p.VAR_POSITIONAL for p in params) or len(
            [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3
    except (TypeError, ValueError):  # a builtin without a signature
        takes_info = False
    progress(done, total, info) if takes_info else progress(done, total)


class Throughput:
    """Generated tokens/s and an ETA, for progress reports: ``info(done, total)`` → a dict."""

    def __init__(self):
        self.start, self.tokens = time.perf_counter(), 0

    def info(self, done: int, total: int) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.tokens / elapsed
        per_seq = self.tokens / done if done else None
        eta = (total - done) * per_seq / rate if per_seq and rate > 0 else None
        return {"tokens": self.tokens, "tokens_per_s": round(rate, 1), "elapsed_s": round(elapsed, 1),
                "eta_s": None if eta is None else round(eta, 1)}
