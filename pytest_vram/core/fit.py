"""What fits a card: the answer of ``vram.largest`` (:class:`Largest`) and the bisection that
finds it (:func:`search`), pure data and logic without a backend.

A question is "the largest ``n`` among ``low, low + step, ..., high`` for which the workload
runs on the declared card without running out of memory". The search assumes that what
fits at ``n`` fits at every smaller ``n`` (memory grows with a batch or a sequence), so
the answer is the candidate that fits while the next one does not, or the last candidate,
or none (``value`` 0: not even ``low`` fits). Given the recorded answer (the baseline's), it
checks that one and the next first: two probes when nothing changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


class FitError(ValueError):
    """A question that cannot be asked: its range or its arguments are wrong."""


@dataclasses.dataclass(frozen=True)
class Candidates:
    """``low, low + step, ..., high`` (``high`` itself only where the steps reach it)."""

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FitError(f"{name} must be a positive int, got {value!r}")
        if self.high < self.low:
            raise FitError(f"high ({self.high}) must be at least low ({self.low})")

    def __len__(self) -> int:
        return (self.high - self.low) // self.step + 1

    def __getitem__(self, index: int) -> int:
        return self.low + index * self.step

    def index(self, value: int) -> int | None:
        """The index of ``value``, None where it is not a candidate."""
        offset = value - self.low
        if offset < 0 or offset % self.step or offset // self.step >= len(self):
            return None
        return offset // self.step


@dataclasses.dataclass(frozen=True)
class Probe:
    """One run of the workload at ``value``: whether it fitted, and the highest allocation it
    reached (bytes from the test's start; for one that ran out, where it failed)."""

    value: int
    fits: bool
    peak_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Largest:
    """The largest value of a question that runs on ``card``.

    ``value``: the answer, 0 where not even ``low`` fits; ``probes``: every run, in order;
    ``lost``: where the recorded answer no longer fits, that probe's value, peak and
    breakdown (what was live at the highest allocation it reached), which says what grew.
    """

    value: int
    low: int
    high: int
    step: int
    #: the card's key as declared (``"rtx3080-laptop"``, ``"8GiB"``)
    card: str
    probes: tuple[Probe, ...] = ()
    lost: dict[str, Any] | None = None

    @property
    def fits(self) -> bool:
        """Whether ``low`` fits at all."""
        return self.value > 0

    @property
    def whole_range(self) -> bool:
        """Whether the last candidate fits: the answer is the range's end, not the card's."""
        candidates = Candidates(self.low, self.high, self.step)
        return self.value > 0 and self.value == candidates[len(candidates) - 1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["probes"] = [p.to_dict() for p in self.probes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Largest:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["probes"] = tuple(Probe(**p) for p in values.get("probes", ()))
        return cls(**values)


def search(candidates: Candidates, fits: Callable[[int], bool], hint: int | None = None) -> int:
    """The largest candidate for which ``fits`` holds (0 where none does), by bisection.

    ``fits(value)`` runs the workload once; it is called at most once per value. ``hint``:
    the recorded answer (0: none fitted), checked first with its next candidate.
    """
    known: dict[int, bool] = {}

    def probe(index: int) -> bool:
        if index not in known:
            known[index] = bool(fits(candidates[index]))
        return known[index]

    last = len(candidates) - 1
    fitting, failing = -1, last + 1  # indices: fitting fits (or -1), failing does not
    start = None if hint is None else (-1 if hint == 0 else candidates.index(hint))
    if start is not None and start >= 0:
        if probe(start):
            fitting = start
            if start == last or not probe(start + 1):
                return candidates[start]
            fitting = start + 1
        else:
            failing = start
    if fitting < 0:
        if not probe(0):
            return 0
        fitting = 0
    if failing > last:
        if probe(last):
            return candidates[last]
        failing = last
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        if probe(middle):
            fitting = middle
        else:
            failing = middle
    return candidates[fitting]
