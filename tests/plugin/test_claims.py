"""Claims between two figures: exactly on the allowed limit holds, one byte over breaks;
and what a verdict says."""

from __future__ import annotations

import json

import pytest

from pytest_vram.claims import Claim, ClaimError, Figure, activation, model, peak
from pytest_vram.core.claims import AtMost, ClaimKind, evaluate
from pytest_vram.core.units import MiB, Tolerance
from pytest_vram.render.claims import message


class _Figures:
    def __init__(self, model_bytes: int, peak_bytes: int) -> None:
        self.model_bytes, self.peak_bytes = model_bytes, peak_bytes
        self.activation_bytes = peak_bytes - model_bytes


@pytest.mark.parametrize(
    ("value", "limit", "tolerance", "holds"),
    [
        (1000, 1000, Tolerance(), True),
        (1001, 1000, Tolerance(), False),
        (999, 1000, Tolerance(), True),
        (1001, 1000, Tolerance(relative=0.001), True),  # 0.1% of 1000 is exactly 1 B
        (1002, 1000, Tolerance(relative=0.001), False),
        (1000 + MiB, 1000, Tolerance(absolute=MiB), True),
        (1001 + MiB, 1000, Tolerance(absolute=MiB), False),
    ],
)
def test_at_most_boundaries(value: int, limit: int, tolerance: Tolerance, holds: bool) -> None:
    claim = Claim.at_most("c", peak("a"), limit, within=tolerance)
    verdict = evaluate(claim, {"a": _Figures(0, value)})
    assert (verdict.kind is ClaimKind.HOLDS) is holds
    assert isinstance(verdict.finding, AtMost)
    assert (verdict.finding.value, verdict.finding.limit) == (value, limit)


def test_broken_claim_names_both_figures_the_delta_and_the_tolerance() -> None:
    claim = Claim.at_most("c", peak("phase8"), peak("phase7"), within="0.05%")
    figures = {"phase8": _Figures(0, 6 * 2**30 + 5 * MiB), "phase7": _Figures(0, 6 * 2**30)}
    verdict = evaluate(claim, figures)
    assert verdict.kind is ClaimKind.BROKEN
    text = message(verdict)
    assert "peak of phase8 6149.0 MiB (6447693824 B)" in text
    assert "peak of phase7 6144.0 MiB (6442450944 B)" in text
    assert "+5.0 MiB (+0.08%), over the stated tolerance 0.05% (3.1 MiB)" in text


def test_holding_claim_says_so_with_figures() -> None:
    verdict = evaluate(Claim.at_most("c", peak("a"), peak("b")), {
        "a": _Figures(0, 10 * MiB), "b": _Figures(0, 12 * MiB)
    })  # fmt: skip
    assert verdict.kind is ClaimKind.HOLDS
    assert message(verdict).startswith("peak of a 10.0 MiB (10485760 B) vs peak of b 12.0 MiB")
    assert message(verdict).endswith("within the stated tolerance 0B")


# --------------------------------------------------------------------------- declarations


def test_declared_claim_on_the_limit_holds_and_one_byte_over_breaks() -> None:
    claim = Claim.at_most("c", peak("a"), peak("b"), within="0.1%")
    on_limit = {"a": _Figures(0, 1001), "b": _Figures(0, 1000)}
    over = {"a": _Figures(0, 1002), "b": _Figures(0, 1000)}
    assert evaluate(claim, on_limit).kind is ClaimKind.HOLDS
    verdict = evaluate(claim, over)
    assert verdict.kind is ClaimKind.BROKEN and verdict.fails
    assert verdict.figures == {"peak of a": 1002, "peak of b": 1000}


def test_expected_contradiction_quotes_the_figures_and_is_strict() -> None:
    claim = Claim.at_most("c", peak("a"), "1KiB", expect_broken="a is too big")
    broken = evaluate(claim, {"a": _Figures(0, 1025)})
    assert broken.kind is ClaimKind.BROKEN_AS_EXPECTED and not broken.fails
    assert message(broken).startswith("a is too big: peak of a 1.0 KiB (1025 B) vs the limit")
    fixed = evaluate(claim, {"a": _Figures(0, 1024)})
    assert fixed.kind is ClaimKind.HOLDS_UNEXPECTEDLY and fixed.fails


def test_missing_figures_never_hold() -> None:
    claim = Claim.at_most("c", peak("a"), peak("b"))
    verdict = evaluate(claim, {"a": _Figures(0, 1)}, {"b": "t.py::b was deselected"})
    assert verdict.kind is ClaimKind.INCOMPLETE
    assert message(verdict) == "not evaluated: no figures for b (t.py::b was deselected)"


