"""The report's table, re-measured: every size x phase pair, three workloads, on baselines.

Baselines: ``baselines/<profile>.yaml`` (``cuda-nvidia-h200`` on an H200, ``estimate``
without a GPU). The report's point was that every model fits an 8 GiB laptop GPU at its
protocol, so inference carries that budget, which fails whatever the baseline says. The
claims over these figures are declared in ``test_zoo_claims.py``.
"""

from __future__ import annotations

import pytest
from zoo_suite import PAIR_IDS, PAIRS, measure

pair = pytest.mark.parametrize(("preset", "phase"), PAIRS, ids=PAIR_IDS)


@pytest.mark.vram(budget="8GiB")
@pair
def test_inference(vram, preset: str, phase: str) -> None:
    measure(vram, preset, phase, "inference")


@pytest.mark.vram
@pair
def test_long_context(vram, preset: str, phase: str) -> None:
    measure(vram, preset, phase, "long_context")


@pytest.mark.vram
@pair
def test_train(vram, preset: str, phase: str) -> None:
    measure(vram, preset, phase, "train")
