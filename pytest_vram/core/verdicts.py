"""Verdicts: measurement + baseline + policy -> what happened and whether a test fails.

Pure functions over plain figures, no pytest: the decision stays separate from pytest
plumbing, and every rule is testable with a table. A :class:`Verdict` is structured data
(its kind, whether it fails, the figures it is about); :mod:`pytest_vram.render.verdicts`
turns it into words.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any

from pytest_vram.core.figures import MemoryFigures
from pytest_vram.core.units import Tolerance


class Kind(enum.Enum):
    """What happened to one measurement, judged against its baseline and budget."""

    PASS = "pass"
    NEW = "new"
    MISSING = "missing"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    OVER_BUDGET = "over budget"
    UPDATED = "updated"
    #: the figures counted none of the test's device memory (see :class:`OffDevice`)
    NOT_ON_DEVICE = "not on device"


#: Most severe first; :func:`worst` picks by this order.
SEVERITY: tuple[Kind, ...] = (
    Kind.NOT_ON_DEVICE,
    Kind.OVER_BUDGET,
    Kind.REGRESSION,
    Kind.MISSING,
    Kind.IMPROVEMENT,
    Kind.NEW,
    Kind.UPDATED,
    Kind.PASS,
)

#: Compared fields, headline first. The peak is what runs out of memory; the model figure
#: is compared too because a model growing inside an unchanged peak is still news.
COMPARED = ("peak_bytes", "model_bytes")
#: The field a ``reserved_budget`` limits.
RESERVED = "reserved_bytes"
#: The answer of ``vram.largest``: the largest value that fits the card, gated like a figure.
LARGEST = "largest"


@dataclasses.dataclass(frozen=True)
class Cause:
    """A likely reason, found in the test's code, why its tensors are not on the device.

    ``kind``: ``import-time device`` (a module-level device variable holding another
    device, in a module that calls ``torch.cuda.is_available()``), ``device variable``
    (such a variable without that call), ``device argument`` (a step was given another
    device), ``is_available in fixture`` (a wider-scoped fixture, which may have been set
    up outside any vram test, chooses its device with ``torch.cuda.is_available()``).
    ``name``: the variable, the step or the fixture; ``value``: the device it holds;
    ``where``: ``file:line``.
    """

    kind: str
    name: str
    value: str = ""
    where: str = ""

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class OffDevice:
    """Figures that cannot be the test's device memory: a build step whose result holds
    parameters or tensors on another device (the CPU) and that counted no bytes on the
    measured device (``step`` is a ``vram.build``), or a workload that counted nothing on
    the device while nothing it used lives there (``step`` is the ``vram.run``).

    A workload that allocates nothing while its model is on the device (in-place work)
    is none of these: its figures are right.
    """

    #: ``vram.build(make_model)`` or ``vram.run(step)``
    step: str
    #: the device the backend measures, e.g. ``cuda:0``
    device: str
    #: the measuring backend's name (the estimator has its own likely causes)
    backend: str
    #: parameters (elements) found on another device
    params: int = 0
    #: other tensors (buffers, inputs, outputs) found on another device
    tensors: int = 0
    #: the device types they are on, e.g. ``("cpu",)``
    elsewhere: tuple[str, ...] = ()
    causes: tuple[Cause, ...] = ()

    @property
    def in_build(self) -> bool:
        return self.step.startswith("vram.build")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["elsewhere"] = list(self.elsewhere)
        data["causes"] = [c.to_dict() for c in self.causes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OffDevice:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["elsewhere"] = tuple(values.get("elsewhere", ()))
        values["causes"] = tuple(Cause(**c) for c in values.get("causes", ()))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judgement about one measurement.

    ``fields`` are the figures it is about, headline first: the ones that crossed the
    tolerance (REGRESSION, IMPROVEMENT), the one over its ceiling (OVER_BUDGET:
    ``peak_bytes`` against the budget, ``reserved_bytes`` against the reserved budget), both
    compared figures otherwise. ``updating``: judged while the baseline is rewritten, so
    NEW is recorded and PASS needs no rewrite.
    """

    kind: Kind
    fails: bool
    fields: tuple[str, ...] = COMPARED
    updating: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "fails": self.fails,
            "fields": list(self.fields),
            "updating": self.updating,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            Kind(data["kind"]),
            bool(data["fails"]),
            tuple(data.get("fields", COMPARED)),
            bool(data.get("updating", False)),
        )


