"""Meta kernels for aten operators that torch runs on CUDA but gives none.

Without a meta kernel no fake tensor can run the operator. :func:`install` registers each
of :data:`MISSING_META` once per process, only where torch still lacks it; the
registration stays (``patching.PROCESS_WIDE``, "missing-meta-kernels").
"""

from __future__ import annotations

from typing import Any

import torch

from pytest_vram.backends.patching import install_for_process

#: ``GRU_WORKSPACE_MULTIPLIER`` of ATen's CUDA GRU cell: the forward saves r, z, n, hx and
#: the hidden n-gate for the backward, one [batch, hidden] slice each
GRU_WORKSPACE_MULTIPLIER = 5


def _gru_cell_meta(
    input_gates: Any, hidden_gates: Any, hx: Any, input_bias: Any = None, hidden_bias: Any = None
) -> tuple[Any, Any]:
    """``_thnn_fused_gru_cell`` (``nn.GRUCell`` on CUDA): the workspace, then ``hy``."""
    workspace = hx.new_empty((hx.size(0), hx.size(1) * GRU_WORKSPACE_MULTIPLIER))
    hy = torch.empty_like(hx, memory_format=torch.contiguous_format)
    return hy, workspace


def _gru_cell_backward_meta(grad_hy: Any, workspace: Any, has_bias: bool) -> tuple[Any, ...]:
    """``_thnn_fused_gru_cell_backward``: the two [batch, 3 * hidden] gate gradients and
    ``grad_hx``; with biases, their gradients (a ``sum`` over the batch of each gate
    gradient; its reduction staging, if any, is not counted)."""
    hidden = workspace.size(1) // GRU_WORKSPACE_MULTIPLIER
    grad_input_gates = workspace.new_empty((workspace.size(0), hidden * 3))
    grad_hidden_gates = workspace.new_empty((workspace.size(0), hidden * 3))
    grad_hx = torch.empty_like(grad_hy, memory_format=torch.contiguous_format)
    if not has_bias:
        return grad_input_gates, grad_hidden_gates, grad_hx, None, None
    return (
        grad_input_gates,
        grad_hidden_gates,
        grad_hx,
        grad_input_gates.new_empty((hidden * 3,)),
        grad_hidden_gates.new_empty((hidden * 3,)),
    )


#: aten operators that torch runs on CUDA but gives no meta kernel (so no fake tensor could
#: run them), with the outputs their CUDA kernels allocate
MISSING_META = {
    "_thnn_fused_gru_cell": _gru_cell_meta,
    "_thnn_fused_gru_cell_backward": _gru_cell_backward_meta,
}
_meta_library: list[Any] = []  # a registration lasts as long as its Library object


def install() -> None:
    """Register :data:`MISSING_META` once per process, each where torch still lacks it."""
    if _meta_library:
        return
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 - aten kernels
    for name, kernel in MISSING_META.items():
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "Meta"):
            lib.impl(name, kernel, "Meta")
    _meta_library.append(lib)
    install_for_process("missing-meta-kernels")
