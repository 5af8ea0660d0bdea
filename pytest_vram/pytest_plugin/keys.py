"""The stash keys of pytest-vram: what the hook classes and fixtures keep on the config
and on each test item."""

from __future__ import annotations

import pytest

from pytest_vram.core.marks import MarkError, VramMark
from pytest_vram.core.records import Record
from pytest_vram.measure.vram import Vram
from pytest_vram.pytest_plugin.claim_judging import ClaimHooks
from pytest_vram.pytest_plugin.session import VramSession

# -- on the config

#: the run's state and work (:class:`~pytest_vram.pytest_plugin.session.VramSession`)
SESSION = pytest.StashKey[VramSession]()
#: the claims' hooks, which also hold the figures measured so far (``vram_figures``)
CLAIMS = pytest.StashKey[ClaimHooks]()

# -- on a test item

#: the test's evaluated ``vram`` marker (None: it carries none), or the error to report
MARK = pytest.StashKey[VramMark | MarkError | None]()
#: the ``vram`` fixture's object of a measured test
VRAM = pytest.StashKey[Vram]()
#: the judged records of a measured test's call
RECORDS = pytest.StashKey[list[Record]]()
#: every rank's (passed, figures) of a test in a launched world (``world.gather_figures``)
RANKS = pytest.StashKey[list[tuple[bool, list[tuple[int, int]]]]]()
