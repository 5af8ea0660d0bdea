"""Compiled workloads on baselines: ``torch.compile``'d training and inference steps, small
configurations (see ``compiled_workloads``; the realistic sizes run on an H200 in
``benchmarks/compile_accuracy.py``).

Each test compiles its model and warms it up in the build step, so the measured step is
the compiled program's steady state (docs/usage.md, "Compiled code"), and starts from a
fresh compiler, so no earlier test's compiled code or shapes change its program. A term
the estimator does not know (a convolution's workspace, a matmul's padding) is an error
here: every workload is known to the byte.

The transformers and the CNN take tens of seconds each to compile on CI's two cores: they
carry ``slow_compile``, so that a quick local run can leave them out
(``-m "vram and not slow_compile"``); the memory job runs them all, see docs/suite.md.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="Inductor needs triton: pip install 'pytest-vram[compile]'")

import torch  # noqa: E402
from compiled_workloads import WORKLOADS, warmed  # noqa: E402

REFUSED = "the estimate does not model CUDA graph trees (torch.compile mode='reduce-overhead')"
#: compiled in tens of seconds each on two CPU cores
SLOW = {
    "gpt2-inference",
    "gpt2-train-adamw",
    "gpt2-dynamic-lengths",
    "llama-block-sdpa-gqa-bf16-train",
    "resnet-train-sgd-momentum",
}

pytestmark = [
    pytest.mark.filterwarnings(f"error::{warning}")
    for warning in (
        "pytest_vram.backends.estimate.kernels.convolution.ConvWorkspaceUnknown",
        "pytest_vram.backends.estimate.kernels.pad_mm.MatmulPaddingUnknown",
    )
]


@pytest.fixture(autouse=True)
def fresh_compiler() -> None:
    """No compiled code from an earlier test, on every backend (the estimator does it
    itself too): its shapes would make this test's compile dynamic."""
    torch._dynamo.reset()


def _params(name: str) -> object:
    marks = [pytest.mark.vram(skip_estimate=REFUSED)] if WORKLOADS[name].refused_by_estimate else []
    if name in SLOW:
        marks.append(pytest.mark.slow_compile)
    return pytest.param(name, marks=marks)


@pytest.mark.vram
@pytest.mark.parametrize("name", [_params(name) for name in WORKLOADS])
def test_compiled(vram, name: str) -> None:
    workload = WORKLOADS[name]
    state = vram.build(warmed(workload), "small", vram.device)
    vram.run(workload.work, state, "small", vram.device)
    del state
