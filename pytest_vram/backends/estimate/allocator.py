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

Reserved memory (``reserved``/``peak_reserved``):

* ``"expandable"``: the rules of ``ExpandableSegment`` and of the allocator around it, one
  stream: each pool is one virtual segment mapped in pages (2 MiB in the small pool, 20
  MiB in the large one). A request takes the best-fitting mapped free block, where a free
  block followed by unmapped space counts as the size it can grow to (``get_free_block``:
  a block in the middle of the segment is preferred to the one at its mapped end); failing
  that, pages are mapped at the lowest unmapped range that, with the free block before it,
  fits (``find_expandable_block``, ``map_block``). :meth:`CachingAllocatorModel.empty_cache`
  unmaps every page no live block touches (``release_cached_blocks``, ``unmap_block``),
  which leaves unmapped holes that later requests fill first.
* ``"default"``: the sum of the segments ever reserved.

**A capacity** (``limit``: the bytes the model's pages may reach) makes a request fail as
on a card of that size, through the allocator's own path (``DeviceCachingAllocator::
malloc``): no cached block fits, mapping fails, every cached page is released
(:meth:`empty_cache`) and the mapping is tried once more (``num_alloc_retries``), then
:class:`DeviceOutOfMemory` (``num_ooms``). Two rules decide whether a mapping fails:

* ``"device"`` (a real card): a new page fails when the pages mapped would exceed the
  limit (the driver's ``cuMemCreate``, one page at a time; the pages of a failed call are
  given back);
* ``"fraction"`` (``torch.cuda.set_per_process_memory_fraction`` on a larger GPU): the
  request fails before mapping when the pages mapped plus ``allocation_size(request)``
  exceed the limit (``alloc_block``'s check, which adds the segment size a non-expandable
  allocator would take, not the pages the request needs).

A freed block merges with free neighbours of the same segment and goes back to its pool.
``reset()`` is an empty device. :meth:`stats` gives ``torch.cuda.memory_stats``'s nested
dictionary. Pure Python and torch-free.
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
LIMIT_RULES = ("device", "fraction")
#: virtual size of an expandable segment: larger than any card (only the order matters)
_ADDRESS_SPACE = 1 << 50

#: (segment index, segment size) -> address of a new default-mode segment
SegmentAddress = Callable[[int, int], int]

#: the statistics ``torch.cuda.memory_stats`` reports per pool ("all", "small_pool",
#: "large_pool"), each with current, peak, allocated (cumulative) and freed (cumulative)
POOL_STATS = (
    "allocation",
    "segment",
    "active",
    "inactive_split",
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
)


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


def format_size(size: int) -> str:
    """A size as the allocator's messages print it (``format_size`` in c10: two decimals)."""
    if size <= 1024:
        return f"{size} bytes"
    if size <= 1 << 20:
        return f"{size / 1024:.2f} KiB"
    if size <= 1 << 30:
        return f"{size / (1 << 20):.2f} MiB"
    return f"{size / (1 << 30):.2f} GiB"


class DeviceOutOfMemory(Exception):
    """A request the capacity cannot serve, after the allocator freed its cache and retried.

    ``size`` is the rounded request, ``alloc_size`` what torch's message says it tried to
    allocate (``allocation_size``), ``allocated`` and ``reserved`` the counters then.
    """

    def __init__(self, size: int, alloc_size: int, allocated: int, reserved: int) -> None:
        super().__init__(f"out of memory allocating {size} B")
        self.size = size
        self.alloc_size = alloc_size
        self.allocated = allocated
        self.reserved = reserved


@dataclass(eq=False)
class Block:
    """A contiguous range of one segment: free, allocated, or (expandable) not mapped."""

    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: Block | None = field(default=None, repr=False)
    next: Block | None = field(default=None, repr=False)
    mapped: bool = True
    #: the request's own size (``requested_bytes``)
    requested: int = 0

    def key(self) -> tuple[int, int]:
        # The allocator's free lists are ordered by (size, address): best fit, then lowest.
        return (self.size, self.addr)


class _Stat:
    """One statistic of ``memory_stats``: current, peak, and the cumulative sums."""

    __slots__ = ("allocated", "current", "freed", "peak")

    def __init__(self) -> None:
        self.current = self.peak = self.allocated = self.freed = 0

    def add(self, amount: int) -> None:
        self.current += amount
        self.allocated += amount
        if self.current > self.peak:
            self.peak = self.current

    def sub(self, amount: int) -> None:
        self.current -= amount
        self.freed += amount

    def as_dict(self) -> dict[str, int]:
        return {
            "current": self.current,
            "peak": self.peak,
            "allocated": self.allocated,
            "freed": self.freed,
        }


