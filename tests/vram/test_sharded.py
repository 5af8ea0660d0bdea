"""Per-rank memory of sharded training: how many 8 GiB GPUs train the 2.57B and 3.08B models.

The report's "it fits an 8 GB laptop GPU" fails for training ``large`` and ``maximum`` on
one GPU (``test_zoo_claims.py``). The next step is data-parallel sharded training with
FSDP2 ``fully_shard`` (every block, then the root; the scalar Phase 8 curvature, which
FSDP2 cannot shard, stays replicated), one rank per GPU. Each test measures one rank's
build and training step (the zoo's ``train_step``: batch 1, 512 tokens, checkpointed
blocks, FP16 weights and autocast, no optimiser) in a world of 2, 4 or 8 ranks, with
FSDP2's all-gather and reduce-scatter buffers, and holds it to the 8 GiB budget.

On the estimator the world is simulated (one process, rank 0 measured; FSDP2 pads every
rank's shard to the same size, so every rank holds the same bytes). On GPUs the tests run
one process per GPU under ``torchrun --nproc-per-node=N`` and are skipped otherwise.

The claim "Phase 8 uses no more memory than Phase 7" is checked per rank as well; where
the figures contradict it, the case is a strict expected failure quoting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import model_zoo
from pytest_vram import baselines, world
from pytest_vram.backends.base import Backend
from pytest_vram.claims import at_most
from pytest_vram.measure import Measurement, Meter
from pytest_vram.units import Tolerance, format_delta

pytestmark = pytest.mark.vram

PRESETS = ("large", "maximum")
WORLDS = (2, 4, 8)
LAPTOP_BUDGET = "8GiB"
CLAIM_TOLERANCE = Tolerance(relative=0.001)  # the report's own "< 0.1%", as test_zoo_claims
TRAIN = {"batch": 1, "seq_len": 512}

BASELINES = Path(__file__).resolve().parents[2] / "baselines"
THIS_FILE = "tests/vram/test_sharded.py"


def build_sharded(preset: str, phase: str, *, device: str) -> Any:
    """``phase`` of ``preset`` sharded by FSDP2 over the default (world) mesh, then materialised
    on ``device``: each rank allocates only its shards."""
    from torch.distributed.fsdp import fully_shard

    model = model_zoo.build_model(preset, phase, device="meta")
    # FSDP2 shards along dim 0 and refuses 0-dim parameters (Phase 8's curvature).
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for block in model.blocks:
        fully_shard(block, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)
    model.to_empty(device=device)
    model_zoo.build.init_weights(model, seed=0)
    return model


def measure(meter: Any, preset: str, phase: str) -> Measurement:
    """One rank's build and training step on ``meter`` (the ``vram`` fixture or a Meter)."""
    device = meter.device if hasattr(meter, "device") else meter.backend.device
    model = meter.build(build_sharded, preset, phase, device=device)
    meter.run(model_zoo.train_step, model, **TRAIN)
    return meter.measurements[-1]


class ShardedFigures:
    """Per-rank figures measured in this process, keyed by (preset, phase, ranks)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._figures: dict[tuple[str, str, int], Measurement] = {}

    def record(self, preset: str, phase: str, ranks: int, figures: Measurement) -> None:
        self._figures[preset, phase, ranks] = figures

    def get(self, preset: str, phase: str, ranks: int) -> Measurement:
        """The figures of one case, measured now (in a simulated world) if not yet."""
        key = (preset, phase, ranks)
        if key not in self._figures:
            if not getattr(self._backend, "simulates_ranks", False):
                pytest.skip(
                    f"{preset}/{phase} with {ranks} ranks was not measured in this process; "
                    f"on GPUs run the suite under `torchrun --nproc-per-node={ranks}`"
                )
            with world.simulated(ranks, f"{THIS_FILE} ({preset}, {phase}, {ranks} ranks)"):
                meter = Meter(self._backend)
                meter.start()
                try:
                    self._figures[key] = measure(meter, preset, phase)
                finally:
                    meter.finish()
        return self._figures[key]


@pytest.fixture(scope="session")
def sharded_figures(vram_backend: Backend) -> ShardedFigures:
    return ShardedFigures(vram_backend)


TRAIN_CASES = [
    pytest.param(
        preset,
        phase,
        ranks,
        id=f"{preset}-{phase}-{ranks}ranks",
        marks=pytest.mark.vram(world_size=ranks, budget=LAPTOP_BUDGET),
    )
    for preset in PRESETS
    for phase in model_zoo.PHASES
    for ranks in WORLDS
]


@pytest.mark.parametrize(("preset", "phase", "ranks"), TRAIN_CASES)
def test_train_per_rank(
    vram: Any, sharded_figures: ShardedFigures, preset: str, phase: str, ranks: int
) -> None:
    """One rank's training peak fits the 8 GiB budget (the marker's budget fails it if not)."""
    sharded_figures.record(preset, phase, ranks, measure(vram, preset, phase))


def _recorded_peaks(preset: str, phase: str, ranks: int) -> dict[str, int]:
    """profile -> committed baseline peak of one case, for every profile that has it."""
    key = f"{THIS_FILE}::test_train_per_rank[{preset}-{phase}-{ranks}ranks]@world_size={ranks}"
    peaks = {}
    for path in sorted(BASELINES.glob("*.yaml")):
        recorded = baselines.load(path)
        if recorded is not None and key in recorded.entries:
            peaks[recorded.profile] = recorded.entries[key].peak_bytes
    return peaks


def _excess_reason(preset: str, ranks: int) -> str:
    phase7 = _recorded_peaks(preset, "phase7", ranks)
    phase8 = _recorded_peaks(preset, "phase8", ranks)
    figures = [
        f"{profile}: {format_delta(phase8[profile], phase7[profile])}"
        for profile in sorted(phase7.keys() & phase8.keys())
    ]
    return f"Phase 8 per-rank peak above Phase 7 ({'; '.join(figures) or 'no baseline yet'})"


#: Where the per-rank figures contradict the claim (on the estimator: every case, by
#: 0.16% to 0.40%; the reasons quote the committed baselines).
PHASE8_ABOVE_PHASE7 = {(preset, ranks) for preset in PRESETS for ranks in WORLDS}

CLAIM_CASES = [
    pytest.param(
        preset,
        ranks,
        id=f"{preset}-{ranks}ranks",
        marks=(
            [pytest.mark.xfail(strict=True, reason=_excess_reason(preset, ranks))]
            if (preset, ranks) in PHASE8_ABOVE_PHASE7
            else []
        ),
    )
    for preset in PRESETS
    for ranks in WORLDS
]


@pytest.mark.parametrize(("preset", "ranks"), CLAIM_CASES)
def test_phase8_per_rank_peak_not_above_phase7(
    sharded_figures: ShardedFigures, preset: str, ranks: int
) -> None:
    phase7 = sharded_figures.get(preset, "phase7", ranks)
    phase8 = sharded_figures.get(preset, "phase8", ranks)
    result = at_most(
        phase8.peak_bytes,
        phase7.peak_bytes,
        tolerance=CLAIM_TOLERANCE,
        subject=f"{preset} with {ranks} ranks: Phase 8 per-rank training peak",
        reference="Phase 7's",
    )
    assert result.holds, result.message
