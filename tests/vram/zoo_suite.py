"""What the memory suite shares: the zoo's workloads, the measured pairs and their keys.

The measuring tests (``test_zoo.py``) each measure one (preset, phase, workload) through
the ``vram`` fixture; the claims (``test_zoo_claims.py``) are declarations over those
figures by key, which the plugin evaluates once per session when every figure is in
(on the xdist controller too), never measuring again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import model_zoo
from pytest_vram.measure.meter import Measurement

#: the file whose tests measure the pairs; baseline keys are relative to the rootdir
ZOO_TESTS = "tests/vram/test_zoo.py"


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


def key(workload: str, preset: str, phase: str) -> str:
    """The baseline key (node id) of the test that measures one pair's workload."""
    return f"{ZOO_TESTS}::test_{workload}[{preset}-{phase}]"


def measure(vram: Any, preset: str, phase: str, workload: str) -> Measurement:
    """Build ``phase`` of ``preset`` and run ``workload`` with the ``vram`` fixture."""
    work = WORKLOADS[workload]
    model = vram.build(model_zoo.build_model, preset, phase, device=vram.device)
    vram.run(work.fn, model, **work.kwargs)
    return vram.measurements[-1]
