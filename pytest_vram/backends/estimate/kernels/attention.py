"""What the fused SDPA kernels allocate on the GPU beyond what their meta kernels make.

Measured on an H200 (torch 2.11.0+cu130, cuDNN 9.1x; every allocation of a workload
recorded with the operator it happened in):

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

The argument and output positions read here are checked when the backend is created
(``torch_compat.POSITIONAL_ARGS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_aten = torch.ops.aten

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


#: operator overload -> (args, kwargs, outputs) -> the outputs CUDA allocates, in order
OUTPUT_PLAN: dict[Any, Callable[[Any, Any, Any], list[Any]]] = {
    _aten._scaled_dot_product_cudnn_attention.default: _cudnn_sdpa_outputs,
    _aten._scaled_dot_product_efficient_attention.default: _efficient_sdpa_outputs,
}
#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {
    _aten._scaled_dot_product_cudnn_attention.default: _cudnn_sdpa_fwd_buffers,
    _aten._scaled_dot_product_cudnn_attention_backward.default: _cudnn_sdpa_bwd_buffers,
}
