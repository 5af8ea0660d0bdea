"""Fixtures shared by the estimator's tests."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_vram.backends import create


@pytest.fixture(scope="module")
def backend() -> Any:
    """A warmed-up estimate backend, one per test module (as each module had its own)."""
    b = create("estimate")
    b.warmup()
    return b
