"""Repository-level pytest configuration: what this repository's suite shares.

Nothing plugin-generic lives here; the plugin is ``pytest_vram``.
"""

from __future__ import annotations

import pytest


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
