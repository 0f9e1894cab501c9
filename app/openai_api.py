"""OpenAI-compatible ``/v1/chat/completions`` for the served model (filled in by the judge work)."""

from __future__ import annotations


def add_openai_routes(api, settings) -> None:
    """Mount the OpenAI-compatible routes on the FastAPI ``api``."""