@pytest.mark.parametrize(
    ("exponent", "holds"), [(1.0, True), (1.09, True), (1.11, False), (0.89, False)]
)
def test_grows_like_fits_the_exponent(exponent: float, holds: bool) -> None:
    claim = Claim.grows_like(
        "c", {1: activation("a"), 4: activation("b")}, exponent=exponent, within=0.1
    )
    verdict = evaluate(claim, {"a": _Figures(10, 110), "b": _Figures(10, 410)})
    assert (verdict.kind is ClaimKind.HOLDS) is holds


def test_claims_survive_the_trip_from_a_worker() -> None:
    declared = [
        Claim.at_most("a", peak("x"), model("y"), within="0.1% + 1MiB", expect_broken="why"),
        Claim.at_most("b", peak("x"), "8GiB"),
        Claim.grows_like("c", {512: activation("x"), 8192: activation("y")}),
    ]
    for claim in declared:
        assert Claim.from_dict(json.loads(json.dumps(claim.to_dict()))) == claim


def test_bad_declarations_say_what_is_wrong() -> None:
    with pytest.raises(ClaimError, match="unknown field; valid fields are peak_bytes"):
        Figure("k", "peak")
    with pytest.raises(ClaimError, match="at least two points"):
        Claim.grows_like("c", {512: activation("x")})


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: Claim.at_most("c", "t.py::a", "1GiB"),
         "claim 'c': the subject must be a figure, peak(key), model(key) or activation(key), "
         "got 't.py::a'"),
        (lambda: Claim.at_most("c", peak("a"), "t.py::b"),
         "claim 'c': the reference 't.py::b' is a key, not a size; write peak('t.py::b')"),
        (lambda: Claim.at_most("c", peak("a"), "8 gigs"), "claim 'c': limit: "),
        (lambda: Claim.at_most("c", peak("a"), peak("b"), within=float("nan")),
         "claim 'c': within must be a finite tolerance"),
        (lambda: Claim.at_most("c", peak(1), peak("b")), "Figure(1, ...): the key must be"),
        (lambda: Claim.at_most("c", peak("a"), peak("b"), expect_broken=""),
         "claim 'c': expect_broken must be the reason it does not hold"),
        (lambda: Claim.grows_like("c", {1: peak("a"), "2": peak("b")}),
         "claim 'c': every x of grows_like must be a finite number > 0 (e.g. a sequence "
         "length), got '2'"),
        (lambda: Claim.grows_like("c", {2: peak("a"), True: peak("b")}), "got True"),
        (lambda: Claim.grows_like("c", {1: peak("a"), float("inf"): peak("b")}), "got inf"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: "t.py::b"}),
         "claim 'c': the figure at x=2 must be a figure"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: activation("b")}),
         "grows_like reads one field at every point, got activation_bytes and peak_bytes"),
        (lambda: Claim.grows_like("c", [peak("a"), peak("b")]),
         "claim 'c': grows_like needs a dict {x: figure}"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: peak("b")}, exponent="abc"),
         "claim 'c': exponent must be a finite number, got 'abc'"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: peak("b")}, exponent=float("nan")),
         "claim 'c': exponent must be a finite number, got nan"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: peak("b")}, exponent=10**400),
         "claim 'c': exponent must be a finite number"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: peak("b")}, within=float("nan")),
         "claim 'c': within must be a finite number and not negative, got nan"),
        (lambda: Claim.grows_like("c", {1: peak("a"), 2: peak("b")}, within=-0.1),
         "got -0.1"),
        (lambda: Claim("c", "at_least", peak("a"), None, 5),
         "claim 'c': unknown relation 'at_least'; valid relations are at_most, grows_like"),
        (lambda: Claim("c", "at_most", peak("a")), "at_most needs one reference"),
        (lambda: Claim("c", "grows_like"), "grows_like needs at least two points"),
    ],
)  # fmt: skip
def test_every_declaration_is_checked_where_it_is_made(declare, message) -> None:
    with pytest.raises(ClaimError) as info:
        declare()
    assert message in str(info.value)


def test_a_series_of_ints_and_floats_sorts_by_x() -> None:
    claim = Claim.grows_like("c", {2.5: peak("b"), 1: peak("a")}, exponent=1, within=0.5)
    assert [x for x, _ in claim.series] == [1, 2.5]
