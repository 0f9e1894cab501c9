"""Text shown exactly as written: characters that would be invisible or would reorder what is shown are
displayed as marked escapes, e.g. ``RTL:\\u202eevil.exe\\u202c`` shows as ``RTL:⟦U+202E⟧evil.exe⟦U+202C⟧``,
not as "RTL:exe.live".

Marked: bidirectional controls (embeddings, overrides, isolates, marks), zero-width characters (spaces,
joiners, word joiner, BOM, soft hyphen), NUL and the other control characters but tab and newline. Used by the
annotation screen and the console's data views; what is stored is never changed.
"""

from __future__ import annotations

import re

_HIDDEN = re.compile("[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
                     "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")


def visible(text: str | None) -> str:
    """``text`` with every hidden or reordering character shown as ``⟦U+XXXX⟧``."""
    if not text:
        return text or ""
    return _HIDDEN.sub(lambda m: f"⟦U+{ord(m.group()):04X}⟧", text)


def visible_cells(value):
    """``visible`` for a table cell (text), anything else as it is."""
    return visible(value) if isinstance(value, str) else value
