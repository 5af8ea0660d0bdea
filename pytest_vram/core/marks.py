"""The ``vram`` marker: its name and help, :func:`carries`, and its keyword options,
validated once into a frozen :class:`VramMark`.

Evaluation is a pure function of the test item, so a typo in a marker is reported at the
test's setup with the test's name, the option and the fix, before any workload runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import pytest

from pytest_vram.core.names import unstorable
from pytest_vram.core.units import Tolerance, UnitError, parse_size, parse_tolerance

MARKER = "vram"

#: Module attribute that holds a module's claim declarations (``pytest_vram.claims``).
CLAIMS_ATTRIBUTE = "vram_claims"

#: What ``pytest --markers`` shows.
MARKER_HELP = (
    "vram(tolerance=None, budget=None, reserved_budget=None, key=None, world_size=None, "
    "skip_estimate=None, card=None): measure the GPU memory of this test with the `vram` "
    "fixture and "
    "gate it on its baseline. tolerance: allowed growth over the baseline ('0.5%', '4MiB', "
    "'0.5% + 4MiB'); budget: hard ceiling on the peak ('8GiB'), failing whatever the "
    "baseline says; reserved_budget: hard ceiling on the memory reserved from the device "
    "(fragmentation included); key: baseline key instead of the test's node id; "
    "world_size: number of ranks of the sharded (torch.distributed) run to measure one "
    "rank of; skip_estimate: a reason to skip the test on the estimate backend (a workload "
    "whose memory depends on tensor values); card: the GPU the test runs on, a name "
    "('rtx3080-laptop', 'a100-40gb', ...) or a capacity ('8GiB'): an allocation it could not "
    "serve raises torch.OutOfMemoryError (the estimator enforces it, a larger GPU is capped "
    "to it)."
)

#: The largest world a marker may declare: beyond any cluster, and what the estimator's
#: fake process group and a device mesh over it still build in a fraction of a second
#: (torch's process groups take a C int; a mesh of 2**31 ranks exhausts the memory).
MAX_WORLD_SIZE = 2**20
OPTIONS = (
    "budget",
    "card",
    "key",
    "reserved_budget",
    "skip_estimate",
    "tolerance",
    "world_size",
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


class MarkError(Exception):
    """A ``vram`` marker with an unknown option or a value that does not parse."""


@dataclasses.dataclass(frozen=True)
class VramMark:
    """The evaluated options of a test's ``vram`` marker (all optional)."""

    tolerance: Tolerance | None = None
    budget: int | None = None
    key: str | None = None
    reserved_budget: int | None = None
    world_size: int | None = None
    skip_estimate: str | None = None
    #: the card the test runs on, as declared (``backends.cards`` checks it at setup)
    card: str | None = None

    def base_key(self, nodeid: str) -> str:
        """The baseline key of the test's (unnamed) measurement; it carries the world size."""
        key = self.key or nodeid
        return key if self.world_size is None else f"{key}@world_size={self.world_size}"


def evaluate(item: pytest.Item) -> VramMark | None:
    """The test's ``vram`` options, or None when the test carries no ``vram`` marker.

    Markers on the module, the class and the function merge; the closest one wins per
    option, so a module-wide ``tolerance`` can be tightened for one test.
    """
    marks = list(item.iter_markers(MARKER))
    if not marks:
        return None
    options: dict[str, Any] = {}
    for mark in reversed(marks):  # iter_markers yields the closest first
        if mark.args:
            raise MarkError(
                f"{item.nodeid}: @pytest.mark.vram takes keyword options only, got "
                f"positional {mark.args!r}; write e.g. @pytest.mark.vram(budget='8GiB')"
            )
        options.update(mark.kwargs)
    _check_stacked(item)
    return _parse(item.nodeid, options)


