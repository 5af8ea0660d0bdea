"""Recorded convolution workspaces on a real GPU: one ``--vram-update`` run on the GPU makes
the next estimate of a convolution outside the shipped table exact, and recording leaves
the GPU's figures as they are.

Skipped where no GPU is visible (the repository conftest skips ``@pytest.mark.cuda``).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cuda

# A 3 -> 32 3x3 stride-2 stem, trained one step. Batch 5 at 72 x 72 is outside the shipped
# table's grid (batches 1 to 256, images 32 to 518, none of them 5 or 72), so only the
# recorded file can give the estimator its workspace.
STEM = """
    import torch
    import torch.nn as nn


    def test_stem(vram):
        model = vram.build(lambda: nn.Conv2d(3, 32, 3, stride=2, padding=1).to(vram.device))

        def step():
            x = torch.randn(5, 3, 72, 72, device=vram.device)
            model(x).float().sum().backward()

        vram.run(step)
"""
KEY = "test_stem.py::test_stem"
UNKNOWN = "pytest_vram.backends.estimate.ConvWorkspaceUnknown"


def _figures(record: dict) -> tuple[int, int]:
    return record["model_bytes"], record["peak_bytes"]


def test_a_recorded_stem_makes_the_estimate_equal_the_gpu(pytester, measure_cuda, plugin_args):
    pytester.makepyfile(test_stem=STEM)

    def estimate(*args: str) -> tuple[pytest.RunResult, dict]:
        out = pytester.path / "estimate.json"
        result = pytester.runpytest_subprocess(
            *plugin_args, "--vram-backend=estimate", f"--vram-json={out}",
            "-p", "no:cacheprovider", "-p", "no:randomly", *args,
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        return result, json.loads(out.read_text())["measurements"][0]

    before, _ = estimate()
    assert "ConvWorkspaceUnknown" in before.stdout.str()  # the gap the recording closes

    plain = measure_cuda(outcomes={"passed": 1})[KEY]
    recorded = measure_cuda("--vram-update", outcomes={"passed": 1})[KEY]
    assert _figures(recorded) == _figures(plain)  # recording changes no figure

    files = list((pytester.path / "baselines" / "cudnn-workspaces").glob("sm*_cudnn*.yaml"))
    assert len(files) == 1, files
    text = files[0].read_text()
    assert "\n  fwd float32 x=5,3,72,72:" in text and "\n  bwd float32 " in text
    assert "written: baselines/cudnn-workspaces/" in measure_cuda.last_result.stdout.str()

    after, record = estimate("-W", f"error::{UNKNOWN}")
    assert "ConvWorkspaceUnknown" not in after.stdout.str()
    assert _figures(record) == _figures(plain)
