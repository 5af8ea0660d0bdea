"""Repository-level pytest configuration: what this repository's suite shares.

Nothing plugin-generic lives here; the plugin is ``pytest_vram``.
"""

from __future__ import annotations

import pytest

#: what tells a pytest process it is an xdist worker: a sub-session is no worker of the outer run
XDIST_WORKER_VARIABLES = (
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose sub-sessions inherit nothing of the outer run's environment.

    Not ``CI`` (CI machines set ``CI=true``, which turns strict mode on in every
    sub-session, and the throw-away projects have no baselines: a test about strict mode
    sets it itself), not the outer xdist worker's variables, no random order
    (pytest-randomly would shuffle the sub-session's tests, whose order some tests set),
    and no warning that the plugin's package cannot be assertion-rewritten: the outer
    process imported it already, and an editable install's import finder loads it without
    pytest's rewriting hook where the checkout is not on ``sys.path`` (``pytest``, not
    ``python -m pytest``, in one process); that warning would stand in the sub-session's
    output.
    """
    monkeypatch.delenv("CI", raising=False)
    for name in XDIST_WORKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "PYTEST_ADDOPTS", "-p no:randomly -W ignore::pytest.PytestAssertRewriteWarning"
    )
    return pytester


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_gpu = [item for item in items if item.get_closest_marker("cuda") is not None]
    # Ask torch only when a GPU test was collected: importing it costs seconds.
    if not needs_gpu or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); run on a GPU machine")
    for item in needs_gpu:
        item.add_marker(skip)
