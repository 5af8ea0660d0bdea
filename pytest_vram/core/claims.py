"""Claims: declared relations between measured figures, and their evaluation.

:class:`Claim` declares such a relation over measured figures by key ("peak of A at most
peak of B within 0.1%", "peak at most 8 GiB", "activation grows linearly in sequence
length"); :func:`evaluate` judges it on the session's figures into a :class:`ClaimVerdict`,
structured data that :mod:`pytest_vram.render.claims` puts into words. Pure functions and
plain data: no pytest, no torch.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, Protocol

from pytest_vram.core.units import Tolerance, UnitError, parse_size, parse_tolerance

EXACT = Tolerance()


# A claim is declared as data in a test module's ``vram_claims`` list; the plugin evaluates
# it once, on the controller, when the session's figures are in
# (:mod:`pytest_vram.pytest_plugin.claim_judging`). Claims are plain frozen data so that an
# xdist worker, which collected the module, can send them to the controller, which did not.

#: Figure fields a claim may read, as named in the ``--vram-json`` measurements.
FIELDS = ("peak_bytes", "model_bytes", "activation_bytes")
#: The relations a claim declares, each made by the classmethod of its name.
RELATIONS = ("at_most", "grows_like")
#: What a figure is written as in a declaration (named in messages).
FIGURE_HELP = "peak(key), model(key) or activation(key)"


class ClaimError(ValueError):
    """A claim declaration that cannot be evaluated (bad field, size, tolerance, name)."""


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure of one measurement: ``Figure("tests/x.py::test_a", "peak_bytes")``.

    ``key`` is the measurement's baseline key (the test's node id, or ``nodeid::name`` for
    a named ``vram.run``), as in the VRAM table and the baseline file.
    """

    key: str
    field: str = "peak_bytes"

    def __post_init__(self) -> None:
        __tracebackhide__ = True  # the user's declaration is the line to show
        if not isinstance(self.key, str) or not self.key.strip():
            raise ClaimError(
                f"Figure({self.key!r}, ...): the key must be a measurement's baseline key, a "
                f"non-empty string such as 'tests/test_x.py::test_a' (or 'nodeid::name')"
            )
        if not isinstance(self.field, str) or self.field not in FIELDS:
            raise ClaimError(
                f"Figure({self.key!r}, {self.field!r}): unknown field; valid fields are "
                f"{', '.join(FIELDS)}"
            )

    @property
    def label(self) -> str:
        return f"{self.field.removesuffix('_bytes')} of {self.key}"


def peak(key: str) -> Figure:
    """The peak of measurement ``key``."""
    return Figure(key, "peak_bytes")


def model(key: str) -> Figure:
    """The model (setup) bytes of measurement ``key``."""
    return Figure(key, "model_bytes")


def activation(key: str) -> Figure:
    """Peak minus model bytes of measurement ``key``."""
    return Figure(key, "activation_bytes")


