"""A world of one on the GPU: the same ``world_size=1`` test measured for real and estimated.

The test file below shards a zoo model with FSDP2 (as ``tests/vram/test_sharded.py`` does)
and trains one step; it runs once with ``--vram-backend=cuda`` (a real one-rank NCCL
group in the process) and once with ``--vram-backend=estimate`` (a fake one-rank world),
each in a fresh interpreter. Both must report the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[2]

SHARDED_TEST = """
import pytest
import torch.distributed as dist

import model_zoo
from test_sharded import build_sharded

@pytest.mark.vram(world_size=1)
@pytest.mark.parametrize("phase", model_zoo.PHASES)
@pytest.mark.parametrize("preset", ["small", "standard"])
def test_fsdp2_train(vram, preset, phase):
    assert dist.get_world_size() == 1
    model = vram.build(build_sharded, preset, phase, device=vram.device)
    vram.run(model_zoo.train_step, model, batch=1, seq_len=512)
"""


def _measure(
    pytester: pytest.Pytester, backend: str, plugin_args: list[str]
) -> dict[str, dict[str, Any]]:
    out = pytester.path / f"{backend}.json"
    result = pytester.runpytest_subprocess(
        *plugin_args, f"--vram-backend={backend}", "-p", "no:cacheprovider", f"--vram-json={out}"
    )
    result.assert_outcomes(passed=4)
    return {m["key"]: m for m in json.loads(out.read_text())["measurements"]}


def test_world_of_one_estimate_equals_the_real_rank(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin_args: list[str]
) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    paths = [str(REPO), str(REPO / "tests" / "vram"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    pytester.makepyfile(test_world_of_one=SHARDED_TEST)
    real = _measure(pytester, "cuda", plugin_args)
    estimated = _measure(pytester, "estimate", plugin_args)
    assert sorted(real) == sorted(estimated)
    differ = {
        key: {f: (real[key][f], estimated[key][f]) for f in ("model_bytes", "peak_bytes")}
        for key in real
        if (real[key]["model_bytes"], real[key]["peak_bytes"])
        != (estimated[key]["model_bytes"], estimated[key]["peak_bytes"])
    }
    assert not differ, f"(real, estimated) bytes differ: {differ}"
