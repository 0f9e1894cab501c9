"""The NUL policy, one for SQLite and PostgreSQL (PostgreSQL cannot store U+0000 in text; SQLite can).

* Model and provider output (generations, AI feedback, judge replies) is stored with each NUL replaced by
  U+FFFD; a generation records how many in ``sampling_params["nul_replaced"]`` (``db`` does it on insert).
* Anything else — user input (sign-in names, labels, API-key names, query parameters), imported files — is
  refused: ``NulError`` (a ``ValueError``), a 400 from the web app, an import error naming the line.
"""

from __future__ import annotations

from typing import Any

NUL = "\x00"
REPLACEMENT = "\ufffd"


class NulError(ValueError):
    """Text with a NUL character, which the studio refuses (``where`` names the field)."""

    def __init__(self, where: str):
        super().__init__(f"{where} contains a NUL character (\\x00), which cannot be stored; remove it")
        self.where = where


def replace_nul(text: str | None) -> tuple[str | None, int]:
    """(``text`` with every NUL replaced by U+FFFD, how many) — for model output."""
    if not text or NUL not in text:
        return text, 0
    return text.replace(NUL, REPLACEMENT), text.count(NUL)


def find_nul(value: Any, where: str = "value") -> str | None:
    """Where in ``value`` (text, or lists and dicts of them, keys included) a NUL is, else None."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if NUL in v:
                return at
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and NUL in k:
                    return f"{at} (a key)"
                stack.append((x, f"{at}.{k}"))
        elif isinstance(v, list | tuple):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def refuse_nul(value: Any, where: str = "text") -> None:
    """Raise ``NulError`` if ``value`` holds a NUL anywhere."""
    at = find_nul(value, where)
    if at is not None:
        raise NulError(at)
