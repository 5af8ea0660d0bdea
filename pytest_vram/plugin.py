"""pytest entry point of pytest-vram (registered under the ``pytest11`` entry point ``vram``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vram(**options): measure the GPU memory of this test and gate it on a baseline.",
    )
