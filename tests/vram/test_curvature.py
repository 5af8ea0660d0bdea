"""The curvature cost, shown: how Phase 8's activation memory grows with sequence length.

The report's earlier run measured 17.29 GB for Phase 8 because a curvature setting switched
on the hybrid path, which computes the exact O(N^2) attention. These tests fit the growth
exponent of activation memory (peak minus model) over sequence length for each mode on
the ``small`` preset, always on the estimator (no GPU needed, no real memory): linear mode
must grow like N, a hybrid that computes the exact path and exact mode like N^2. A change
that makes the linear mode quadratic fails here by name.
"""

from __future__ import annotations

import math

import pytest

import model_zoo
from pytest_vram.backends import create
from pytest_vram.backends.base import Backend
from pytest_vram.measure.meter import Meter

pytestmark = pytest.mark.vram

SEQ_LENS = (1024, 2048, 4096)

#: mode label -> (curvature, expected growth exponent)
MODES = {
    "linear": (0.01, 1),  # c < 0.1
    "hybrid-linear-only": (0.5, 1),  # alpha = 0.44 <= 0.5: the exact path is skipped
    "hybrid-with-exact": (1.0, 2),  # alpha = 1 > 0.5: the exact path runs
    "exact": (2.0, 2),  # c > 1
}
#: how far a fitted exponent may sit from the ideal: constant terms (the (H, d, d) kernel
#: state) pull the fit slightly below 1, linear terms pull a quadratic one below 2.
EXPONENT_SLACK = 0.1


@pytest.fixture(scope="module")
def estimator() -> Backend:
    backend = create("estimate")
    backend.warmup()
    return backend


def activation_bytes(backend: Backend, curvature: float, seq_len: int) -> int:
    meter = Meter(backend)
    meter.start()
    model = meter.build(
        model_zoo.build_model, "small", "phase8", device=backend.device, curvature=curvature
    )
    meter.run(model_zoo.inference, model, seq_len=seq_len)
    del model
    meter.finish()
    return meter.measurements[-1].activation_bytes


def growth_exponent(xs: tuple[int, ...], ys: list[int]) -> float:
    """Least-squares slope of log(y) over log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    covariance = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    return covariance / sum((a - mx) ** 2 for a in lx)


@pytest.mark.parametrize("mode", MODES)
def test_activation_growth_follows_the_mode(estimator: Backend, mode: str) -> None:
    curvature, expected = MODES[mode]
    assert model_zoo.curvature_mode(curvature) == mode.split("-")[0]
    figures = [activation_bytes(estimator, curvature, n) for n in SEQ_LENS]
    exponent = growth_exponent(SEQ_LENS, figures)
    table = ", ".join(f"N={n}: {b} B" for n, b in zip(SEQ_LENS, figures, strict=True))
    assert abs(exponent - expected) <= EXPONENT_SLACK, (
        f"Phase 8 {mode} (c={curvature}): activation memory grows like N^{exponent:.2f}, "
        f"expected N^{expected} (+-{EXPONENT_SLACK}); {table}"
    )
