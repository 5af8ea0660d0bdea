"""The caching-allocator model against hand-computed block sizes (no torch needed)."""

from __future__ import annotations

import pytest

from pytest_vram.backends._allocator import (
    CachingAllocatorModel,
    allocation_size,
    round_size,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    ("request_bytes", "block"),
    [(1, 512), (512, 512), (513, 1024), (MiB, MiB), (MiB + 1, MiB + 512)],
)
def test_round_size(request_bytes: int, block: int) -> None:
    assert round_size(request_bytes) == block


@pytest.mark.parametrize(
    ("size", "segment"),
    [
        (512, 2 * MiB),
        (MiB, 2 * MiB),
        (MiB + 512, 20 * MiB),
        (10 * MiB, 10 * MiB),
        (11 * MiB + 1, 12 * MiB),
    ],
)
def test_segment_sizes(size: int, segment: int) -> None:
    assert allocation_size(size) == segment


def test_one_byte_counts_512() -> None:
    alloc = CachingAllocatorModel()
    block = alloc.malloc(1)
    assert alloc.allocated == 512
    alloc.free(block)
    assert alloc.allocated == 0
    assert alloc.peak == 512


def test_empty_storage_allocates_nothing() -> None:
    alloc = CachingAllocatorModel()
    assert alloc.malloc(0) is None
    assert alloc.allocated == 0


def test_large_block_split_only_above_one_mib() -> None:
    alloc = CachingAllocatorModel()
    # 11 MiB + 1 B -> a 12 MiB segment; the rest (1 MiB - 512 B) is not > 1 MiB: no split,
    # the whole segment is allocated and counted.
    alloc.malloc(11 * MiB + 1)
    assert alloc.allocated == 12 * MiB
    # 2 MiB from a fresh 20 MiB segment: 18 MiB remain, so it is split.
    alloc2 = CachingAllocatorModel()
    alloc2.malloc(2 * MiB)
    assert alloc2.allocated == 2 * MiB


def test_small_pool_splits_down_to_512() -> None:
    alloc = CachingAllocatorModel()
    a = alloc.malloc(MiB)  # small pool: a 2 MiB segment
    b = alloc.malloc(MiB - 512)  # leaves exactly 512 B: still split (small-pool rule)
    assert alloc.allocated == 2 * MiB - 512
    c = alloc.malloc(1)  # served from the 512 B remainder, no new segment
    assert alloc.reserved == 2 * MiB
    for block in (a, b, c):
        alloc.free(block)
    assert alloc.allocated == 0


def test_history_changes_counted_bytes() -> None:
    """A cached block whose remainder is too small to split is counted whole."""
    alloc = CachingAllocatorModel()
    big = alloc.malloc(12 * MiB)  # 12 MiB segment, used exactly
    alloc.free(big)
    again = alloc.malloc(11 * MiB + 512)  # fits the cached 12 MiB block; rest < 1 MiB
    assert alloc.allocated == 12 * MiB
    alloc.free(again)


def test_free_blocks_coalesce() -> None:
    alloc = CachingAllocatorModel()
    a = alloc.malloc(4 * MiB)
    b = alloc.malloc(4 * MiB)  # both from one 20 MiB segment
    assert alloc.reserved == 20 * MiB
    alloc.free(a)
    alloc.free(b)
    c = alloc.malloc(19 * MiB)  # needs the merged block: no new segment
    assert alloc.reserved == 20 * MiB
    assert alloc.allocated == 20 * MiB  # 1 MiB remainder is not > 1 MiB: counted whole
    alloc.free(c)


def test_reset_empties_the_pool() -> None:
    alloc = CachingAllocatorModel()
    alloc.free(alloc.malloc(12 * MiB))
    alloc.reset()
    alloc.malloc(11 * MiB + 512)
    assert alloc.allocated == 12 * MiB  # a new segment again, not the cached block
    assert alloc.reserved == 12 * MiB


def test_increasing_placement_is_the_default() -> None:
    model = CachingAllocatorModel()
    a, b = model.malloc(30 << 20), model.malloc(30 << 20)
    assert model.placement == "increasing"
    assert a is not None and b is not None and a.addr < b.addr


def test_driver_placement_grows_down_in_32_mib_ranges() -> None:
    """Fresh ranges are reserved below the previous ones, rounded up to 32 MiB."""
    model = CachingAllocatorModel("driver")
    a = model.malloc(54 << 20)  # 54 MiB segment in a 64 MiB range
    b = model.malloc(18 << 20)  # 18 MiB segment in a 32 MiB range, below
    assert a is not None and b is not None
    assert a.addr % (32 << 20) == 0 and b.addr % (32 << 20) == 0
    assert b.addr == a.addr - (32 << 20)


def test_driver_placement_fills_the_lowest_free_range_first() -> None:
    """A segment that fits into a range's unused top goes to the lowest such range."""
    model = CachingAllocatorModel("driver")
    twenty = model.malloc(20 << 20)  # 32 MiB range, 12 MiB free on top
    eighteen = model.malloc(18 << 20)  # 32 MiB range below it, 14 MiB free on top
    assert twenty is not None and eighteen is not None
    small = model.malloc(4096)  # 2 MiB small-pool segment: into the lower free top
    assert small is not None and small.addr == eighteen.addr + (18 << 20)
    twelve = model.malloc(11 << 20)  # a 12 MiB segment: still fits there, lowest first
    assert twelve is not None and twelve.addr == eighteen.addr + (20 << 20)
    other = model.malloc(11 << 20)  # then the 12 MiB left above the 20 MiB segment
    assert other is not None and other.addr == twenty.addr + (20 << 20)
    # Nothing free fits 20 MiB: a fresh range below everything.
    fresh = model.malloc(20 << 20)
    assert fresh is not None and fresh.addr == eighteen.addr - (32 << 20)


def test_driver_placement_decides_best_fit_ties() -> None:
    """Equal free blocks: best fit takes the lowest address, i.e. the newer segment."""
    for placement, newer_wins in (("increasing", False), ("driver", True)):
        model = CachingAllocatorModel(placement)
        first = model.malloc(9 << 20)
        second = model.malloc(20 << 20)  # no free block fits: a second segment
        assert first is not None and second is not None
        model.free(first)
        model.free(second)
        again = model.malloc(9 << 20)
        assert again is not None
        assert again.addr == (second.addr if newer_wins else first.addr)


def test_unknown_placement_is_refused() -> None:
    with pytest.raises(ValueError, match="placement"):
        CachingAllocatorModel("random")
