"""The measurement lifecycle end to end on the scripted backend: new, pass, regression,
improvement, strict, budget, tolerance precedence."""

from __future__ import annotations

import itertools

import pytest
from vram_testing import MiB, write_baseline

# model 100 MiB, workload peak +50 MiB: model_bytes 100 MiB, peak_bytes 150 MiB.
MODEL_TEST = """
    import pytest

    MiB = 1024**2

    @pytest.mark.vram{options}
    def test_model(vram):
        model = vram.build(vram.backend.alloc, 100 * MiB)
        vram.run(vram.backend.spike, 50 * MiB)
"""
KEY = "test_model.py::test_model"


def make(pytester: pytest.Pytester, options: str = "") -> None:
    pytester.makepyfile(test_model=MODEL_TEST.format(options=options))


def test_new_entry_is_reported_not_failed(vram_pytester, run_vram):
    make(vram_pytester)
    result = run_vram()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= VRAM =*",
            "test * params * model * peak * activation * baseline * delta * verdict",
            f"{KEY} * - * 100.0 MiB * 150.0 MiB * 50.0 MiB * - * - * new",
            f"new: {KEY}: peak 150.0 MiB, no baseline in baselines/scripted.yaml; "
            f"record it with `pytest --vram-update {KEY}`",
        ]
    )
    assert not (vram_pytester.path / "baselines").exists()


def test_exact_baseline_passes(vram_pytester, run_vram):
    make(vram_pytester)
    write_baseline(vram_pytester, {KEY: (100 * MiB, 150 * MiB)})
    result = run_vram()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{KEY} * 150.0 MiB * 150.0 MiB * +0 B (+0.00%) * pass"])


def test_regression_fails_with_both_figures_and_delta(vram_pytester, run_vram):
    make(vram_pytester)
    write_baseline(vram_pytester, {KEY: (100 * MiB, 140 * MiB)})
    result = run_vram()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            # figures first, on short lines; the first one is what the short summary shows
            "peak +10.0 MiB (+7.14%): memory regression against baselines/scripted.yaml",
            f"  peak * 150.0 MiB * {150 * MiB:,d} B  (+{10 * MiB:,d} B)",
            f"  baseline * 140.0 MiB * {140 * MiB:,d} B",
            "  tolerance 0B: must equal it exactly",
            f"  model * 100.0 MiB * {100 * MiB:,d} B  within tolerance",
            f"  `pytest --vram-update {KEY}`",
            "  and commit baselines/scripted.yaml with the reason",
            f"{KEY} * 150.0 MiB * 140.0 MiB * +10.0 MiB (+7.14%) * regression",
            f"FAILED {KEY} - peak +10.0 MiB (+7.14%): memory regression against baselines/*",
        ]
    )
    # the failure text: from the test's header to the next section (VRAM, or warnings)
    after = result.stdout.str().split("_ test_model _")[1].splitlines()[1:]
    longrepr = "\n".join(itertools.takewhile(lambda line: not line.startswith("="), after))
    assert all(len(line) <= 80 for line in longrepr.splitlines()), longrepr


def test_improvement_is_reported_with_lock_in_command(vram_pytester, run_vram):
    make(vram_pytester)
    write_baseline(vram_pytester, {KEY: (100 * MiB, 160 * MiB)})
    result = run_vram()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"improvement: {KEY}: -10.0 MiB (-6.25%); lock it in with `pytest --vram-update {KEY}`",
        ]
    )


@pytest.mark.parametrize("how", [["--vram-strict"], ["env:CI=true"], ["ini:vram_strict = true"]])
def test_strict_fails_on_missing_baseline(vram_pytester, run_vram, monkeypatch, how):
    make(vram_pytester)
    args = []
    for item in how:
        if item.startswith("env:"):
            monkeypatch.setenv(*item[4:].split("="))
        elif item.startswith("ini:"):
            vram_pytester.makeini(f"[pytest]\n{item[4:]}\n")
        else:
            args.append(item)
    result = run_vram(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "no baseline (strict mode): peak 150.0 MiB, model 100.0 MiB",
            f"  record it with `pytest --vram-update {KEY}`",
            "  and commit baselines/scripted.yaml",
        ]
    )


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_off_values_are_not_strict(vram_pytester, run_vram, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    make(vram_pytester)
    run_vram().assert_outcomes(passed=1)


def test_no_strict_wins_over_ci(vram_pytester, run_vram, monkeypatch):
    monkeypatch.setenv("CI", "1")
    make(vram_pytester)
    run_vram("--vram-no-strict").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("budget", "outcome"),
    [(f"{150 * MiB}B", "passed"), (f"{150 * MiB - 1}B", "failed"), ("150MiB", "passed")],
)
def test_budget_boundary_even_with_baseline(vram_pytester, run_vram, budget, outcome):
    make(vram_pytester, f"(budget={budget!r})")
    write_baseline(vram_pytester, {KEY: (100 * MiB, 150 * MiB)})
    result = run_vram()
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            [
                "peak +1 B (+0.00%) over the budget 150.0 MiB",
                f"  peak * 150.0 MiB * {150 * MiB:,d} B",
                f"  budget * 150.0 MiB * {150 * MiB - 1:,d} B",
            ]
        )


# Baseline 100/140 MiB, measured 100/150 MiB: 10 MiB over. Tolerances of 10 MiB pass,
# 10 MiB - 1 B fail; the most specific tolerance given decides.
@pytest.mark.parametrize(
    ("marker", "entry", "file", "option", "outcome"),
    [
        (None, None, None, None, "failed"),
        (None, None, None, "10MiB", "passed"),
        (None, None, "10MiB", "1B", "passed"),
        (None, None, f"{10 * MiB - 1}B", "10MiB", "failed"),
        (None, "10MiB", f"{10 * MiB - 1}B", None, "passed"),
        (None, f"{10 * MiB - 1}B", "10MiB", "10MiB", "failed"),
        ("10MiB", f"{10 * MiB - 1}B", None, None, "passed"),
        (f"{10 * MiB - 1}B", "10MiB", "10MiB", "10MiB", "failed"),
        ("0", "10MiB", None, None, "failed"),
    ],
)
def test_tolerance_precedence(vram_pytester, run_vram, marker, entry, file, option, outcome):
    make(vram_pytester, "" if marker is None else f"(tolerance={marker!r})")
    write_baseline(
        vram_pytester,
        {KEY: (100 * MiB, 140 * MiB)},
        tolerance=file,
        entry_tolerances={KEY: entry} if entry else None,
    )
    args = [] if option is None else [f"--vram-tolerance={option}"]
    run_vram(*args).assert_outcomes(**{outcome: 1})


def test_ini_tolerance(vram_pytester, run_vram):
    make(vram_pytester)
    vram_pytester.makeini("[pytest]\nvram_tolerance = 7.15%\n")
    write_baseline(vram_pytester, {KEY: (100 * MiB, 140 * MiB)})
    run_vram().assert_outcomes(passed=1)


def test_reserved_budget_on_a_backend_without_reserved_figures_fails_clearly(
    vram_pytester, run_vram
):
    make(vram_pytester, "(reserved_budget='1GiB')")
    write_baseline(vram_pytester, {KEY: (100 * MiB, 150 * MiB)})
    result = run_vram()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*reserved_budget 1073741824 B (1024.0 MiB) cannot be checked*"])
