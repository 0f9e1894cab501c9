"""SteerLM-style attributes: the category read as a linearised attribute string.

The task's mapping (``Task.conditioning["attributes"]``, edited with the task's conditioning format), e.g.
``{"Harmless and very helpful": "harmful:0,helpful:2"}``; without one each category becomes
``quality:N`` (N = K-1 for the best of K categories … 0 for the worst). The version's ``Format`` stores
the mapping, so every path conditions on the same strings. The loss is ALT's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import conditioning
from .config import AltTrainConfig


@dataclass
class SteerLMTrainConfig(AltTrainConfig):
    """SteerLM = ALT's loss (alpha, beta) on attribute strings.

        attribute: the attribute's name in the default mapping (``quality:N``).
    """

    objective: ClassVar[str] = "steerlm"

    attribute: str = field(default="quality", metadata={"help": "attribute name of the default mapping"})


def default_attributes(categories: list[str], name: str = "quality") -> dict[str, str]:
    """Best → ``name:K-1`` … worst → ``name:0``."""
    k = len(categories)
    return {c: f"{name}:{k - 1 - i}" for i, c in enumerate(categories)}


def attribute_string(fmt: conditioning.Format, category: str) -> str:
    """What the model reads for ``category`` (the mapping's string, or the category itself)."""
    return fmt.attributes.get(category, category)


def steerlm_format(task) -> conditioning.Format:
    fmt = conditioning.format_of(None, task)
    if not fmt.attributes:
        if not task.categories:
            raise ValueError(f"steerlm needs categories or an attribute mapping; task {task.name!r} has neither")
        fmt.attributes = default_attributes(task.categories)
    return fmt


def with_attributes(tokenizer, items, config, fmt: conditioning.Format) -> conditioning.Format:
    if not fmt.attributes:  # called without the task's format: rank the items' texts by score, else as seen
        seen = list(dict.fromkeys(it.feedback for it in sorted(items, key=lambda it: -(it.score or 0))))
        fmt = conditioning.Format(fmt.placement, fmt.template, fmt.separator, fmt.tokens,
                                  default_attributes(seen, config.attribute))
    return fmt


def _objective():
    from .objective import Objective

    return Objective("steerlm", SteerLMTrainConfig, "category as an attribute string (SteerLM)",
                     format=with_attributes, task_format=steerlm_format)


OBJECTIVE = _objective()
