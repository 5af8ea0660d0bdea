"""A card of a declared capacity: torch's OutOfMemoryError where the card would fail, through
the caching allocator's own out-of-memory path, into the user's code."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends.cards import CARDS  # noqa: E402
from pytest_vram.backends.estimate.allocator import (  # noqa: E402
    LARGE_BUFFER,
    CachingAllocatorModel,
    DeviceOutOfMemory,
)
from pytest_vram.backends.estimate.backend import EstimateBackend  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")


def _in_scope(backend: Any, work: Any) -> Any:
    backend.begin_test()
    try:
        with backend.scope():
            return work()
    finally:
        backend.end_test()


def _stats() -> tuple[int, int]:
    stats = torch.cuda.memory_stats()
    return stats["num_ooms"], stats["num_alloc_retries"]


@emulated
def test_an_allocation_just_under_the_limit_fits_and_just_over_fails() -> None:
    # 8 GiB is 409.6 large pages: 409 pages (8180 MiB) can be mapped, a 410th cannot
    backend = EstimateBackend(card="8GiB")
    fits = 409 * LARGE_BUFFER

    def work() -> tuple[int, str, tuple[int, int]]:
        held = torch.empty(fits, dtype=torch.uint8, device="cuda")
        reserved = torch.cuda.memory_reserved()
        del held
        with pytest.raises(torch.OutOfMemoryError) as info:
            torch.empty(fits + 1, dtype=torch.uint8, device="cuda")
        return reserved, str(info.value), _stats()

    reserved, message, (ooms, retries) = _in_scope(backend, work)
    assert reserved == fits
    assert ooms == 1 and retries == 1  # the cache was released and the mapping retried
    assert message.startswith("CUDA out of memory. Tried to allocate 7.99 GiB. GPU 0 has a ")
    assert "total capacity of 8.00 GiB" in message and "8 GiB card (declared)" in message
    assert "not measured" in message  # what the card holds besides PyTorch is unknown


@emulated
def test_the_usable_capacity_of_a_measured_card_leaves_out_context_and_workspaces() -> None:
    backend = EstimateBackend(card="h200")
    card = CARDS["h200"]
    pages = card.usable_bytes // LARGE_BUFFER

    def work() -> int:
        ok = torch.empty(pages * LARGE_BUFFER, dtype=torch.uint8, device="cuda")
        free = torch.cuda.mem_get_info()[0]
        with pytest.raises(torch.OutOfMemoryError, match="total capacity of 139.80 GiB"):
            torch.empty(LARGE_BUFFER, dtype=torch.uint8, device="cuda")
        del ok
        return free

    assert _in_scope(backend, work) == card.usable_bytes - pages * LARGE_BUFFER < LARGE_BUFFER


@emulated
def test_a_batch_size_back_off_runs_as_on_the_card() -> None:
    """The usual handler: halve the batch on OutOfMemoryError until a step fits."""
    backend = EstimateBackend(card="rtx3080-laptop")
    layer_bytes = 4096 * 4096 * 2

    def work() -> tuple[int, int, int]:
        model = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.float16)
        batch = 1 << 20
        while True:
            try:
                x = torch.empty(batch, 4096, device="cuda", dtype=torch.float16)
                model(x).sum().backward()
                break
            except torch.OutOfMemoryError:
                batch //= 2
                x = None
        return batch, torch.cuda.memory_stats()["num_ooms"], torch.cuda.memory_allocated()

    batch, ooms, allocated = _in_scope(backend, work)
    assert batch == 1 << 18 and ooms == 2
    # what one step of that batch holds: the input, the output and its gradient fit 8191 MiB
    assert 3 * batch * 4096 * 2 + layer_bytes < CARDS["rtx3080-laptop"].total_memory
    assert allocated >= layer_bytes


@emulated
def test_without_a_card_nothing_is_enforced(backend: Any) -> None:
    """The default backend answers as the H200 but lets any workload be estimated."""
    big = 200 * GiB

    def work() -> int:
        x = torch.empty(big, dtype=torch.uint8, device="cuda")
        return torch.cuda.memory_allocated() + 0 * x.numel()

    assert _in_scope(backend, work) == big
    assert backend.context()["card"] == (
        "NVIDIA H200, 150109880320 B (139.80 GiB), capacity not enforced"
    )


def test_the_card_is_in_the_context_when_enforced() -> None:
    context = EstimateBackend(card="a100-40gb").context()
    assert context["card"].startswith("NVIDIA A100-SXM4-40GB, 42298834944 B")
    assert "usable by a test 42298834944 B" in context["card"]


# -- the allocator model's out-of-memory path ------------------------------------------------


def test_the_device_rule_fails_at_the_page_that_does_not_fit() -> None:
    model = CachingAllocatorModel(limit=100 * MiB)
    blocks = [model.malloc(20 * MiB) for _ in range(5)]  # five 20 MiB pages: 100 MiB
    assert model.reserved == 100 * MiB
    with pytest.raises(DeviceOutOfMemory):
        model.malloc(2 * MiB)  # nothing free: a sixth page would be needed
    assert (model.num_ooms, model.num_alloc_retries) == (1, 1)
    model.free(blocks.pop())
    model.malloc(2 * MiB)  # fits the freed block: no page is mapped
    assert model.reserved == 100 * MiB


def test_releasing_the_cache_lets_the_retry_succeed() -> None:
    model = CachingAllocatorModel(limit=60 * MiB)
    a = model.malloc(20 * MiB)  # page 0
    b = model.malloc(20 * MiB)  # page 1
    model.free(a)  # page 0 stays mapped and cached, too small for what follows
    # 30 MiB needs two new pages after page 1: 80 MiB > 60 MiB. The allocator releases the
    # cache (page 0 is unmapped), and the retry maps the two pages: 60 MiB.
    c = model.malloc(30 * MiB)
    assert (model.num_alloc_retries, model.num_ooms) == (1, 0)
    assert model.reserved == 60 * MiB
    for block in (b, c):
        model.free(block)


def test_the_fraction_rule_checks_the_allocation_size_before_mapping() -> None:
    """``set_per_process_memory_fraction``: a request fails when what is mapped plus the
    segment the request would take exceeds the limit, even where the pages it needs fit."""
    device = CachingAllocatorModel(limit=40 * MiB)
    fraction = CachingAllocatorModel(limit=40 * MiB, limit_rule="fraction")
    for model in (device, fraction):
        model.malloc(15 * MiB)  # 20 MiB mapped, 5 MiB left at the end
    device.malloc(24 * MiB)  # 5 MiB + one page: 40 MiB mapped
    with pytest.raises(DeviceOutOfMemory):
        fraction.malloc(24 * MiB)  # 20 MiB + 24 MiB > 40 MiB


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="limit_rule"):
        CachingAllocatorModel(limit_rule="soft")