class ClaimKind(enum.Enum):
    """What evaluating a claim found; ``fails`` says whether the session fails for it."""

    HOLDS = "holds"
    BROKEN = "broken"
    #: declared broken (``expect_broken=``) and still broken: reported like an xfail
    BROKEN_AS_EXPECTED = "broken as expected"
    #: declared broken but holds now: strict, so it fails until the declaration is removed
    HOLDS_UNEXPECTEDLY = "holds unexpectedly"
    #: a figure it needs was not measured in this session (deselected, skipped, failed)
    INCOMPLETE = "incomplete"

    @property
    def fails(self) -> bool:
        return self in (ClaimKind.BROKEN, ClaimKind.HOLDS_UNEXPECTEDLY)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A declared relation between measured figures; build one with :meth:`at_most` or
    :meth:`grows_like`."""

    name: str
    relation: str
    subject: Figure | None = None
    reference: Figure | None = None
    limit: int | None = None
    tolerance: Tolerance = EXACT
    series: tuple[tuple[float, Figure], ...] = ()
    exponent: float = 1.0
    within: float = 0.0
    #: the reason the claim is known not to hold (strict: holding fails)
    expect_broken: str | None = None

    def __post_init__(self) -> None:
        """Every declaration is checked where it is made: the module's collection fails
        with the claim's name and the fix, never the judgement after the test loop."""
        __tracebackhide__ = True
        name = _check_name(self.name)
        if self.relation not in RELATIONS:
            raise ClaimError(
                f"claim {name!r}: unknown relation {self.relation!r}; valid relations are "
                f"{', '.join(RELATIONS)}: declare it with Claim.at_most(...) or "
                f"Claim.grows_like(...)"
            )
        if self.expect_broken is not None and (
            not isinstance(self.expect_broken, str) or not self.expect_broken.strip()
        ):
            raise ClaimError(
                f"claim {name!r}: expect_broken must be the reason it does not hold, a "
                f"non-empty string, got {self.expect_broken!r}"
            )
        if not isinstance(self.tolerance, Tolerance):
            raise ClaimError(
                f"claim {name!r}: tolerance must be a Tolerance, got {self.tolerance!r}; give "
                f"within='0.1%' to Claim.at_most"
            )
        if self.relation == "at_most":
            _check_at_most(self)
        else:
            _check_series(name, self.series)
            _number(name, "exponent", self.exponent)
            _number(name, "within", self.within, minimum=0.0)

    @classmethod
    def at_most(
        cls,
        name: str,
        subject: Figure,
        reference: Figure | str | int,
        *,
        within: str | Tolerance = EXACT,
        expect_broken: str | None = None,
    ) -> Claim:
        """``subject <= reference + within``; ``reference`` is a Figure or a size ("8GiB").

        ``within`` is a tolerance of the reference ("0.1%", "4MiB", "0.1% + 1MiB").
        """
        __tracebackhide__ = True
        name = _check_name(name)
        _check_figure(name, "the subject", subject)
        try:
            tolerance = parse_tolerance(within, what=f"claim {name!r}: within")
        except UnitError as exc:
            raise ClaimError(str(exc)) from None
        if isinstance(reference, Figure):
            return cls(
                name, "at_most", subject, reference, None, tolerance, expect_broken=expect_broken
            )
        if isinstance(reference, str) and "::" in reference:
            raise ClaimError(
                f"claim {name!r}: the reference {reference!r} is a key, not a size; write "
                f"peak({reference!r}) (or model/activation), or a size such as '8GiB'"
            )
        try:
            limit = parse_size(reference, what=f"claim {name!r}: limit")  # type: ignore[arg-type]
        except UnitError as exc:
            raise ClaimError(f"{exc} (or a figure: {FIGURE_HELP})") from None
        return cls(name, "at_most", subject, None, limit, tolerance, expect_broken=expect_broken)

    @classmethod
    def grows_like(
        cls,
        name: str,
        series: dict[float, Figure],
        *,
        exponent: float = 1.0,
        within: float = 0.05,
        expect_broken: str | None = None,
    ) -> Claim:
        """The figure grows like ``x ** exponent`` over ``series`` ({x: figure}, at least two
        points): the least-squares slope of log(figure) over log(x) is within ``within`` of
        ``exponent``. E.g. ``{512: activation(a), 8192: activation(b)}``, exponent 1: linear
        in sequence length."""
        __tracebackhide__ = True
        name = _check_name(name)
        if not isinstance(series, Mapping):
            raise ClaimError(
                f"claim {name!r}: grows_like needs a dict {{x: figure}} of at least two points, "
                f"e.g. {{512: activation(a), 8192: activation(b)}}, got {type(series).__name__}"
            )
        _check_series(name, tuple(series.items()))
        points = tuple(sorted(series.items(), key=lambda point: point[0]))
        return cls(
            name, "grows_like", series=points, exponent=_number(name, "exponent", exponent),
            within=_number(name, "within", within, minimum=0.0), expect_broken=expect_broken,
        )  # fmt: skip

    @property
    def figures(self) -> list[Figure]:
        """Every figure the claim reads."""
        if self.relation == "grows_like":
            return [f for _, f in self.series]
        return [f for f in (self.subject, self.reference) if f is not None]

    @property
    def keys(self) -> list[str]:
        return sorted({f.key for f in self.figures})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (sent from an xdist worker to the controller)."""
        return {
            "name": self.name,
            "relation": self.relation,
            "subject": _figure_dict(self.subject),
            "reference": _figure_dict(self.reference),
            "limit": self.limit,
            "tolerance": str(self.tolerance),
            "series": [[x, _figure_dict(f)] for x, f in self.series],
            "exponent": self.exponent,
            "within": self.within,
            "expect_broken": self.expect_broken,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(
            name=data["name"],
            relation=data["relation"],
            subject=_figure_from(data["subject"]),
            reference=_figure_from(data["reference"]),
            limit=data["limit"],
            tolerance=parse_tolerance(data["tolerance"]),
            series=tuple((x, _figure_from(f)) for x, f in data["series"]),  # type: ignore[misc]
            exponent=data["exponent"],
            within=data["within"],
            expect_broken=data["expect_broken"],
        )


def _check_name(name: str) -> str:
    __tracebackhide__ = True
    if not isinstance(name, str) or not name or "::" in name or name != name.strip():
        raise ClaimError(f"claim name {name!r}: must be a non-empty str without '::'")
    return name


def _check_figure(name: str, what: str, figure: Any) -> None:
    __tracebackhide__ = True
    if not isinstance(figure, Figure):
        raise ClaimError(
            f"claim {name!r}: {what} must be a figure, {FIGURE_HELP}, got {figure!r}"[:300]
        )


def _check_at_most(claim: Claim) -> None:
    __tracebackhide__ = True
    _check_figure(claim.name, "the subject", claim.subject)
    if claim.series:
        raise ClaimError(f"claim {claim.name!r}: at_most compares two figures, not a series")
    if (claim.reference is None) == (claim.limit is None):
        raise ClaimError(
            f"claim {claim.name!r}: at_most needs one reference, a figure or a limit; "
            f"declare it with Claim.at_most(name, subject, reference)"
        )
    if claim.reference is not None:
        _check_figure(claim.name, "the reference", claim.reference)
    elif isinstance(claim.limit, bool) or not isinstance(claim.limit, int) or claim.limit < 0:
        raise ClaimError(
            f"claim {claim.name!r}: the limit must be a size such as '8GiB' or a number of "
            f"bytes, got {claim.limit!r}"
        )


def _finite(value: Any) -> bool:
    """A finite int or float (bool is an int subclass, but True is no point on an axis)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def _number(name: str, what: str, value: Any, minimum: float | None = None) -> float:
    """``value`` as a finite float (at least ``minimum``), or ClaimError naming it."""
    __tracebackhide__ = True
    ok = _finite(value) and (minimum is None or value >= minimum)
    if not ok:
        bound = " and not negative" if minimum is not None else ""
        raise ClaimError(
            f"claim {name!r}: {what} must be a finite number{bound}, got {value!r}"[:300]
        )
    return float(value)


