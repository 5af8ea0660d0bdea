"""Fixtures for the GPU tests: pytester sub-sessions measuring with ``--vram-backend=cuda``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def _plugin_args() -> list[str]:
    installed = any(ep.name == "vram" for ep in entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []  # autoloaded; naming it again would register it twice
    return ["-p", "vram" if installed else "pytest_vram.pytest_plugin.entry"]


@pytest.fixture
def plugin_args() -> list[str]:
    """Arguments that load the plugin in a pytester subprocess (pytester drops
    PYTEST_ADDOPTS): none where the entry point is installed."""
    return _plugin_args()


@pytest.fixture
def measure_cuda(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, dict[str, Any]]]:
    """``measure_cuda(*args)``: run a fresh pytest process on the GPU; JSON records by key.

    Each call is a new interpreter, so "first in the process" really is first: the
    warm-up and the CUDA context are created from scratch every time.
    """
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    runs = iter(range(1000))

    def run(*args: str, outcomes: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        out = pytester.path / f"vram-{next(runs)}.json"
        result = pytester.runpytest_subprocess(
            *_plugin_args(),
            "--vram-backend=cuda",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--vram-json={out}",
            *args,
        )
        run.last_result = result  # type: ignore[attr-defined]  # for output checks
        if outcomes is not None:
            result.assert_outcomes(**outcomes)
        document = json.loads(out.read_text())
        return {m["key"]: m for m in document["measurements"]}

    return run
