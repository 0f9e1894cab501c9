"""Feedback providers. ``make_provider(spec, settings, task)`` builds one from a CLI-style spec.

Specs: ``rule:<name>[:<arg>]`` (see ``rule.py``), ``reward:<model path or hub id>`` or
``reward:<module>:<function>`` (see ``reward.py``; ``scorers.py`` ships
``reward:alt_engine.feedback.scorers:non_offensive``), ``llm:categorical``, ``llm:free_text``, ``llm:judgment``.
A provider's ``name`` is its provenance and keeps its arguments (``rule:concise:40,77,97,105``).
``label_generations`` runs a provider over stored generations and stores what it says.
"""

from __future__ import annotations

from .base import FeedbackItem, FeedbackResult, Provider
from .label import LabelReport, label_generations
from .store import effective_feedback, store_results

PROVIDER_KINDS = ("rule", "reward", "llm")


def make_provider(spec: str, settings, task, db: str | None = None) -> Provider:
    """The provider named by ``spec``; a bad spec raises ValueError naming the valid forms.

    ``db`` (default: ``settings.db``) is where ``rule:concise:auto`` finds the task's first round.
    """
    kind, _, arg = (spec or "").partition(":")
    if kind == "rule":
        from .rule import make_rule

        return make_rule(arg, task, db or getattr(settings, "db", None))
    if kind == "reward":
        from ..modeling import pick_device
        from .reward import make_reward

        per_prompt = getattr(settings, "reward_quantiles", "prompt") != "pool"
        return make_reward(arg, pick_device(getattr(settings, "device", "cpu")), per_prompt=per_prompt)
    if kind == "llm":
        if arg not in ("categorical", "free_text", "judgment"):
            raise ValueError(f"unknown llm mode {arg!r}: use llm:categorical, llm:free_text or llm:judgment")
        from .llm import make_llm_provider

        return make_llm_provider(arg, settings, task)
    raise ValueError(f"unknown feedback provider {spec!r}: use rule:<name> (concise, length, banned_words, keyword, "
                     "free_text:<attributes>, critique:<rule>), "
                     "reward:<model path | module:function>, llm:categorical, llm:free_text or llm:judgment")


__all__ = ["FeedbackItem", "FeedbackResult", "LabelReport", "PROVIDER_KINDS", "Provider", "effective_feedback",
           "label_generations", "make_provider", "store_results"]
