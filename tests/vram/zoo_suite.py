"""What the memory suite shares: the zoo's workloads and one cache of measured figures.

The measuring tests (``test_zoo.py``) each measure one (preset, phase, workload) through
the ``vram`` fixture and leave the figures here; the claim and budget tests
(``test_zoo_claims.py``) compare them. A claim test whose figures were not measured in this
process (``-k claim``, or another xdist worker measured them) measures them itself on the
same backend. Measurements are byte-reproducible, so both routes give the same verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import model_zoo
from pytest_vram.backends.base import Backend
from pytest_vram.measure import Measurement, Meter


@dataclasses.dataclass(frozen=True)
class Workload:
    """A zoo workload with the arguments the suite measures it at."""

    fn: Callable[..., Any]
    kwargs: dict[str, int]


#: name -> workload; the test functions of test_zoo.py carry the same names.
WORKLOADS = {
    # the report's protocol: eval, no grad, FP16 autocast, batch 1, 512 tokens
    "inference": Workload(model_zoo.inference, {"batch": 1, "seq_len": 512}),
    # long context, where O(N^2) and O(N) attention should part ways
    "long_context": Workload(model_zoo.inference, {"batch": 1, "seq_len": 8192}),
    # forward + backward with per-layer checkpointing, FP16 weights and autocast
    "train": Workload(model_zoo.train_step, {"batch": 1, "seq_len": 512}),
}

PAIRS = [(preset, phase) for preset in model_zoo.REAL_PRESETS for phase in model_zoo.PHASES]
PAIR_IDS = [f"{preset}-{phase}" for preset, phase in PAIRS]


def measure(meter: Any, preset: str, phase: str, workload: str) -> Measurement:
    """Build ``phase`` of ``preset`` and run ``workload`` on ``meter`` (a Meter or ``vram``)."""
    work = WORKLOADS[workload]
    model = meter.build(model_zoo.build_model, preset, phase, device=meter_device(meter))
    meter.run(work.fn, model, **work.kwargs)
    return meter.measurements[-1]


def meter_device(meter: Any) -> str:
    return meter.device if hasattr(meter, "device") else meter.backend.device


class ZooFigures:
    """Figures measured in this process, keyed by (preset, phase, workload)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._figures: dict[tuple[str, str, str], Measurement] = {}

    def record(self, preset: str, phase: str, workload: str, figures: Measurement) -> None:
        self._figures[preset, phase, workload] = figures

    def get(self, preset: str, phase: str, workload: str) -> Measurement:
        """The figures of one pair, measured now if no test of this process measured them."""
        key = (preset, phase, workload)
        if key not in self._figures:
            meter = Meter(self._backend)
            meter.start()
            try:
                self._figures[key] = measure(meter, preset, phase, workload)
            finally:
                meter.finish()
        return self._figures[key]