def _check_series(name: str, points: tuple[tuple[Any, Any], ...]) -> None:
    """At least two points, x a finite number > 0, each a figure of one field."""
    __tracebackhide__ = True
    if not isinstance(points, tuple) or len(points) < 2:
        raise ClaimError(f"claim {name!r}: grows_like needs at least two points with x > 0")
    for point in points:
        if not (isinstance(point, tuple) and len(point) == 2):
            raise ClaimError(f"claim {name!r}: a series point must be (x, figure), got {point!r}")
        x, figure = point
        if not (_finite(x) and x > 0):
            raise ClaimError(
                f"claim {name!r}: every x of grows_like must be a finite number > 0 (e.g. a "
                f"sequence length), got {x!r}"[:300]
            )
        _check_figure(name, f"the figure at x={x!r}", figure)
    fields = sorted({figure.field for _, figure in points})
    if len(fields) > 1:
        raise ClaimError(
            f"claim {name!r}: grows_like reads one field at every point, got "
            f"{' and '.join(fields)}; use peak(), model() or activation() throughout"
        )


def _figure_dict(figure: Figure | None) -> dict[str, str] | None:
    return None if figure is None else {"key": figure.key, "field": figure.field}


def _figure_from(data: dict[str, str] | None) -> Figure | None:
    return None if data is None else Figure(data["key"], data["field"])


