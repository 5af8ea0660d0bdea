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


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose sub-sessions do not inherit the outer run's ``CI`` or xdist worker.

    CI machines set ``CI=true``, which turns strict mode on in every sub-session; these
    tests' throw-away projects have no baselines, so each would fail as "missing". A test
    that is about strict mode sets ``CI`` itself.
    """
    monkeypatch.delenv("CI", raising=False)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # nor that it is a worker of an outer -n run
    return pytester
