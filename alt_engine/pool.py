"""The data pool: which (prompt, feedback, response) triples a training round uses."""

from __future__ import annotations

from dataclasses import dataclass

from .conditioning import PromptLike


@dataclass
class PoolItem:
    """One training example's sources, with provenance ids."""

    generation_id: int
    feedback_id: int
    prompt_id: int
    prompt: PromptLike
    feedback: str  # the text the model is conditioned on (category text or free text)
    response: str
    truncated: bool
    category: str | None = None
    score: float | None = None
