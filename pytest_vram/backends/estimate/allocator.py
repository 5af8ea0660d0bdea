"""A model of PyTorch's CUDA caching allocator, for one device and one stream.

The figure pytest-vram gates on is ``torch.cuda.max_memory_allocated`` measured with the
allocator's ``expandable_segments`` setting on (see docs/architecture.md, "The gated
figure"). With it, ``should_split`` in ``c10/cuda/CUDACachingAllocator.cpp`` splits every
block whenever at least 512 B would remain, in both pools, so a request of ``n`` bytes is
always counted as exactly ``round_size(n)`` (a positive multiple of 512) and the allocated
counter is the sum of ``round_size`` over the live requests: a function of the request
sequence alone. That is the ``"expandable"`` mode here, and all the estimator needs for
``allocated``/``peak``.

The ``"default"`` mode keeps the rules of the allocator's default settings, where the
counted bytes depend on which cached block a request gets (and so on segment addresses,
which come from the driver and from the process's history):

* requests of at most 1 MiB are served from the small pool, others from the large pool;
* a request takes the best-fitting cached free block of its pool (smallest size that fits,
  then lowest address);
* failing that, a new segment is "cudaMalloc-ed": 2 MiB for small requests, 20 MiB for
  large requests under 10 MiB, otherwise the request rounded up to 2 MiB
  (``get_allocation_size``); its address comes from ``segment_address`` (by default
  increasing), the part of the history this model cannot know;
* the chosen block is split when the remainder is at least 512 B (small pool) or more than
  1 MiB (large pool); otherwise the whole block is handed out and counted.

It is kept to show (tests/estimate/test_allocator.py) that the default figure changes with
the address layout while the expandable one does not, and for ``--vram-allocator=default``.

Reserved memory (``reserved``/``peak_reserved``, informational):

* ``"expandable"``: each pool is one virtual segment whose physical pages are mapped on
  demand, 2 MiB pages in the small pool and 20 MiB in the large one; a request that no free
  mapped block fits extends the segment at its end (merging with a free block there), by
  whole pages. Nothing is unmapped within a test (only ``empty_cache`` does that).
* ``"default"``: the sum of the segments ever reserved (no memory limit, so the allocator's
  free-and-retry path never runs).

A freed block merges with free neighbours of the same segment and goes back to its pool.
``reset()`` is the ``empty_cache()`` at a test's start. Pure Python and torch-free.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

#: Version of this model; part of the estimator's context so baselines record it.
MODEL_VERSION = "2"

MIN_BLOCK_SIZE = 512  # kMinBlockSize: every block is a multiple of this
SMALL_SIZE = 1 << 20  # kSmallSize: largest request served from the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: segment size (expandable: page size) of the small pool
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segment size for large requests < MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: larger segments are rounded up to this
MODES = ("expandable", "default")

#: (segment index, segment size) -> address of a new default-mode segment
SegmentAddress = Callable[[int, int], int]


def round_size(size: int) -> int:
    """Bytes a request of ``size`` occupies at least: a positive multiple of 512."""
    if size < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    return -(-size // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE


def allocation_size(size: int) -> int:
    """Size of the segment the default allocator reserves when no cached block fits."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


def page_size(small: bool) -> int:
    """Mapping granularity of an expandable segment of the small or the large pool."""
    return SMALL_BUFFER if small else LARGE_BUFFER


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

    def __init__(
        self, mode: str = "expandable", segment_address: SegmentAddress | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if segment_address is not None and mode != "default":
            raise ValueError("segment_address only applies to mode 'default'")
        self.mode = mode
        self._segment_address = segment_address
        self.reset()

    def reset(self) -> None:
        """Forget every block and segment: an empty pool, as after ``empty_cache()``."""
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._by_key: dict[tuple[int, int], Block] = {}
        self._segments = 0
        self._next_addr = 0
        # expandable mode: the block at the mapped end of each pool's segment, and that end
        self._tail: dict[bool, Block | None] = {True: None, False: None}
        self._mapped: dict[bool, int] = {True: 0, False: 0}
        self.allocated = 0
        self.peak = 0
        self.reserved = 0
        self.peak_reserved = 0

    def reset_peak(self) -> None:
        """Restart peak tracking (allocated and reserved) from the current values."""
        self.peak = self.allocated
        self.peak_reserved = self.reserved

    # -- allocation -----------------------------------------------------------------------
    def malloc(self, nbytes: int) -> Block | None:
        """Allocate ``nbytes``; returns the block to pass to :meth:`free` (None for 0 bytes)."""
        if nbytes <= 0:
            return None  # the CUDA allocator hands out no block for empty storages
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_free(size, small)
        if block is None:
            expandable = self.mode == "expandable"
            block = self._grow(size, small) if expandable else self._new_segment(size, small)
        if self._should_split(block, size):
            rest = Block(block.addr + size, block.size - size, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            elif self._tail[small] is block:
                self._tail[small] = rest
            block.next = rest
            block.size = size
            self._insert_free(rest)
        block.allocated = True
        self.allocated += block.size
        self.peak = max(self.peak, self.allocated)
        return block

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.mode == "expandable":
            return remaining >= MIN_BLOCK_SIZE
        return remaining > SMALL_SIZE

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
            self._absorb_next(block)
        prv = block.prev
        if prv is not None and not prv.allocated:
            self._remove_free(prv)
            self._absorb_next(prv)
            block = prv
        self._insert_free(block)

    def _absorb_next(self, block: Block) -> None:
        """Merge ``block.next`` (free) into ``block``."""
        nxt = block.next
        assert nxt is not None
        block.size += nxt.size
        block.next = nxt.next
        if nxt.next is not None:
            nxt.next.prev = block
        if self._tail[block.small] is nxt:
            self._tail[block.small] = block

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
        del keys[bisect.bisect_left(keys, key)]
        del self._by_key[key]

    # -- reserving memory -----------------------------------------------------------------
    def _reserve(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _grow(self, size: int, small: bool) -> Block:
        """Expandable mode: map whole pages at the end of the pool's segment for ``size``."""
        tail = self._tail[small]
        have = tail.size if tail is not None and not tail.allocated else 0
        page = page_size(small)
        grow = -(-(size - have) // page) * page
        self._reserve(grow)
        if have:
            assert tail is not None
            self._remove_free(tail)
            tail.size += grow
            self._mapped[small] += grow
            return tail
        # Each pool's segment lives in its own address range: only the order matters.
        base = 0 if small else 1 << 62
        block = Block(base + self._mapped[small], grow, small, prev=tail)
        if tail is not None:
            tail.next = block
        self._tail[small] = block
        self._mapped[small] += grow
        return block

    def _new_segment(self, size: int, small: bool) -> Block:
        """Default mode: a new segment at the address the layout gives it."""
        seg = allocation_size(size)
        if self._segment_address is not None:
            addr = self._segment_address(self._segments, seg)
        else:
            addr = self._next_addr
            self._next_addr += seg
        self._segments += 1
        self._reserve(seg)
        return Block(addr, seg, small)
