"""A failure text as pytest's own failure representation, with its one-line message.

pytest shows a failure's message in the short test summary (``FAILED id - message``), in
``--tb=line`` and as JUnit XML's ``message`` attribute only where the report carries a
*crash location* (``longrepr.reprcrash``); a plain string longrepr gets no message before
pytest 9.0. An exception representation built from the text gives every supported pytest
the same lines, and pytest-xdist serialises it like any test failure.
"""

from __future__ import annotations

import pytest
from _pytest._code.code import (
    ExceptionChainRepr,
    ReprEntryNative,
    ReprFileLocation,
    ReprTracebackNative,
)


class Failure(ExceptionChainRepr):
    """A failure whose text pytest-vram wrote (it serialises as its base class)."""


def failure(item: pytest.Item, text: str) -> Failure:
    """``text`` as the failure of ``item``: printed as it is, its first line the message."""
    path, lineno, _ = item.location
    lines = [line + "\n" for line in text.splitlines()] or ["\n"]
    message = lines[0].rstrip("\n")
    crash = ReprFileLocation(path, (lineno or 0) + 1, message)
    return Failure([(ReprTracebackNative(lines), crash, None)])


def text_of(longrepr: object) -> str:
    """The text of a failure made by :func:`failure` (or any longrepr)."""
    if isinstance(longrepr, ExceptionChainRepr):
        entry = longrepr.reprtraceback.reprentries[0]
        if isinstance(entry, ReprEntryNative):
            return "".join(entry.lines).rstrip("\n")
    return str(longrepr)