class Measured(Protocol):
    """What a claim reads from a measurement (``records.Record`` has it)."""

    @property
    def peak_bytes(self) -> int: ...
    @property
    def model_bytes(self) -> int: ...
    @property
    def activation_bytes(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class AtMost:
    """What an ``at_most`` claim compared: ``value`` of ``subject`` against ``limit`` (the
    ``reference`` figure's, or the stated limit) plus ``allowance`` (``tolerance`` of it)."""

    subject: str
    value: int
    reference: str
    limit: int
    tolerance: Tolerance
    allowance: int

    @property
    def holds(self) -> bool:
        return self.value <= self.limit + self.allowance


@dataclasses.dataclass(frozen=True)
class GrowsLike:
    """What a ``grows_like`` claim fitted: the ``field`` at each x, and the least-squares
    slope of log(figure) over log(x) (None where a figure is not positive)."""

    field: str
    points: tuple[tuple[float, int], ...]
    slope: float | None
    exponent: float
    within: float

    @property
    def holds(self) -> bool:
        return self.slope is not None and abs(self.slope - self.exponent) <= self.within


@dataclasses.dataclass(frozen=True)
class NotMeasured:
    """The figures a claim needs that this session did not measure: (key, why) each."""

    absent: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    """The outcome of one claim: its kind, the figures it read, and what it found."""

    name: str
    kind: ClaimKind
    #: "<field> of <key>" -> bytes, every figure the claim read
    figures: dict[str, int]
    finding: AtMost | GrowsLike | NotMeasured
    expect_broken: str | None = None

    @property
    def fails(self) -> bool:
        return self.kind.fails


def evaluate(
    claim: Claim, figures: Mapping[str, Measured], missing: Mapping[str, str] | None = None
) -> ClaimVerdict:
    """Judge ``claim`` on ``figures`` (key -> measurement).

    ``missing`` says, per key without figures, why (e.g. "deselected"); such a claim is
    INCOMPLETE and says which figures it lacks, never holds.
    """
    absent = [k for k in claim.keys if k not in figures]
    if absent:
        why = missing or {}
        lacking = tuple((k, why.get(k, "not measured in this session")) for k in absent)
        return ClaimVerdict(
            claim.name, ClaimKind.INCOMPLETE, {}, NotMeasured(lacking), claim.expect_broken
        )
    read = {f.label: _value(figures, f) for f in claim.figures}
    finding = (
        _grows_like(claim, figures) if claim.relation == "grows_like" else _at_most(claim, figures)
    )
    if claim.expect_broken is None:
        kind = ClaimKind.HOLDS if finding.holds else ClaimKind.BROKEN
    elif finding.holds:
        kind = ClaimKind.HOLDS_UNEXPECTEDLY
    else:
        kind = ClaimKind.BROKEN_AS_EXPECTED
    return ClaimVerdict(claim.name, kind, read, finding, claim.expect_broken)


def _value(figures: Mapping[str, Measured], figure: Figure) -> int:
    return int(getattr(figures[figure.key], figure.field))


def _at_most(claim: Claim, figures: Mapping[str, Measured]) -> AtMost:
    assert claim.subject is not None
    if claim.reference is not None:
        limit, reference = _value(figures, claim.reference), claim.reference.label
    else:
        assert claim.limit is not None
        limit, reference = claim.limit, "the limit"
    value = _value(figures, claim.subject)
    allowance = claim.tolerance.allowance(limit)
    return AtMost(claim.subject.label, value, reference, limit, claim.tolerance, allowance)


def _grows_like(claim: Claim, figures: Mapping[str, Measured]) -> GrowsLike:
    points = tuple((x, _value(figures, f)) for x, f in claim.series)
    field = claim.series[0][1].field.removesuffix("_bytes")
    slope = None
    if all(v > 0 for _, v in points):
        slope = _slope([(math.log(x), math.log(v)) for x, v in points])
    return GrowsLike(field, points, slope, claim.exponent, claim.within)


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
