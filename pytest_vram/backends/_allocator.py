"""A model of PyTorch's CUDA caching allocator, for one device and one stream.

``torch.cuda.memory_allocated`` counts *blocks*, not requested bytes, and which block a
request gets depends on what was allocated and freed before: a cached free block is reused
whole when splitting it would leave too small a remainder. To predict the counter to the
byte, the estimator replays every allocation and free through this model of
``c10/cuda/CUDACachingAllocator.cpp`` (default settings: no ``max_split_size_mb``, no
expandable segments, no garbage-collection threshold):

* a request of ``n`` bytes is rounded up to a multiple of 512 (``round_size``);
* requests of at most 1 MiB are served from the small pool, others from the large pool;
* a request first looks for the best-fitting cached free block of its pool (smallest size
  that fits, then lowest address);
* failing that, a new segment is "cudaMalloc-ed": 2 MiB for small requests, 20 MiB for
  large requests under 10 MiB, otherwise the request rounded up to 2 MiB
  (``get_allocation_size``);
* the chosen block is split when the remainder is at least 512 B (small pool) or more than
  1 MiB (large pool); otherwise the whole block is handed out and counted;
* a freed block merges with free neighbours of the same segment and goes back to its pool.

Segments are never released (the estimator has no memory limit, so the allocator's
free-and-retry path never runs); ``reset()`` is the ``empty_cache()`` at a test's start.

Pure Python and torch-free, so it can be tested and reasoned about on its own.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Version of this model; part of the estimator's context so baselines record it.
MODEL_VERSION = "1"

MIN_BLOCK_SIZE = 512  # kMinBlockSize: every block is a multiple of this
SMALL_SIZE = 1 << 20  # kSmallSize: largest request served from the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: segment size of the small pool
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segment size for large requests < MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: larger segments are rounded up to this
VA_CHUNK = 32 << 20  # the driver reserves fresh address ranges in multiples of this
VA_TOP = 1 << 47  # where the "driver" placement's address space starts (it grows down)
PLACEMENTS = ("increasing", "driver")


def round_size(size: int) -> int:
    """Bytes a request of ``size`` occupies at least: a positive multiple of 512."""
    if size < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    return -(-size // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE


def allocation_size(size: int) -> int:
    """Size of the segment the allocator reserves when no cached block fits ``size``."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class Block:
    """A contiguous range of one segment, free or allocated."""

    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: Block | None = field(default=None, repr=False)
    next: Block | None = field(default=None, repr=False)

    def key(self) -> tuple[int, int]:
        # The allocator's free lists are ordered by (size, address): best fit, then lowest.
        return (self.size, self.addr)


class CachingAllocatorModel:
    """Replays allocations and frees; ``allocated``/``peak`` are the allocator's counters."""

    def __init__(self, placement: str = "increasing") -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self.placement = placement
        self.reset()

    def reset(self) -> None:
        """Forget every block and segment: an empty pool, as after ``empty_cache()``."""
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._by_key: dict[tuple[int, int], Block] = {}
        self._next_addr = 0
        # "driver" placement: free virtual-address ranges [start, end) sorted by address,
        # and the lowest address reserved so far.
        self._holes: list[tuple[int, int]] = []
        self._va_low = VA_TOP
        self.allocated = 0
        self.peak = 0
        self.reserved = 0

    def reset_peak(self) -> None:
        """Restart peak tracking from the current allocation."""
        self.peak = self.allocated

    # -- allocation -----------------------------------------------------------------------
    def malloc(self, nbytes: int) -> Block | None:
        """Allocate ``nbytes``; returns the block to pass to :meth:`free` (None for 0 bytes)."""
        if nbytes <= 0:
            return None  # the CUDA allocator hands out no block for empty storages
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_free(size, small)
        if block is None:
            block = self._new_segment(size, small)
        remaining = block.size - size
        if (remaining >= MIN_BLOCK_SIZE) if small else (remaining > SMALL_SIZE):
            rest = Block(block.addr + size, remaining, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert_free(rest)
        block.allocated = True
        self.allocated += block.size
        if self.allocated > self.peak:
            self.peak = self.allocated
        return block

    def free(self, block: Block | None) -> None:
        """Return ``block`` to its pool, merging it with free neighbours."""
        if block is None:
            return
        if not block.allocated:
            raise RuntimeError("block freed twice")
        block.allocated = False
        self.allocated -= block.size
        nxt = block.next
        if nxt is not None and not nxt.allocated:
            self._remove_free(nxt)
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        prv = block.prev
        if prv is not None and not prv.allocated:
            self._remove_free(prv)
            prv.size += block.size
            prv.next = block.next
            if block.next is not None:
                block.next.prev = prv
            block = prv
        self._insert_free(block)

    # -- free lists -----------------------------------------------------------------------
    def _take_free(self, size: int, small: bool) -> Block | None:
        keys = self._free[small]
        i = bisect.bisect_left(keys, (size, -1))
        if i == len(keys):
            return None
        key = keys.pop(i)
        return self._by_key.pop(key)

    def _insert_free(self, block: Block) -> None:
        key = block.key()
        bisect.insort(self._free[block.small], key)
        self._by_key[key] = block

    def _remove_free(self, block: Block) -> None:
        key = block.key()
        keys = self._free[block.small]
        i = bisect.bisect_left(keys, key)
        del keys[i]
        del self._by_key[key]

    def _new_segment(self, size: int, small: bool) -> Block:
        seg = allocation_size(size)
        if self.placement == "driver":
            addr = self._driver_address(seg)
        else:
            # New segments get increasing addresses; only the order matters, to break ties
            # between equally sized free blocks.
            addr = self._next_addr
            self._next_addr += seg
        self.reserved += seg
        return Block(addr, seg, small)

    def _driver_address(self, seg: int) -> int:
        """Where the CUDA driver puts a new segment, as measured on an H200 (13.0 driver).

        The lowest free address range that fits takes the segment at its bottom; failing
        that, a fresh range of ``seg`` rounded up to 32 MiB is reserved directly below
        everything reserved so far (the address space grows downwards) and its unused top
        stays free for later, smaller segments. Segments are never released here, so free
        ranges never need merging. See docs/estimator.md ("Address order").
        """
        holes = self._holes
        for i, (start, end) in enumerate(holes):
            if end - start >= seg:
                if end - start == seg:
                    del holes[i]
                else:
                    holes[i] = (start + seg, end)
                return start
        reserve = -(-seg // VA_CHUNK) * VA_CHUNK
        self._va_low -= reserve
        if reserve > seg:
            # Below every existing range, so the list stays sorted by address.
            holes.insert(0, (self._va_low + seg, self._va_low + reserve))
        return self._va_low
