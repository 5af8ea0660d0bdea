"""The user's allocator settings (``PYTORCH_CUDA_ALLOC_CONF``/``PYTORCH_ALLOC_CONF``): the
one check both built-in backends make when they are created (no GPU needed)."""

from __future__ import annotations

import pytest

from pytest_vram.backends import alloc_conf

CUDA, ANY = "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {CUDA: ""},
        {CUDA: "expandable_segments:True"},
        {CUDA: "max_split_size_mb:128"},
        {ANY: " expandable_segments : True , garbage_collection_threshold:0.6 "},
        {CUDA: "roundup_power2_divisions:[256:0,>:0],pinned_num_register_threads:8"},
        {CUDA: "backend:native,release_lock_on_cudamalloc:True"},
        {CUDA: "expandable_segments:True", ANY: "expandable_segments:True"},
        {CUDA: "max_split_size_mb:128,expandable_segments:True,max_split_size_mb:128"},
    ],
)
def test_settings_both_backends_accept(env: dict[str, str]) -> None:
    assert alloc_conf.problem("expandable", env) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # what rules out the gated figure: the message the GPU test checks
        ({CUDA: "expandable_segments:False"},
         "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False (expandable_segments:False) rules "
         "out expandable segments"),
        ({ANY: "backend:cudaMallocAsync"},
         "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync (backend:cudaMallocAsync has no "
         "caching-allocator figures) rules out expandable segments"),
        ({CUDA: "roundup_power2_divisions:4"},
         "(roundup_power2_divisions:4) rounds requests up beyond 512 B"),
        ({CUDA: "roundup_power2_divisions:[256:4,>:0]"}, "rounds requests up beyond 512 B"),
        # contradictions
        ({CUDA: "expandable_segments:True,expandable_segments:False"},
         "sets expandable_segments twice (True, then False) and torch keeps the last without a "
         "word; keep one"),
        ({CUDA: "expandable_segments:True", ANY: "max_split_size_mb:128"},
         "PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True' and "
         "PYTORCH_ALLOC_CONF='max_split_size_mb:128' disagree, and torch reads only one of them"),
        # what torch itself refuses
        ({CUDA: "expandable_segments:false"},
         "expandable_segments must be True or False (with a capital letter), got 'false' (torch "
         "refuses it at the first CUDA allocation)"),
        ({CUDA: "expandable_segments:0"}, "expandable_segments must be True or False"),
        ({CUDA: "garbage"}, "'garbage' is not a key:value setting"),
        ({CUDA: "gc:1"}, "unknown setting 'gc' (torch refuses it at the first CUDA allocation); "
                         "torch's allocator settings are max_split_size_mb, "),
        ({CUDA: "max_split_size_mb:12"}, "max_split_size_mb must be a whole number of at least 20"),
        ({CUDA: "max_split_size_mb:abc"}, "max_split_size_mb must be a whole number, got 'abc'"),
        ({CUDA: "garbage_collection_threshold:1.5"}, "a number between 0 and 1"),
        ({CUDA: "garbage_collection_threshold:nan"}, "a number between 0 and 1"),
        ({CUDA: "roundup_power2_divisions:3"}, "roundup_power2_divisions must be a power of 2"),
        ({CUDA: "roundup_power2_divisions:[256:4"}, "unbalanced brackets"),
        ({CUDA: "backend:magic"}, "backend must be native or cudaMallocAsync"),
        ({CUDA: "expandable_segments:"}, "is not a key:value setting"),
        ({CUDA: ":True"}, "is not a key:value setting"),
        ({CUDA: "pinned_num_register_threads:256"}, "a power of 2 of at most 128"),
    ],
)  # fmt: skip
def test_settings_both_backends_refuse(env: dict[str, str], message: str) -> None:
    found = alloc_conf.problem("expandable", env)
    assert found is not None and message in found
    assert "\n" not in found


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({CUDA: "expandable_segments:True"}, "contradicts --vram-allocator=default"),
        ({CUDA: "backend:cudaMallocAsync"}, "has no caching-allocator figures) cannot be measured"),
        ({CUDA: "max_split_size_mb:128"}, "changes which blocks the default settings split"),
    ],
)
def test_settings_that_change_the_default_settings_figures(env, message) -> None:
    found = alloc_conf.problem("default", env)
    assert found is not None and message in found
    assert alloc_conf.problem("default", {CUDA: "expandable_segments:False"}) is None
