"""Fixtures for the plugin's pytester tests: sub-sessions on the scripted backend."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from vram_testing import HERE, QUIET, REPO, SCRIPTED, plugin_args


@pytest.fixture(scope="session")
def torch():
    """torch, imported once for the whole session (skips where it is not installed).

    A test must not import torch in its own body while it uses ``pytester``: pytester
    restores ``sys.modules`` to its snapshot at teardown, which drops torch, and torch's C
    extension cannot be imported a second time in one process (the next import fails with
    "SystemError: ... bad call flags"). A session fixture is set up before any function
    fixture, so torch is already in the snapshot.
    """
    return pytest.importorskip("torch")


@pytest.fixture
def vram_pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester (the repository's: see conftest.py) where the scripted backend is
    importable."""
    monkeypatch.delenv("VRAM_SCRIPTED_PROFILE", raising=False)
    monkeypatch.setenv("COLUMNS", "120")  # the width the VRAM table is laid out for
    pytester.syspathinsert(HERE)
    # Subprocess runs (isolation, xdist) import the plugin and the backend from here.
    paths = [str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return pytester


@pytest.fixture
def run_vram(vram_pytester: pytest.Pytester) -> Callable[..., pytest.RunResult]:
    """``run_vram(*args)``: an in-process sub-session on the scripted backend."""

    def run(*args: str, backend: str = SCRIPTED) -> pytest.RunResult:
        return vram_pytester.runpytest(*plugin_args(), backend, *QUIET, *args)

    return run


@pytest.fixture
def run_vram_subprocess(vram_pytester: pytest.Pytester) -> Callable[..., pytest.RunResult]:
    """Like ``run_vram`` in a fresh interpreter (for sys.modules checks and xdist)."""

    def run(*args: str, backend: str = SCRIPTED) -> pytest.RunResult:
        return vram_pytester.runpytest_subprocess(*plugin_args(), backend, *QUIET, *args)

    return run
