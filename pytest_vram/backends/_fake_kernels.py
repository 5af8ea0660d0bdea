"""Memory that CUDA kernels allocate internally, invisible at the dispatcher.

A fake tensor runs an operator's meta kernel, which creates the operator's outputs and
nothing else. Two tables describe where the real CUDA kernel does otherwise:

* :data:`INTERNAL_BUFFERS` maps an operator to a function giving the sizes of the transient
  buffers its CUDA implementation allocates through the caching allocator for the duration
  of the call (workspaces, accumulators), allocated after the outputs and freed before the
  call returns, in the order the CUDA code allocates them. Those bytes are in the real peak,
  and the blocks they take shape the pool for every later allocation.
* :data:`OUTPUT_PLAN` maps an operator to a function giving the outputs the CUDA kernel
  really allocates, in its order: an output the meta kernel makes on the meta device but
  CUDA makes on the GPU is listed (and counted), one the meta kernel makes but CUDA leaves
  undefined is left out (and not counted).

Persistent, lazily created buffers (cuBLAS/cuBLASLt workspaces) are not modelled: the
measurement contract warms them up before the first test and excludes them.

Measured on an H200 (torch 2.11.0+cu130, cuDNN 9.1x; ``benchmarks/diagnose_train.py``
records every allocation of a workload with the operator it happened in):

* ``aten._scaled_dot_product_cudnn_attention`` (what SDPA runs there for fp16 attention,
  training and inference) allocates ``philox_seed`` and ``philox_offset`` (one int64 each,
  ``at::zeros`` on the GPU) first, then the output, then the fp32 softmax statistics
  (B, H, S_q, 1) *only when log-sum-exp is requested* (training), then a 256-byte cuDNN
  workspace for the duration of the call. The meta kernel makes seed and offset on meta
  and the statistics always.
* ``aten._scaled_dot_product_efficient_attention`` (fp32 attention, and fp16 with an
  arbitrary mask) allocates its output and the log-sum-exp; its philox seed and offset are
  CPU scalars (the meta kernel makes them, on the fake device, as if on the GPU: 2 x 512 B
  too many per call, measured on ``nn.TransformerEncoder`` in training).
* ``aten._scaled_dot_product_cudnn_attention_backward`` allocates dq, dk, dv, then a cuDNN
  workspace of ``4*B*H*S_q*(D_qk + 1) + 256`` bytes: an fp32 dQ accumulator
  (B, H, S_q, D_qk), the fp32 row sums of dO*O (B, H, S_q) and 256 bytes. Observed as
  4,227,328 B for (B, H, S, D) = (1, 16, 512, 128) and 6,340,864 B for (1, 24, 512, 128);
  other shapes (sequence lengths not a multiple of 128, other head dims) are extrapolated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_aten = torch.ops.aten

#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {}

#: operator overload -> (args, kwargs, outputs) -> the outputs CUDA allocates, in order
OUTPUT_PLAN: dict[Any, Callable[[Any, Any, Any], list[Any]]] = {}

#: In-place operators without outputs and without a meta kernel on some torch versions
#: (the fused SGD/Adagrad optimizer steps, the tensor-lr fused Adam/AdamW): their CUDA
#: kernels update their inputs through ``multi_tensor_apply`` and allocate nothing, so the
#: fake mode skips them (the tensors they mutate are already counted).
NO_ALLOCATION_INPLACE = frozenset(
    overload
    for name in ("_fused_sgd_", "_fused_adagrad_", "_fused_adam_", "_fused_adamw_")
    if hasattr(_aten, name)
    for overload in (getattr(getattr(_aten, name), o) for o in getattr(_aten, name).overloads())
)

CUDNN_SDPA_FWD_WORKSPACE = 256
CUDNN_SDPA_BWD_EXTRA = 256


def _arg(args: Any, kwargs: Any, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _cudnn_sdpa_outputs(args: Any, kwargs: Any, out: Any) -> list[Any]:
    # (out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, mask)
    compute_lse = bool(_arg(args, kwargs, 4, "compute_log_sumexp", False))
    plan = [out[6], out[7], out[0]]
    if compute_lse:
        plan.append(out[1])
    return plan


def _cudnn_sdpa_fwd_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    return [CUDNN_SDPA_FWD_WORKSPACE]


def _cudnn_sdpa_bwd_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    query = _arg(args, kwargs, 1, "query", None)
    b, h, s_q, d_qk = (int(n) for n in query.shape)
    return [4 * b * h * s_q * (d_qk + 1) + CUDNN_SDPA_BWD_EXTRA]


def _efficient_sdpa_outputs(args: Any, kwargs: Any, out: Any) -> list[Any]:
    # (output, log_sumexp, philox_seed, philox_offset): outside CUDA-graph capture the
    # kernel makes seed and offset as CPU scalars (at::scalar_tensor / at::empty with no
    # device), so only the output and the statistics are on the GPU.
    return [out[0], out[1]]


OUTPUT_PLAN[_aten._scaled_dot_product_cudnn_attention.default] = _cudnn_sdpa_outputs
OUTPUT_PLAN[_aten._scaled_dot_product_efficient_attention.default] = _efficient_sdpa_outputs
INTERNAL_BUFFERS[_aten._scaled_dot_product_cudnn_attention.default] = _cudnn_sdpa_fwd_buffers
INTERNAL_BUFFERS[_aten._scaled_dot_product_cudnn_attention_backward.default] = (
    _cudnn_sdpa_bwd_buffers
)


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
