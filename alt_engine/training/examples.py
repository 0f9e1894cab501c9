"""Training examples from pool items: the refusal of data no conditioning can learn from, and the
collator-ready rows every text-conditioned objective trains on (``conditioning.build_training_example``)."""

from __future__ import annotations

from .. import conditioning
from ..pool import PoolItem
from .config import TrainConfig


def check_items(items: list[PoolItem]) -> None:
    """Refuse data ALT cannot learn from, before anything is created."""
    if not items:
        raise ValueError("no feedback yet: the data pool is empty (sample generations and give feedback first)")
    kinds = {item.category if item.category is not None else item.feedback for item in items}
    if len(kinds) < 2:
        raise ValueError(f"only one feedback category in the pool ({next(iter(kinds))!r}): conditioning cannot "
                         "learn a contrast; give feedback that tells better and worse generations apart")


def build_examples(tokenizer, items: list[PoolItem], config: TrainConfig,
                   fmt: conditioning.Format | None = None) -> list[dict]:
    """Collator-ready dicts; a long prompt loses its oldest tokens, the feedback segment stays whole."""
    rows = []
    for item in items:
        ex = conditioning.build_training_example(tokenizer, item.prompt, item.feedback, item.response,
                                                 item.truncated, fmt, config.max_response_tokens,
                                                 config.max_prompt_tokens)
        rows.append({"input_ids": ex.input_ids, "ref_input_ids": ex.ref_input_ids, "response_ids": ex.response_ids})
    return rows
