"""The cuda backend's reading of the user's allocator settings (no GPU needed)."""

from __future__ import annotations

import pytest

from pytest_vram.backends.cuda import conflicting_setting


@pytest.mark.parametrize(
    ("conf", "conflict"),
    [
        ({}, None),
        ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, None),
        ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, None),
        ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, "expandable_segments:False"),
        ({"PYTORCH_ALLOC_CONF": "gc:1, expandable_segments : false"}, "expandable_segments:false"),
        ({"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}, "cudaMallocAsync"),
    ],
)
def test_settings_that_rule_out_expandable_segments(conf, conflict):
    found = conflicting_setting(conf)
    if conflict is None:
        assert found is None
    else:
        assert found is not None and conflict in found and next(iter(conf)) in found
