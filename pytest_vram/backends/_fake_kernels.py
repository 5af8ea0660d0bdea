"""Memory that CUDA kernels allocate internally, invisible at the dispatcher.

A fake tensor runs an operator's meta kernel, which creates the operator's outputs and
nothing else. The real CUDA implementation of some operators allocates more through the
caching allocator for the duration of the call (accumulators, workspaces); those bytes are
in the real peak. Each entry of :data:`INTERNAL_BUFFERS` maps an operator to a function
giving the sizes of those transient buffers, allocated after the outputs and freed before
the call returns, in the order the CUDA code allocates them.

Persistent, lazily created buffers (cuBLAS/cuBLASLt workspaces) are not modelled: the
measurement contract warms them up before the first test and excludes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {}


def warmup_workload() -> None:
    """A tiny forward and backward touching the paths the estimator uses (one-time costs)."""
    import torch.nn as nn
    from torch.utils.checkpoint import checkpoint

    with torch.device("meta"):
        attn = nn.MultiheadAttention(16, 2, batch_first=True, dtype=torch.float16)
        mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU())
    attn.to_empty(device="cuda")
    mlp.to_empty(device="cuda")
    x = torch.empty(1, 8, 16, device="cuda", dtype=torch.float16)

    def block(h: torch.Tensor) -> torch.Tensor:
        return mlp(attn(h, h, h, need_weights=False)[0])

    with torch.autocast("cuda", dtype=torch.float16):
        y = checkpoint(block, x, use_reentrant=False)
        loss = y.float().logsumexp(-1).sum()
    loss.backward()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        block(x)
