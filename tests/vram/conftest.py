"""Fixtures of the memory suite; the shared definitions live in ``zoo_suite``."""

from __future__ import annotations

import pytest
from zoo_suite import ZooFigures

from pytest_vram.backends.base import Backend


@pytest.fixture(scope="session")
def zoo_figures(vram_backend: Backend) -> ZooFigures:
    """Per-process cache of the suite's measurements, shared by measuring and claim tests."""
    return ZooFigures(vram_backend)
