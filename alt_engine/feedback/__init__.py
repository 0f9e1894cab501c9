"""Feedback providers. ``make_provider(spec, ...)`` builds one from a CLI-style spec.

Specs: ``rule:<name>``, ``reward:<model path or module:function>``,
``llm:categorical``, ``llm:free_text``.
"""

from __future__ import annotations

from .base import FeedbackItem, FeedbackResult, Provider
from .store import effective_feedback, store_results

__all__ = ["FeedbackItem", "FeedbackResult", "Provider", "effective_feedback", "store_results"]
