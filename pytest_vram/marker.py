"""The ``vram`` marker's name and help, :func:`carries`, and the claims' module attribute:
all a run needs to see that none of its tests is a vram test and no module declares a
claim (the options are :mod:`pytest_vram.marks`, the claims :mod:`pytest_vram.claiming`,
imported where one is)."""

from __future__ import annotations

import pytest

MARKER = "vram"

#: Module attribute that holds a module's claim declarations (``pytest_vram.claims``).
CLAIMS_ATTRIBUTE = "vram_claims"

#: What ``pytest --markers`` shows.
MARKER_HELP = (
    "vram(tolerance=None, budget=None, reserved_budget=None, key=None, world_size=None, "
    "skip_estimate=None): measure the GPU memory of this test with the `vram` fixture and "
    "gate it on its baseline. tolerance: allowed growth over the baseline ('0.5%', '4MiB', "
    "'0.5% + 4MiB'); budget: hard ceiling on the peak ('8GiB'), failing whatever the "
    "baseline says; reserved_budget: hard ceiling on the memory reserved from the device "
    "(fragmentation included); key: baseline key instead of the test's node id; "
    "world_size: number of ranks of the sharded (torch.distributed) run to measure one "
    "rank of; skip_estimate: a reason to skip the test on the estimate backend (a workload "
    "whose memory depends on tensor values)."
)


def carries(node: pytest.Item | pytest.Collector, parents: dict[int, bool]) -> bool:
    """Whether ``node`` or a parent carries the ``vram`` marker: what
    ``node.get_closest_marker("vram") is not None`` says, with the parents' answers kept in
    ``parents`` (by ``id``: a node's own hash is a Python call) for the next item of a loop,
    so that a thousand items of one module look at the module's markers once."""
    for mark in node.own_markers:
        if mark.name == MARKER:
            return True
    parent = node.parent
    if parent is None:
        return False
    known = parents.get(id(parent))
    if known is None:
        known = parents[id(parent)] = carries(parent, parents)
    return known