def judge(
    measured: MemoryFigures,
    baseline: MemoryFigures | None,
    *,
    tolerance: Tolerance,
    budget: int | None = None,
    reserved: int | None = None,
    reserved_budget: int | None = None,
    strict: bool = False,
    update: bool = False,
    fail_improvements: bool = False,
    off_device: OffDevice | None = None,
    largest: tuple[int, str] | None = None,
    baseline_largest: tuple[int | None, str | None] = (None, None),
) -> list[Verdict]:
    """Judge one measurement; return every applicable verdict, or a single PASS.

    * ``off_device``: the figures counted none of the test's device memory: NOT_ON_DEVICE,
      alone, which fails also while updating (such a figure is never recorded).

    * ``budget`` (bytes): a peak above it is OVER_BUDGET and fails, whatever the baseline
      says and even while updating. Exactly on the budget passes.
    * ``reserved_budget`` (bytes): the same for ``reserved`` (the memory the allocator held
      from the device); a backend that cannot tell (``reserved`` None) fails it, since the
      limit cannot be checked.
    * ``update``: the baseline is being rewritten, so baseline differences never fail:
      NEW without a baseline, UPDATED when the figures changed, PASS when they did not.
    * no baseline: MISSING (fails) when ``strict``, else NEW.
    * otherwise ``peak_bytes`` and ``model_bytes`` are each compared with the baseline
      plus/minus ``tolerance.allowance(baseline)``: above is a REGRESSION (fails), below an
      IMPROVEMENT (reported so it can be locked in; it fails with ``fail_improvements``).
      Exactly on the limit passes.
    * ``largest`` (the answer of ``vram.largest`` and its card) against
      ``baseline_largest`` (the entry's): a lower answer is a REGRESSION of ``largest``
      (fails), a higher one an IMPROVEMENT; the figures then belong to another value and
      are not compared. An entry without an answer on this card is MISSING (strict) or NEW
      for ``largest``.
    """
    if off_device is not None:
        return [Verdict(Kind.NOT_ON_DEVICE, True, updating=update)]
    verdicts: list[Verdict] = []
    if budget is not None and measured.peak_bytes > budget:
        verdicts.append(Verdict(Kind.OVER_BUDGET, True, ("peak_bytes",)))
    if reserved_budget is not None and (reserved is None or reserved > reserved_budget):
        verdicts.append(Verdict(Kind.OVER_BUDGET, True, (RESERVED,)))
    recorded, recorded_card = baseline_largest
    if update:
        if baseline is None:
            verdicts.append(Verdict(Kind.NEW, False, updating=True))
        elif not _same_figures(measured, baseline) or (
            largest is not None and largest != (recorded, recorded_card)
        ):
            verdicts.append(Verdict(Kind.UPDATED, False, updating=True))
    elif baseline is None:
        verdicts.append(Verdict(Kind.MISSING, True) if strict else Verdict(Kind.NEW, False))
    elif largest is not None and (recorded is None or recorded_card != largest[1]):
        kind = Kind.MISSING if strict else Kind.NEW
        verdicts.append(Verdict(kind, strict, (LARGEST,)))
    elif largest is not None and largest[0] != recorded:
        assert recorded is not None
        if largest[0] < recorded:
            verdicts.append(Verdict(Kind.REGRESSION, True, (LARGEST,)))
        else:
            verdicts.append(Verdict(Kind.IMPROVEMENT, fail_improvements, (LARGEST,)))
    else:
        over, under = crossed(measured, baseline, tolerance)
        if over:
            verdicts.append(Verdict(Kind.REGRESSION, True, over))
        if under:
            verdicts.append(Verdict(Kind.IMPROVEMENT, fail_improvements, under))
    if verdicts:
        return verdicts
    assert baseline is not None  # every path without a baseline added a verdict above
    return [Verdict(Kind.PASS, False, ("peak_bytes",), updating=update)]


def crossed(
    measured: MemoryFigures, baseline: MemoryFigures, tolerance: Tolerance
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The compared fields above and below the baseline's tolerance band."""
    over: list[str] = []
    under: list[str] = []
    for field in COMPARED:
        value, reference = getattr(measured, field), getattr(baseline, field)
        allowance = tolerance.allowance(reference)
        if value > reference + allowance:
            over.append(field)
        elif value < reference - allowance:
            under.append(field)
    return tuple(over), tuple(under)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (failing ones first, see ``SEVERITY``); ties keep the first."""
    items = list(verdicts)
    if not items:
        raise ValueError("worst() needs at least one verdict")
    return min(items, key=lambda v: SEVERITY.index(v.kind))


def _same_figures(measured: MemoryFigures, baseline: MemoryFigures) -> bool:
    return all(getattr(measured, f) == getattr(baseline, f) for f in COMPARED)
