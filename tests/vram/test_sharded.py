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

The claim "Phase 8 uses no more memory than Phase 7" is declared per rank as well
(``vram_claims``, evaluated over the figures the training tests measure, wherever they
ran: under xdist on the controller, so no worker measures a case twice); where the figures
contradict it, the claim is declared ``expect_broken`` and the report quotes them.
"""

from __future__ import annotations

from typing import Any

import pytest

import model_zoo
from pytest_vram.claims import Claim, peak

pytestmark = pytest.mark.vram

PRESETS = ("large", "maximum")
WORLDS = (2, 4, 8)
LAPTOP_BUDGET = "8GiB"
TRAIN = {"batch": 1, "seq_len": 512}
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


def measure(vram: Any, preset: str, phase: str) -> None:
    """One rank's build and training step with the ``vram`` fixture."""
    model = vram.build(build_sharded, preset, phase, device=vram.device)
    vram.run(model_zoo.train_step, model, **TRAIN)


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
def test_train_per_rank(vram: Any, preset: str, phase: str, ranks: int) -> None:
    """One rank's training peak fits the 8 GiB budget (the marker's budget fails it if not)."""
    measure(vram, preset, phase)


def key(preset: str, phase: str, ranks: int) -> str:
    """The baseline key of one case's measurement (a world size is part of it)."""
    return f"{THIS_FILE}::test_train_per_rank[{preset}-{phase}-{ranks}ranks]@world_size={ranks}"


#: Where the per-rank figures contradict the claim (on the estimator: every case, by
#: 0.16% to 0.40%; the claims' report quotes the figures).
PHASE8_ABOVE_PHASE7 = {(preset, ranks) for preset in PRESETS for ranks in WORLDS}

vram_claims = [
    Claim.at_most(
        f"test_phase8_per_rank_peak_not_above_phase7[{preset}-{ranks}ranks]",
        peak(key(preset, "phase8", ranks)),
        peak(key(preset, "phase7", ranks)),
        within="0.1%",  # the report's own "< 0.1%", as test_zoo_claims
        expect_broken=(
            "Phase 8 per-rank peak above Phase 7"
            if (preset, ranks) in PHASE8_ABOVE_PHASE7
            else None
        ),
    )
    for preset in PRESETS
    for ranks in WORLDS
]
