"""What text a baseline key can hold: a test id, a ``key=`` and a ``vram.run`` name.

A key is written to the baseline file, the breakdowns store, the reports and one line of
the terminal table, and read back by the next run. A lone surrogate (what Python makes of
an undecodable byte in a file name, or ``"\\ud800"`` written out) cannot be encoded as UTF-8,
so no file can hold it; a control character (a line break, NEL, which YAML reads back as a
space, an escape sequence) breaks the line it is shown on or changes on the way back.
"""

from __future__ import annotations

import unicodedata


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be (part of) a baseline key, or None if it can."""
    for index, char in enumerate(text):
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            return (
                f"it holds a lone surrogate (U+{code:04X} at position {index}), which is not "
                f"Unicode text and cannot be written to a file"
            )
        if unicodedata.category(char) == "Cc":
            return (
                f"it holds the control character U+{code:04X} at position {index}, which a "
                f"baseline file, a report or the terminal table cannot show as it is"
            )
    return None