class CachingAllocatorModel:
    """Replays allocations and frees; ``allocated``/``peak`` are the allocator's counters.

    ``limit`` (bytes, None: unlimited) is the most the model's pages may reach, checked by
    ``limit_rule`` (:data:`LIMIT_RULES`); ``describe`` turns a :class:`DeviceOutOfMemory`
    into the error to raise (the estimator's: torch's ``OutOfMemoryError`` with torch's
    message), by default the :class:`DeviceOutOfMemory` itself.
    """

    def __init__(
        self,
        mode: str = "expandable",
        segment_address: SegmentAddress | None = None,
        *,
        limit: int | None = None,
        limit_rule: str = "device",
        describe: Callable[[DeviceOutOfMemory], BaseException] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if segment_address is not None and mode != "default":
            raise ValueError("segment_address only applies to mode 'default'")
        if limit_rule not in LIMIT_RULES:
            raise ValueError(f"limit_rule must be one of {LIMIT_RULES}, not {limit_rule!r}")
        self.mode = mode
        self.limit = limit
        self.limit_rule = limit_rule
        self._describe = describe
        self._segment_address = segment_address
        self.reset()

    def reset(self) -> None:
        """Forget every block and segment: an empty device."""
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._by_key: dict[tuple[int, int], Block] = {}
        self._segments = 0
        self._next_addr = 0
        # expandable mode: the unmapped blocks of each pool's segment, by address (none: the
        # pool has no segment)
        self._unmapped: dict[bool, list[int]] = {True: [], False: []}
        self._unmapped_at: dict[int, Block] = {}
        self._stats = {name: {True: _Stat(), False: _Stat(), None: _Stat()} for name in POOL_STATS}
        self.num_alloc_retries = 0
        self.num_ooms = 0
        self.num_device_alloc = 0
        self.num_device_free = 0
        self.num_sync_all_streams = 0
        self.allocated = 0
        self.peak = 0
        self.reserved = 0
        self.peak_reserved = 0

    def reset_peak(self) -> None:
        """Restart peak tracking (every statistic) from the current values."""
        self.peak = self.allocated
        self.peak_reserved = self.reserved
        for pools in self._stats.values():
            for stat in pools.values():
                stat.peak = stat.current

    # -- allocation -----------------------------------------------------------------------
    def malloc(self, nbytes: int) -> Block | None:
        """Allocate ``nbytes``; returns the block to pass to :meth:`free` (None for 0 bytes).

        Raises what ``describe`` makes of a :class:`DeviceOutOfMemory` when a capacity is set
        and the request cannot be served even after the cache was released.
        """
        if nbytes <= 0:
            return None  # the CUDA allocator hands out no block for empty storages
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_free(size, small)
        if block is None:
            block = self._new_block(size, small)
        if self._should_split(block, size):
            rest = Block(block.addr + size, block.size - size, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert_free(rest)
        block.allocated = True
        block.requested = nbytes
        self.allocated += block.size
        if self.allocated > self.peak:
            self.peak = self.allocated
        self._count(small, block.size, nbytes, 1)
        return block

    def _new_block(self, size: int, small: bool) -> Block:
        """``alloc_block``, then the cache released and a retry, then out of memory."""
        block = self._alloc_block(size, small)
        if block is None:
            self.empty_cache()
            self.num_alloc_retries += 1
            block = self._alloc_block(size, small)
        if block is None:
            self.num_ooms += 1
            error = DeviceOutOfMemory(size, allocation_size(size), self.allocated, self.reserved)
            raise self._describe(error) if self._describe is not None else error
        return block

    def _alloc_block(self, size: int, small: bool) -> Block | None:
        checked_first = self.limit_rule == "fraction" or self.mode == "default"
        if (
            self.limit is not None
            and checked_first
            and self.reserved + allocation_size(size) > self.limit
        ):
            return None
        if self.mode == "expandable":
            return self._map_for(size, small)
        return self._new_segment(size, small)

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
        self._count(block.small, -block.size, -block.requested, -1)
        nxt = block.next
        if nxt is not None and nxt.mapped and not nxt.allocated:
            self._remove_free(nxt)
            self._absorb_next(block)
        prv = block.prev
        if prv is not None and prv.mapped and not prv.allocated:
            self._remove_free(prv)
            self._absorb_next(prv)
            block = prv
        self._insert_free(block)

    def _count(self, small: bool, size: int, requested: int, count: int) -> None:
        stats = self._stats
        for pool in (small, None):
            if count > 0:
                stats["allocation"][pool].add(1)
                stats["allocated_bytes"][pool].add(size)
                stats["active"][pool].add(1)
                stats["active_bytes"][pool].add(size)
                stats["requested_bytes"][pool].add(requested)
            else:
                stats["allocation"][pool].sub(1)
                stats["allocated_bytes"][pool].sub(-size)
                stats["active"][pool].sub(1)
                stats["active_bytes"][pool].sub(-size)
                stats["requested_bytes"][pool].sub(-requested)

    @staticmethod
    def _absorb_next(block: Block) -> None:
        """Merge ``block.next`` (free, same mapping state) into ``block``."""
        nxt = block.next
        assert nxt is not None
        block.size += nxt.size
        block.next = nxt.next
        if nxt.next is not None:
            nxt.next.prev = block

    # -- free lists -----------------------------------------------------------------------
    def _take_free(self, size: int, small: bool) -> Block | None:
        """``get_free_block``: the smallest cached block that fits, lowest address first;
        with expandable segments a block followed by unmapped space counts as the size it
        can grow to, so a block inside the segment is preferred to the one at its end."""
        keys = self._free[small]
        i = bisect.bisect_left(keys, (size, -1))
        if i == len(keys):
            return None
        if self.mode == "expandable":
            by_key = self._by_key
            grows = _expandable_size(by_key[keys[i]])
            while i + 1 < len(keys):
                candidate = _expandable_size(by_key[keys[i + 1]])
                if candidate >= grows:
                    break
                i, grows = i + 1, candidate
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
    def _reserve(self, nbytes: int, small: bool) -> None:
        self.reserved += nbytes
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        for pool in (small, None):
            if nbytes >= 0:
                self._stats["reserved_bytes"][pool].add(nbytes)
            else:
                self._stats["reserved_bytes"][pool].sub(-nbytes)

    def _segment_of(self, small: bool) -> None:
        """The pool's expandable segment: created (all of it unmapped) on first use."""
        if not self._unmapped[small]:
            # each pool's segment in its own address range; a segment always ends unmapped
            self._add_unmapped(Block(_base(small), _ADDRESS_SPACE, small, mapped=False))

    def _map_for(self, size: int, small: bool) -> Block | None:
        """``try_allocate_expandable_block``: map pages for ``size`` at the lowest unmapped
        range that, with the free block just before it, fits; None if mapping fails."""
        self._segment_of(small)
        candidate = self._find_expandable_block(size, small)
        if not candidate.mapped:
            if not self._map_block(candidate, min(candidate.size, size)):
                return None
            candidate = self._merged_after_map(candidate)
        while candidate.size < size:
            following = candidate.next
            assert following is not None and not following.mapped
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = self._merged_after_map(following)
        self._remove_free(candidate)
        return candidate

    def _find_expandable_block(self, size: int, small: bool) -> Block:
        for addr in self._unmapped[small]:
            start = self._unmapped_at[addr]
            if start.prev is not None and start.prev.mapped and not start.prev.allocated:
                start = start.prev
            room, walk = 0, start
            while room < size and walk is not None and not walk.allocated:
                room += walk.size
                walk = walk.next
            if room >= size:
                return start
        raise AssertionError("an expandable segment ran out of address space")

    def _map_block(self, block: Block, size: int) -> bool:
        """``map_block``: map the pages covering ``size`` bytes at the start of ``block``."""
        page = page_size(block.small)
        mapped = -(-size // page) * page
        if (
            self.limit is not None
            and self.limit_rule == "device"
            and self.reserved + mapped > self.limit
        ):
            return False  # cuMemCreate fails; the pages of this call are given back
        self._remove_unmapped(block)
        if mapped < block.size:
            rest = Block(block.addr + mapped, block.size - mapped, block.small, mapped=False)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = mapped
            self._add_unmapped(rest)
        block.mapped = True
        self._reserve(mapped, block.small)
        self.num_device_alloc += 1
        self._insert_free(block)
        return True

    def _merged_after_map(self, block: Block) -> Block:
        """A newly mapped block merged with free mapped neighbours (``try_merge_blocks``)."""
        prv = block.prev
        if prv is not None and prv.mapped and not prv.allocated:
            self._remove_free(block)
            self._remove_free(prv)
            self._absorb_next(prv)
            self._insert_free(prv)
            block = prv
        nxt = block.next
        if nxt is not None and nxt.mapped and not nxt.allocated:
            self._remove_free(block)
            self._remove_free(nxt)
            self._absorb_next(block)
            self._insert_free(block)
        return block

    def _add_unmapped(self, block: Block) -> None:
        bisect.insort(self._unmapped[block.small], block.addr)
        self._unmapped_at[block.addr] = block

    def _remove_unmapped(self, block: Block) -> None:
        addrs = self._unmapped[block.small]
        del addrs[bisect.bisect_left(addrs, block.addr)]
        del self._unmapped_at[block.addr]

    def empty_cache(self) -> None:
        """``release_cached_blocks``: unmap every page that no live block touches (expandable);
        release every segment that holds no live block (default)."""
        self.num_sync_all_streams += 1
        for small in (True, False):
            blocks = [self._by_key[key] for key in self._free[small]]
            for block in blocks:
                if self.mode == "expandable":
                    self._unmap_block(block)
                elif block.prev is None and block.next is None:
                    self._remove_free(block)
                    self._reserve(-block.size, small)
                    self.num_device_free += 1
                    for pool in (small, None):
                        self._stats["segment"][pool].sub(1)
            unmapped = self._unmapped[small]
            whole = self._unmapped_at[unmapped[0]] if len(unmapped) == 1 else None
            if whole is not None and whole.prev is None and whole.next is None:
                self._remove_unmapped(whole)  # nothing mapped: the segment is released

    def _unmap_block(self, block: Block) -> None:
        """``unmap_block``: unmap the whole pages inside the free ``block``."""
        page = page_size(block.small)
        base = _base(block.small)
        begin = base + -(-(block.addr - base) // page) * page
        end = base + (block.addr + block.size - base) // page * page
        if begin >= end:
            return
        self._remove_free(block)
        if begin > block.addr:
            before = Block(block.addr, begin - block.addr, block.small, prev=block.prev)
            before.next = block
            if block.prev is not None:
                block.prev.next = before
            block.prev = before
            self._insert_free(before)
        after_size = block.addr + block.size - end
        if after_size > 0:
            after = Block(end, after_size, block.small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = after
            block.next = after
            self._insert_free(after)
        block.addr, block.size, block.mapped = begin, end - begin, False
        self._reserve(-(end - begin), block.small)
        self.num_device_free += 1
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.mapped:
                self._remove_unmapped(neighbour)
        if block.prev is not None and not block.prev.mapped:
            prv = block.prev
            self._absorb_next(prv)
            block = prv
        if block.next is not None and not block.next.mapped:
            self._absorb_next(block)
        self._add_unmapped(block)

    def _new_segment(self, size: int, small: bool) -> Block:
        """Default mode: a new segment at the address the layout gives it."""
        seg = allocation_size(size)
        if self._segment_address is not None:
            addr = self._segment_address(self._segments, seg)
        else:
            addr = self._next_addr
            self._next_addr += seg
        self._segments += 1
        self._reserve(seg, small)
        self.num_device_alloc += 1
        for pool in (small, None):
            self._stats["segment"][pool].add(1)
        return Block(addr, seg, small)

    # -- statistics -----------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        """``torch.cuda.memory_stats_as_nested_dict()`` of this model (one device)."""
        names = {None: "all", True: "small_pool", False: "large_pool"}
        out: dict[str, object] = {
            "num_alloc_retries": self.num_alloc_retries,
            "num_ooms": self.num_ooms,
            "max_split_size": -1,
            "num_sync_all_streams": self.num_sync_all_streams,
            "num_device_alloc": self.num_device_alloc,
            "num_device_free": self.num_device_free,
        }
        for name, pools in self._stats.items():
            out[name] = {names[pool]: stat.as_dict() for pool, stat in pools.items()}
        for name in ("oversize_allocations", "oversize_segments"):
            out[name] = _Stat().as_dict()
        return out


def _base(small: bool) -> int:
    return 0 if small else 1 << 62


def _expandable_size(block: Block) -> int:
    nxt = block.next
    return block.size + (nxt.size if nxt is not None and not nxt.mapped else 0)
