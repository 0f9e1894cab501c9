"""Quark: one control token per reward quantile, prepended instead of feedback text; the pool accumulates.

``control_tokens`` names one new token per category (best → worst: ``<|quantile_0|>`` …); ``add_control_tokens``
puts them into the tokenizer, and ``run.grow_embeddings`` gives each new embedding row a draw from the
per-dimension mean/std of the existing rows. The version's ``Format`` (placement ``tokens``) stores the
category → token mapping, so sampling, the playground and evaluation condition on the same tokens. The
loss is ALT's (``AltTrainer``: NLL + KL to the reference + entropy bonus), as in Quark's own code.
The pool accumulates across rounds, and the reward quantiles are taken over the whole pool each time it is
built (``requantize``; scored feedback such as the reward provider's, ``feedback/reward.py``); sampling may
mask the control tokens (``SamplingParams.mask_control_tokens``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from .. import conditioning
from ..feedback.reward import quantile_bins
from ..pool import PoolItem, build_pool
from ..vocab import Placement
from .config import AltTrainConfig

TOKEN = "<|quantile_{i}|>"


@dataclass
class QuarkTrainConfig(AltTrainConfig):
    """Quark = ALT's loss (alpha, beta: ``AltTrainConfig``) on control tokens.

        token_template: the control tokens' names, ``{i}`` = the quantile's rank (0 = best).
    """

    objective: ClassVar[str] = "quark"

    token_template: str = field(default=TOKEN, metadata={"help": "control token names ({i} = rank, 0 = best)"})


def control_tokens(categories: list[str], template: str = TOKEN) -> dict[str, str]:
    """Category (best → worst) → its control token."""
    return {c: template.replace("{i}", str(i)) for i, c in enumerate(categories)}


def add_control_tokens(tokenizer, tokens: dict[str, str]) -> int:
    """Add the control tokens the tokenizer lacks (as special tokens: never split, skipped when decoding)."""
    missing = [t for t in tokens.values() if t not in tokenizer.get_vocab()]
    return tokenizer.add_tokens(missing, special_tokens=True) if missing else 0


def quark_format(task) -> conditioning.Format:
    if not task.categories:
        raise ValueError(f"quark needs a task with categories (reward quantiles, e.g. the reward provider's "
                         f"pool mode); task {task.name!r} has none")
    return conditioning.Format("tokens", tokens=control_tokens(task.categories))


def with_tokens(tokenizer, items, config, fmt: conditioning.Format) -> conditioning.Format:
    """The tokens format named by ``config.token_template`` over ``fmt``'s categories (best → worst; from the
    items if ``fmt`` has none), tokens added to the tokenizer."""
    categories = list(fmt.tokens) if fmt.placement == Placement.TOKENS and fmt.tokens else \
        list(dict.fromkeys(it.feedback for it in items))
    fmt = conditioning.Format("tokens", tokens=control_tokens(categories, config.token_template))
    add_control_tokens(tokenizer, fmt.tokens)
    return fmt


def requantize(items: list[PoolItem], categories: list[str]) -> list[PoolItem]:
    """Quark re-quantizes its whole pool each round: when every item has a reward score and a category, each
    item's category (so its control token) becomes the quantile of its score over all of ``items`` (the
    accumulated pool), best first — not the bin it got among its own round's samples. Otherwise as given."""
    if len(categories) < 2 or not items or any(it.score is None or it.category is None for it in items):
        return items
    bins = quantile_bins([it.score for it in items], len(categories))
    return [dataclasses.replace(it, feedback=categories[b], category=categories[b]) for it, b in zip(items, bins)]


def quark_items(db: str, task, **pool_kw) -> list[PoolItem]:
    """The pool (accumulated over rounds by default) with its reward quantiles taken over the whole pool."""
    return requantize(build_pool(db, task.id, **pool_kw), list(task.categories))


def _objective():
    from .objective import Objective

    return Objective("quark", QuarkTrainConfig, "control token per reward quantile (Quark), pool accumulated",
                     format=with_tokens, task_format=quark_format, pool_policy="accumulate", items=quark_items)


OBJECTIVE = _objective()
