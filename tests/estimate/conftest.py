"""Fixtures shared by the estimator's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_vram.backends import create


@pytest.fixture(scope="module")
def backend() -> Any:
    """A warmed-up estimate backend, one per test module (as each module had its own)."""
    b = create("estimate")
    b.warmup()
    return b


@pytest.fixture
def scope(backend: Any) -> Iterator[Any]:
    """The module's backend inside one test's scope (fake CUDA, counted), then left."""
    backend.begin_test()
    try:
        with backend.scope():
            yield backend
    finally:
        backend.end_test()