def _check_stacked(item: pytest.Item) -> None:
    # Two markers on the test itself that set one option differently: pytest would let the
    # lower decorator win without a word. (A module or class marker is meant to be
    # overridden by the test's own and is not checked here.)
    own = [m for m in getattr(item, "own_markers", ()) if m.name == MARKER]
    given: dict[str, Any] = {}
    for mark in own:
        for name, value in mark.kwargs.items():
            if name in given and not _same(given[name], value):
                raise MarkError(
                    f"{item.nodeid}: two @pytest.mark.vram markers set {name} differently "
                    f"({given[name]!r} and {value!r}); keep one marker with one {name}"
                )
            given[name] = value


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a value whose == raises is not the same as anything
        return False


def _parse(nodeid: str, options: dict[str, Any]) -> VramMark:
    for name in options:
        if name not in OPTIONS:
            raise MarkError(f"{nodeid}: @pytest.mark.vram: {_unknown(name)}")
    try:
        tolerance = _optional(options.get("tolerance"), parse_tolerance, "tolerance")
        budget = _optional(options.get("budget"), parse_size, "budget")
        reserved_budget = _optional(options.get("reserved_budget"), parse_size, "reserved_budget")
    except UnitError as exc:
        raise MarkError(f"{nodeid}: @pytest.mark.vram: {exc}") from exc
    key = options.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise MarkError(
            f"{nodeid}: @pytest.mark.vram(key=...): key must be a non-empty string, "
            f"got {key!r}; leave it out to use the test's node id"
        )
    why = None if key is None else unstorable(key)
    if why is not None:
        raise MarkError(
            f"{nodeid}: @pytest.mark.vram(key={key!r}): {why}; give a key of printable text "
            f"(letters, digits, '-', '_', '.', '/', ':')"
        )
    skip_estimate = options.get("skip_estimate")
    if skip_estimate is not None and (
        not isinstance(skip_estimate, str) or not skip_estimate.strip()
    ):
        raise MarkError(
            f"{nodeid}: @pytest.mark.vram(skip_estimate=...): give the reason as a non-empty "
            f"string, e.g. skip_estimate='boolean indexing', got {skip_estimate!r}"
        )
    card = options.get("card")
    if card is not None and (not isinstance(card, str) or not card.strip()):
        raise MarkError(
            f"{nodeid}: @pytest.mark.vram(card=...): give a card's name or a capacity as a "
            f"string, e.g. card='rtx3080-laptop' or card='8GiB', got {card!r}"
        )
    world_size = options.get("world_size")
    if world_size is not None and (
        isinstance(world_size, bool)
        or not isinstance(world_size, int)
        or not 1 <= world_size <= MAX_WORLD_SIZE
    ):
        shown = repr(world_size) if len(repr(world_size)) <= 40 else repr(world_size)[:37] + "..."
        raise MarkError(
            f"{nodeid}: @pytest.mark.vram(world_size=...): world_size must be a positive int "
            f"(the number of ranks) of at most {MAX_WORLD_SIZE} (2**20), got {shown}"
        )
    return VramMark(
        tolerance=tolerance,
        budget=budget,
        key=key,
        reserved_budget=reserved_budget,
        world_size=world_size,
        skip_estimate=skip_estimate,
        card=None if card is None else card.strip(),
    )


def _optional(value: Any, parse: Any, what: str) -> Any:
    # `what` is the option's name: UnitError messages start with it ("budget: ...").
    return None if value is None else parse(value, what=what)


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, OPTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {name!r}{hint}; valid options are {', '.join(OPTIONS)}"


def effective_tolerance(
    mark: VramMark | None,
    entry_tolerance: Tolerance | None,
    file_tolerance: Tolerance | None,
    default: Tolerance,
) -> Tolerance:
    """The tolerance that applies to one measurement: the most specific one given wins.

    marker ``tolerance=`` > baseline entry ``tolerance`` > baseline file ``tolerance`` >
    ``--vram-tolerance`` / ini ``vram_tolerance`` > 0 (``default`` carries the last two).
    """
    for tolerance in (mark.tolerance if mark else None, entry_tolerance, file_tolerance):
        if tolerance is not None:
            return tolerance
    return default
