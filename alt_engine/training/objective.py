"""What one training objective brings (``Objective``), with ALT's own hooks as the defaults.

A leaf of the training package: each objective's module (``quark.py``, ``cut.py``…) builds its ``OBJECTIVE``
from this, and ``objectives.py`` lists them; ``run.train`` looks an objective up and does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import conditioning
from ..pool import PoolItem, build_pool
from .collator import AltCollator
from .config import TrainConfig
from .examples import build_examples, check_items
from .trainer import AltTrainer

Items = list[PoolItem]


def _alt_collator(tokenizer, config) -> AltCollator:
    return AltCollator(tokenizer.pad_token_id, with_reference=getattr(config, "beta", 0) > 0)


def _alt_trainer_kwargs(config, load_reference: Callable[[], Any]) -> dict:
    """ALT's loss terms; a full-weights run with beta > 0 loads the frozen start model as the reference."""
    beta = config.beta or 0.0
    return {"alpha": config.alpha, "beta": beta,
            "ref_model": load_reference() if beta > 0 and not config.lora else None}


def _same_format(tokenizer, items: Items, config, fmt: conditioning.Format) -> conditioning.Format:
    return fmt


def _text_format(task) -> conditioning.Format:
    """The task's format with the feedback text as written: its SteerLM attribute mapping is ``steerlm``'s only."""
    fmt = conditioning.format_of(None, task)
    fmt.attributes = {}
    return fmt


def feedback_items(db: str, task, **pool_kw) -> Items:
    """The balanced pool of (prompt, feedback, response) triples (``pool.build_pool``)."""
    return build_pool(db, task.id, **pool_kw)


@dataclass(frozen=True)
class Objective:
    """What one training objective brings; ``run.train`` does the rest."""

    name: str
    config: type[TrainConfig]
    summary: str
    trainer: type = AltTrainer
    collator: Callable[[Any, TrainConfig], Callable] = _alt_collator  # (tokenizer, config) → collator
    trainer_kwargs: Callable[[TrainConfig, Callable[[], Any]], dict] = _alt_trainer_kwargs
    build_examples: Callable[[Any, Items, TrainConfig, conditioning.Format], list[dict]] = build_examples
    # (tokenizer, items, config, fmt) → the format this run trains with (e.g. new control tokens added)
    format: Callable[[Any, Items, TrainConfig, conditioning.Format], conditioning.Format] = _same_format
    # the task's format for this objective (stored on the version; sampling, playground, evaluation use it)
    task_format: Callable[[Any], conditioning.Format] = lambda task: _text_format(task)
    items: Callable[..., Items] = feedback_items  # (db, task, **pool options) → training items
    check_items: Callable[[Items], None] = check_items
    pool_policy: str = "flush"  # flush (ALT) | accumulate (Quark)
    extra: dict = field(default_factory=dict)
