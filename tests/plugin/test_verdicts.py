"""Verdict rules: tables on the tolerance and budget boundaries, and what each verdict says."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest

from pytest_vram.core.figures import MemoryFigures
from pytest_vram.core.records import Record
from pytest_vram.core.units import GiB, MiB, Tolerance
from pytest_vram.core.verdicts import SEVERITY, Cause, Kind, OffDevice, Verdict, judge, worst
from pytest_vram.render.verdicts import detail, summary
from pytest_vram.store.baselines import Entry

KEY = "tests/vram/test_zoo.py::test_inference[maximum-phase8]"
PATH = "baselines/cuda-h200.yaml"
MODEL = 6163679232
PEAK = 6236118016
BASE = Entry(model_bytes=MODEL, peak_bytes=PEAK)
# 0.5% of PEAK is 31180590.08 -> allowance 31180590; of MODEL 30818396.16 -> 30818396.
HALF_PERCENT = Tolerance(relative=0.005)
PEAK_ALLOWANCE = 31180590
MODEL_ALLOWANCE = 30818396


def kinds(verdicts: list[Verdict]) -> list[Kind]:
    return [v.kind for v in verdicts]


class Said(NamedTuple):
    """A verdict with what the report says about it."""

    key: str
    kind: Kind
    fails: bool
    summary: str
    detail: str


def said(
    measured: MemoryFigures,
    baseline: MemoryFigures | None,
    *,
    key: str = KEY,
    nodeid: str | None = None,
    baseline_path: str = "",
    tolerance: Tolerance,
    budget: int | None = None,
    reserved: int | None = None,
    reserved_budget: int | None = None,
    **policy: Any,
) -> list[Said]:
    """Judge as the session does and render each verdict as the report does."""
    verdicts = judge(
        measured,
        baseline,
        tolerance=tolerance,
        budget=budget,
        reserved=reserved,
        reserved_budget=reserved_budget,
        **policy,
    )
    record = Record(
        key=key,
        nodeid=nodeid or key,
        name=None,
        profile="p",
        baseline_path=baseline_path,
        params=None,
        model_bytes=measured.model_bytes,
        peak_bytes=measured.peak_bytes,
        setup={},
        tolerance=tolerance,
        budget=budget,
        baseline_model_bytes=baseline.model_bytes if baseline else None,
        baseline_peak_bytes=baseline.peak_bytes if baseline else None,
        verdicts=tuple(verdicts),
        reserved_bytes=reserved,
        reserved_budget=reserved_budget,
    )
    return [Said(key, v.kind, v.fails, summary(record, v), detail(record, v)) for v in verdicts]


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        (PEAK, Kind.PASS),
        (PEAK + PEAK_ALLOWANCE, Kind.PASS),  # exactly on the limit passes
        (PEAK + PEAK_ALLOWANCE + 1, Kind.REGRESSION),
        (PEAK - PEAK_ALLOWANCE, Kind.PASS),
        (PEAK - PEAK_ALLOWANCE - 1, Kind.IMPROVEMENT),
    ],
)
def test_peak_against_baseline_and_tolerance(peak: int, expected: Kind) -> None:
    verdicts = judge(Entry(MODEL, peak), BASE, tolerance=HALF_PERCENT)
    assert kinds(verdicts) == [expected]
    assert verdicts[0].fails is (expected is Kind.REGRESSION)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (MODEL + MODEL_ALLOWANCE, Kind.PASS),
        (MODEL + MODEL_ALLOWANCE + 1, Kind.REGRESSION),
        (MODEL - MODEL_ALLOWANCE, Kind.PASS),
        (MODEL - MODEL_ALLOWANCE - 1, Kind.IMPROVEMENT),
    ],
)
def test_model_bytes_are_compared_too(model: int, expected: Kind) -> None:
    verdicts = judge(Entry(model, PEAK), BASE, tolerance=HALF_PERCENT)
    assert kinds(verdicts) == [expected]


@pytest.mark.parametrize(
    ("tolerance", "peak", "expected"),
    [
        (Tolerance(), PEAK, Kind.PASS),
        (Tolerance(), PEAK + 1, Kind.REGRESSION),
        (Tolerance(), PEAK - 1, Kind.IMPROVEMENT),
        (Tolerance(absolute=4 * MiB), PEAK + 4 * MiB, Kind.PASS),
        (Tolerance(absolute=4 * MiB), PEAK + 4 * MiB + 1, Kind.REGRESSION),
        (Tolerance(0.005, 4 * MiB), PEAK + PEAK_ALLOWANCE + 4 * MiB, Kind.PASS),
        (Tolerance(0.005, 4 * MiB), PEAK + PEAK_ALLOWANCE + 4 * MiB + 1, Kind.REGRESSION),
    ],
)
def test_tolerance_forms(tolerance: Tolerance, peak: int, expected: Kind) -> None:
    # The model is unchanged, so only the peak can move the verdict.
    assert kinds(judge(Entry(MODEL, peak), BASE, tolerance=tolerance)) == [expected]


def test_peak_regression_and_model_improvement_are_both_reported() -> None:
    measured = Entry(MODEL - 100 * MiB, PEAK + 100 * MiB)
    verdicts = said(measured, BASE, tolerance=HALF_PERCENT)
    assert kinds(verdicts) == [Kind.REGRESSION, Kind.IMPROVEMENT]
    assert "peak" in verdicts[0].detail and "model" not in verdicts[0].detail.split(". ")[1]
    assert verdicts[1].summary.startswith("model -100.0 MiB")
    assert [v.kind for v in verdicts if v.fails] == [Kind.REGRESSION]


def test_both_fields_regressing_make_one_verdict_naming_both() -> None:
    measured = Entry(MODEL + 100 * MiB, PEAK + 100 * MiB)
    (verdict,) = said(measured, BASE, tolerance=HALF_PERCENT)
    assert verdict.kind is Kind.REGRESSION
    assert verdict.summary == "+100.0 MiB (+1.68%); model +100.0 MiB (+1.70%)"
    assert f"peak {PEAK + 100 * MiB} B" in verdict.detail
    assert f"model {MODEL + 100 * MiB} B" in verdict.detail


@pytest.mark.parametrize(
    ("strict", "update", "expected", "fails"),
    [
        (False, False, Kind.NEW, False),
        (True, False, Kind.MISSING, True),
        (False, True, Kind.NEW, False),
        (True, True, Kind.NEW, False),  # updating records it, strict or not
    ],
)
def test_no_baseline(strict: bool, update: bool, expected: Kind, fails: bool) -> None:
    (verdict,) = said(
        BASE, None, tolerance=HALF_PERCENT, strict=strict, update=update, baseline_path=PATH
    )
    assert (verdict.kind, verdict.fails) == (expected, fails)
    assert PATH in verdict.detail
    assert str(PEAK) in verdict.detail


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        (PEAK, Kind.PASS),
        (PEAK + GiB, Kind.UPDATED),  # far over: updating never fails for baseline reasons
        (PEAK - GiB, Kind.UPDATED),
        (PEAK + 1, Kind.UPDATED),  # even within tolerance: the figure is rewritten
    ],
)
def test_update_mode(peak: int, expected: Kind) -> None:
    verdicts = judge(Entry(MODEL, peak), BASE, tolerance=HALF_PERCENT, update=True)
    assert kinds(verdicts) == [expected]
    assert not verdicts[0].fails


@pytest.mark.parametrize(
    ("peak", "budget", "update", "baseline", "expected"),
    [
        (PEAK, PEAK, False, BASE, [Kind.PASS]),  # exactly on the budget passes
        (PEAK, PEAK - 1, False, BASE, [Kind.OVER_BUDGET]),  # even with the baseline held
        (PEAK, PEAK - 1, True, BASE, [Kind.OVER_BUDGET]),  # and while updating
        (PEAK, PEAK - 1, False, None, [Kind.OVER_BUDGET, Kind.NEW]),
        (PEAK + GiB, PEAK, False, BASE, [Kind.OVER_BUDGET, Kind.REGRESSION]),
        (PEAK + GiB, PEAK, True, BASE, [Kind.OVER_BUDGET, Kind.UPDATED]),
        (PEAK - GiB, 8 * GiB, False, BASE, [Kind.IMPROVEMENT]),
    ],
)
def test_budget_is_independent_of_the_baseline(
    peak: int, budget: int, update: bool, baseline: Entry | None, expected: list[Kind]
) -> None:
    verdicts = judge(
        Entry(MODEL, peak), baseline, tolerance=HALF_PERCENT, budget=budget, update=update
    )
    assert kinds(verdicts) == expected
    assert any(v.fails for v in verdicts) is (
        Kind.OVER_BUDGET in expected or Kind.REGRESSION in expected
    )


def test_regression_detail_names_figures_delta_tolerance_and_fix() -> None:
    measured = Entry(MODEL, PEAK + 12 * MiB + PEAK_ALLOWANCE)
    (verdict,) = said(
        measured,
        BASE,
        tolerance=HALF_PERCENT,
        baseline_path=PATH,
        nodeid=KEY,
    )
    delta = 12 * MiB + PEAK_ALLOWANCE
    assert verdict.fails
    assert verdict.summary == "+41.7 MiB (+0.70%)"
    for expected in (
        KEY,
        PATH,
        f"peak {PEAK + delta} B (5989.0 MiB)",  # measured
        f"baseline {PEAK} B (5947.2 MiB)",  # baseline
        f"+{delta} B (+41.7 MiB, +0.70%)",  # delta in bytes and percent
        f"tolerance 0.5% allows +/-{PEAK_ALLOWANCE} B (29.7 MiB)",
        f"pytest --vram-update '{KEY}'",  # the fix, quoted for the shell
    ):
        assert expected in verdict.detail


def test_improvement_tells_how_to_lock_it_in_for_the_nodeid() -> None:
    key = "tests/test_x.py::test_train[tiny]::backward"
    (verdict,) = said(
        Entry(MODEL, PEAK - 100 * MiB),
        BASE,
        key=key,
        tolerance=HALF_PERCENT,
        nodeid="tests/test_x.py::test_train[tiny]",
        baseline_path=PATH,
    )
    assert verdict.kind is Kind.IMPROVEMENT
    assert not verdict.fails
    assert verdict.summary == "-100.0 MiB (-1.68%)"
    assert "pytest --vram-update 'tests/test_x.py::test_train[tiny]'`" in verdict.detail
    assert verdict.key == key


def test_over_budget_detail() -> None:
    budget = 5 * GiB
    (verdict,) = said(BASE, BASE, tolerance=HALF_PERCENT, budget=budget)
    assert verdict.kind is Kind.OVER_BUDGET
    assert f"peak {PEAK} B (5947.2 MiB) is over the budget {budget} B (5120.0 MiB)" in (
        verdict.detail
    )
    assert f"+{PEAK - budget} B (+827.2 MiB, +16.16%)" in verdict.detail
    assert "raise budget=" in verdict.detail


def test_missing_detail_says_how_to_record() -> None:
    (verdict,) = said(BASE, None, tolerance=HALF_PERCENT, strict=True, baseline_path=PATH)
    assert "strict mode" in verdict.detail
    assert f"pytest --vram-update '{KEY}'" in verdict.detail
    assert f"commit {PATH}" in verdict.detail


def test_pass_summary_shows_the_delta() -> None:
    (verdict,) = said(Entry(MODEL, PEAK + MiB), BASE, tolerance=HALF_PERCENT)
    assert verdict.summary == "+1.0 MiB (+0.02%)"
    assert "within tolerance 0.5%" in verdict.detail


def test_zero_baseline() -> None:
    zero = Entry(0, 0)
    assert kinds(said(zero, zero, tolerance=HALF_PERCENT)) == [Kind.PASS]
    (verdict,) = said(Entry(0, 512), zero, tolerance=HALF_PERCENT)
    assert verdict.kind is Kind.REGRESSION
    assert verdict.summary == "+512 B (baseline 0 B)"


def test_worst_orders_by_severity() -> None:
    def v(kind: Kind) -> Verdict:
        return Verdict(kind, fails=kind in {Kind.REGRESSION, Kind.OVER_BUDGET})

    assert worst([v(Kind.PASS)]).kind is Kind.PASS
    assert worst([v(Kind.IMPROVEMENT), v(Kind.REGRESSION)]).kind is Kind.REGRESSION
    assert worst([v(Kind.REGRESSION), v(Kind.OVER_BUDGET)]).kind is Kind.OVER_BUDGET
    assert worst([v(Kind.NEW), v(Kind.MISSING)]).kind is Kind.MISSING
    assert set(SEVERITY) == set(Kind)
    with pytest.raises(ValueError, match="at least one verdict"):
        worst([])


def test_failing_kinds_rank_above_non_failing_ones() -> None:
    failing = {Kind.NOT_ON_DEVICE, Kind.OVER_BUDGET, Kind.REGRESSION, Kind.MISSING}
    assert set(SEVERITY[: len(failing)]) == failing


@pytest.mark.parametrize(
    ("reserved", "fails"),
    [(2 * GiB, False), (2 * GiB + 1, True), (None, True)],
)
def test_reserved_budget_boundary(reserved: int | None, fails: bool) -> None:
    verdicts = said(BASE, BASE, tolerance=HALF_PERCENT, reserved=reserved, reserved_budget=2 * GiB)
    assert bool([v for v in verdicts if v.fails]) is fails
    if fails:
        (verdict,) = [v for v in verdicts if v.fails]
        assert verdict.kind is Kind.OVER_BUDGET
        expected = "cannot be checked" if reserved is None else "over the reserved_budget"
        assert expected in verdict.detail


OFF = OffDevice(
    step="vram.build(make_model)",
    device="cuda:0",
    backend="estimate",
    params=16_781_312,
    elsewhere=("cpu",),
    causes=(Cause("import-time device", "DEVICE", "cpu", "tests/test_model.py:5"),),
)


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize("baseline", [None, BASE])
def test_figures_off_the_device_fail_alone_also_while_updating(
    update: bool, baseline: MemoryFigures | None
) -> None:
    zero = MemoryFigures(0, 0)
    verdicts = judge(
        zero, baseline, tolerance=HALF_PERCENT, budget=GiB, update=update, off_device=OFF
    )
    assert [(v.kind, v.fails, v.updating) for v in verdicts] == [(Kind.NOT_ON_DEVICE, True, update)]


def test_a_record_off_the_device_travels_and_is_not_recordable() -> None:
    record = Record(
        key=KEY,
        nodeid=KEY,
        name=None,
        profile="estimate",
        baseline_path=PATH,
        params=OFF.params,
        model_bytes=0,
        peak_bytes=0,
        setup={},
        tolerance=Tolerance(),
        budget=None,
        baseline_model_bytes=None,
        baseline_peak_bytes=None,
        verdicts=(Verdict(Kind.NOT_ON_DEVICE, True),),
        off_device=OFF,
    )
    back = Record.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record and not back.recordable
    assert summary(back, back.verdicts[0]) == ("the model is on the CPU (16.78M parameters on cpu)")
    text = detail(back, back.verdicts[0])
    assert "DEVICE = 'cpu' (tests/test_model.py:5): a device chosen with" in text
    assert "before the estimator's emulated GPU existed: use vram.device" in text
