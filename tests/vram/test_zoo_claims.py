"""The report's claims as tests, on the figures that ``test_zoo.py`` measures.

1. "Phase 8 uses no more GPU memory than Phase 7": for every size and workload, Phase 8's
   peak is at most Phase 7's, within CLAIM_TOLERANCE (the report's own "< 0.1%").
2. "It fits an 8 GB laptop GPU": every training pair against the 8 GiB budget (inference
   carries the budget on its measuring test, see test_zoo.py).

Where the measured truth contradicts a claim, the case is a strict expected failure whose
reason gives the measured excess: the suite keeps saying so, and a fix flips it to a
failure that asks for the mark to be removed. Nothing is widened to hide a contradiction.
"""

from __future__ import annotations

import pytest
from zoo_suite import WORKLOADS, ZooFigures

import model_zoo
from pytest_vram.claims import at_most
from pytest_vram.units import GiB, Tolerance

pytestmark = pytest.mark.vram

CLAIM_TOLERANCE = Tolerance(relative=0.001)
LAPTOP_BUDGET = 8 * GiB

#: (preset, workload) -> measured excess of Phase 8 over Phase 7 (peak), where the claim
#: does not hold. Figures from the committed baselines (cuda-nvidia-h200 and estimate).
PHASE8_ABOVE_PHASE7: dict[tuple[str, str], str] = {}

#: (preset, phase) -> measured training peak, where it does not fit 8 GiB.
TRAIN_OVER_BUDGET: dict[tuple[str, str], str] = {}


def _known(table: dict, key: tuple[str, str], what: str) -> list[pytest.MarkDecorator]:
    if key not in table:
        return []
    return [pytest.mark.xfail(strict=True, reason=f"{what}: {table[key]}")]


CLAIM_CASES = [
    pytest.param(
        preset,
        workload,
        id=f"{workload}-{preset}",
        marks=_known(PHASE8_ABOVE_PHASE7, (preset, workload), "Phase 8 above Phase 7"),
    )
    for workload in WORKLOADS
    for preset in model_zoo.REAL_PRESETS
]

BUDGET_CASES = [
    pytest.param(
        preset,
        phase,
        id=f"{preset}-{phase}",
        marks=_known(TRAIN_OVER_BUDGET, (preset, phase), "over the 8 GiB laptop budget"),
    )
    for preset in model_zoo.REAL_PRESETS
    for phase in model_zoo.PHASES
]


@pytest.mark.parametrize(("preset", "workload"), CLAIM_CASES)
def test_phase8_peak_not_above_phase7(zoo_figures: ZooFigures, preset: str, workload: str) -> None:
    phase7 = zoo_figures.get(preset, "phase7", workload)
    phase8 = zoo_figures.get(preset, "phase8", workload)
    result = at_most(
        phase8.peak_bytes,
        phase7.peak_bytes,
        tolerance=CLAIM_TOLERANCE,
        subject=f"{preset}/{workload}: Phase 8 peak",
        reference="Phase 7 peak",
    )
    assert result.holds, result.message


@pytest.mark.parametrize(("preset", "phase"), BUDGET_CASES)
def test_train_fits_laptop_budget(zoo_figures: ZooFigures, preset: str, phase: str) -> None:
    figures = zoo_figures.get(preset, phase, "train")
    result = at_most(
        figures.peak_bytes,
        LAPTOP_BUDGET,
        subject=f"{preset}/{phase} training peak",
        reference="the 8 GiB laptop budget",
    )
    assert result.holds, result.message
