"""pytest-xdist support: who aggregates, and what workers send to the controller.

Measurements travel on the test reports (``report.user_properties``, see
:mod:`pytest_vram.core.records`), which xdist already forwards. What a worker knows only
about the whole session (every collected test, including deselected ones, and each test's
baseline key) travels in ``config.workeroutput``, which xdist hands to the controller when
the worker shuts down.
Only the controller (or the single process without xdist) reports and writes files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: ``config.workeroutput`` key of a worker's collection (``VramSession.collection``).
WORKEROUTPUT_KEY = "vram_collection"


def is_worker(config: pytest.Config) -> bool:
    """True inside an xdist worker process."""
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to xdist workers (it runs none itself)."""
    if is_worker(config):
        return False
    option = config.option
    workers = getattr(option, "numprocesses", None) or getattr(option, "tx", None)
    return bool(workers) and getattr(option, "dist", "no") != "no"


def send(config: pytest.Config, data: dict[str, Any]) -> None:
    """Hand ``data`` to the controller at the end of this worker's session."""
    config.workeroutput[WORKEROUTPUT_KEY] = data  # type: ignore[attr-defined]


class ControllerHooks:
    """Registered in every non-worker process; receives each worker's data as it goes down."""

    def __init__(self, receive: Callable[[dict[str, Any]], None]) -> None:
        self._receive = receive

    @pytest.hookimpl(optionalhook=True)  # the hook exists only where xdist is installed
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        data = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if data is not None:
            self._receive(data)
