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
* ATen's CUDA reductions (``sum``, ``mean``, ``linalg_vector_norm``, ``amax``, ``var_mean``,
  ...) that split each output's inputs across thread blocks allocate a staging buffer and
  int semaphores (:mod:`._reduce`, a port of ``Reduce.cuh``'s launch configuration): e.g.
  8 MiB + 32 B for the fp32 column sum of a [1024, 1024] gradient (8,389,120 B with the
  allocator's rounding), 75 MiB for a bias gradient ``sum`` of fp16 [3152, 3072] over
  dim 0. All 2,121 reduction calls of the 28 realistic corpus workloads measured on the
  H200 (72 distinct shapes, ``benchmarks/reduce_corpus_check.py``) match to the byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_vram.backends import _conv_workspace, _reduce

_aten = torch.ops.aten

#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {}

#: operator overload -> (args, kwargs, outputs) -> the outputs CUDA allocates, in order
OUTPUT_PLAN: dict[Any, Callable[[Any, Any, Any], list[Any]]] = {}

#: operator overload -> (args, kwargs, outputs) -> the memory format CUDA gives each output
#: (None: as the meta kernel made it), where the meta kernel decides otherwise
OUTPUT_LAYOUT: dict[Any, Callable[[Any, Any, Any], list[Any]]] = {}

#: In-place operators without outputs and without a meta kernel on some torch versions
#: (the fused SGD/Adagrad optimizer steps, the tensor-lr fused Adam/AdamW): their CUDA
#: kernels update their inputs through ``multi_tensor_apply`` and allocate nothing, so the
#: fake mode skips them (the tensors they mutate are already counted).
#: ``record_stream`` (no meta kernel either) only marks a block for a stream: the caching
#: allocator counts a block's bytes as freed when its tensor dies, recorded streams or not.
NO_ALLOCATION_INPLACE = frozenset(
    overload
    for name in (
        "_fused_sgd_",
        "_fused_adagrad_",
        "_fused_adam_",
        "_fused_adamw_",
        "record_stream",
    )
    if hasattr(_aten, name)
    for overload in (getattr(getattr(_aten, name), o) for o in getattr(_aten, name).overloads())
)

# -- meta kernels torch lacks ------------------------------------------------------------
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
_meta_library: list[Any] = []  # the registration must live as long as the process


def install_missing_meta_kernels() -> None:
    """Register :data:`MISSING_META` once per process, each where torch still lacks it."""
    if _meta_library:
        return
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 - aten kernels
    for name, kernel in MISSING_META.items():
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "Meta"):
            lib.impl(name, kernel, "Meta")
    _meta_library.append(lib)


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


_LOWP = (torch.float16, torch.bfloat16)
_DOUBLE = (torch.float64, torch.complex128)


def _reduced_mask(ndim: int, dims: Any) -> list[bool]:
    """``make_dim_mask``: no dimensions (None or []) reduces them all."""
    if ndim == 0 or dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return [True] * ndim
    if isinstance(dims, int):
        dims = [dims]
    mask = [False] * ndim
    for d in dims:
        mask[int(d) % ndim] = True
    return mask


class _Flat:
    """``self.reshape(-1)`` of a tensor, as ``_reduce_buffers`` reads it (no tensor made)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.dtype = t.dtype
        self.shape = (t.numel(),)
        self._offset = int(t.storage_offset()) if t.is_contiguous() else 0
        self._itemsize = t.element_size()

    def dim(self) -> int:
        return 1

    def numel(self) -> int:
        return self.shape[0]

    def stride(self) -> tuple[int, ...]:
        return (1,)

    def storage_offset(self) -> int:
        return self._offset

    def element_size(self) -> int:
        return self._itemsize


def _dense_strides(t: Any) -> list[int]:
    """Strides of ``t.to(dtype)`` (``preserve_format``): kept if dense, else contiguous."""
    shape, strides = [int(n) for n in t.shape], [int(s) for s in t.stride()]
    expected = 1
    for size, stride in sorted(zip(shape, strides, strict=True), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            break
        expected *= size
    else:
        return strides  # non-overlapping and dense
    contiguous, step = [], 1
    for size in reversed(shape):
        contiguous.insert(0, step)
        step *= max(size, 1)
    return contiguous


def _reduce_buffers(
    inp: Any,
    outs: list[torch.Tensor],
    dims: Any,
    keepdim: bool,
    *,
    in_dtype: torch.dtype,
    arg_size: int,
    input_vec_size: int = 4,
    can_accumulate_in_output: bool = True,
) -> list[int]:
    """Buffers of one ``gpu_reduce_kernel`` call reducing ``inp`` into ``outs``.

    ``in_dtype`` is the kernel's ``scalar_t``: where it differs from the input's dtype,
    ``make_reduction`` first casts the input (``self.to(in_dtype)``), a temporary that
    lives for the whole call.
    """
    ndim = inp.dim()
    mask = _reduced_mask(ndim, dims)
    sizes: list[int] = []
    if inp.dtype == in_dtype:
        strides = [int(s) for s in inp.stride()]
        offset = int(inp.storage_offset()) * inp.element_size()
        itemsize = inp.element_size()
    else:
        strides = _dense_strides(inp)
        itemsize = in_dtype.itemsize
        sizes.append(inp.numel() * itemsize)
        offset = 0
    out = outs[0]
    out_strides = [int(s) for s in out.stride()]
    if not keepdim or out.dim() != ndim:
        for d in range(ndim):
            if mask[d]:
                out_strides.insert(d, 0)
    it = _reduce.build_iter(
        [int(n) for n in inp.shape],
        strides,
        offset,
        itemsize,
        out_strides,
        out.element_size(),
        mask,
        noutputs=len(outs),
    )
    return sizes + _reduce.gpu_reduce_buffers(
        it,
        arg_size,
        itemsize,
        input_vec_size,
        can_accumulate_in_output,
        out.element_size(),
        max_threads=256 if in_dtype == torch.complex128 else 512,
    )


def _acc_size(scalar: torch.dtype, out: torch.dtype) -> int:
    """``sizeof(acc_t)`` of sum/mean/prod (``reduce_dispatch``): float for 16-bit inputs."""
    if scalar in _LOWP:
        return 4
    return out.itemsize


def _from_out_ty(inp: torch.Tensor, out: torch.Tensor) -> torch.dtype:
    """``make_reduction_from_out_ty``: the input's dtype for fp16/bf16 -> fp32, else out's."""
    if inp.dtype in _LOWP and out.dtype == torch.float32:
        return inp.dtype
    return out.dtype


def _accumulating(scalar: torch.dtype, out: torch.dtype) -> bool:
    # gpu_reduce_kernel: a 16-bit output of a 16-bit input does not accumulate partial
    # results of 32-bit sub-reductions itself (arg_t is convertible otherwise)
    return not (scalar in _LOWP and scalar == out)


def _sum_like(dims_at: int | None) -> Callable[[Any, Any, Any], list[int]]:
    """sum / mean / prod / nansum (``sum_functor``, ``MeanOps``, vt0 4; 16-bit: vec 8)."""

    def buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
        inp = args[0]
        if dims_at is None:
            dims, keepdim = None, False
        else:
            dims = _arg(args, kwargs, dims_at, "dim", None)
            keepdim = bool(_arg(args, kwargs, dims_at + 1, "keepdim", False))
        if inp.numel() == 0:
            return []
        scalar = _from_out_ty(inp, out)
        return _reduce_buffers(
            inp,
            [out],
            dims,
            keepdim,
            in_dtype=scalar,
            arg_size=_acc_size(scalar, out.dtype),
            input_vec_size=8 if scalar in _LOWP else 4,
            can_accumulate_in_output=_accumulating(scalar, out.dtype),
        )

    return buffers


def _vector_norm_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    """``linalg_vector_norm``: ``norm_kernel_cuda``, acc float (double for double inputs)."""
    inp = args[0]
    dims = _arg(args, kwargs, 2, "dim", None)
    keepdim = bool(_arg(args, kwargs, 3, "keepdim", False))
    mask = _reduced_mask(inp.dim(), dims)
    if inp.numel() == 0 or all(int(n) == 1 for n, m in zip(inp.shape, mask, strict=True) if m):
        return []  # a reduction over size-1 dimensions is an abs() (or ne(0)), no reduction
    scalar = _from_out_ty(inp, out)
    if inp.is_complex():
        scalar = inp.dtype if out.dtype == inp.dtype.to_real() else scalar
    arg_size = 8 if scalar in _DOUBLE else 4
    return _reduce_buffers(
        inp,
        [out],
        dims,
        keepdim,
        in_dtype=scalar,
        arg_size=arg_size,
        can_accumulate_in_output=_accumulating(scalar, out.dtype),
    )


def _values_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    """amax / amin (``max_values_kernel_cuda``): the accumulator is the input's type."""
    inp = args[0]
    dims = _arg(args, kwargs, 1, "dim", [])
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    if inp.numel() == 0:
        return []
    return _reduce_buffers(
        inp,
        [out],
        dims,
        keepdim,
        in_dtype=inp.dtype,
        arg_size=inp.element_size(),
        can_accumulate_in_output=_accumulating(inp.dtype, out.dtype),
    )


#: sizeof(pair<scalar_t, int64_t>) of MaxOps/ArgMaxOps: 16 for every scalar type
_PAIR_SIZE = 16


def _max_dim_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    """max.dim / min.dim (values and indices, ``MaxOps``)."""
    inp = args[0]
    if inp.numel() == 0 or (inp.numel() == 1 and inp.dim() == 0):
        return []
    dim = _arg(args, kwargs, 1, "dim", 0)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    return _reduce_buffers(
        inp,
        [out[0], out[1]],
        [dim],
        keepdim,
        in_dtype=inp.dtype,
        arg_size=_PAIR_SIZE,
        can_accumulate_in_output=False,
    )


def _arg_reduction_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    """argmax / argmin (``ArgMaxOps``): no dim reduces ``self.reshape(-1)``."""
    inp = args[0]
    dim = _arg(args, kwargs, 1, "dim", None)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    if inp.numel() == 0:
        return []
    copy: list[int] = []
    if dim is None:
        if not inp.is_contiguous():
            copy = [inp.numel() * inp.element_size()]  # reshape copies
        inp = _Flat(inp)
        dims, keepdim = [0], False
    else:
        if inp.dim() and int(inp.shape[int(dim) % inp.dim()]) == 1:
            return []  # result.fill_(0)
        dims = [dim]
    return copy + _reduce_buffers(
        inp,
        [out],
        dims,
        keepdim,
        in_dtype=inp.dtype,
        arg_size=_PAIR_SIZE,
        can_accumulate_in_output=False,
    )


def _welford_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    """var / std / var_mean / std_mean (``WelfordOps``, vt0 2): WelfordData<acc, int32>."""
    inp = args[0]
    dims = _arg(args, kwargs, 1, "dim", None)
    keepdim = bool(kwargs.get("keepdim", False))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if inp.numel() == 0 or inp.is_complex():
        return []
    # WelfordData {acc mean, m2; int32 n; acc nf}: 16 bytes with float, 32 with double
    arg_size = 32 if inp.dtype == torch.float64 else 16
    return _reduce_buffers(
        inp,
        outs,
        dims,
        keepdim,
        in_dtype=inp.dtype,
        arg_size=arg_size,
        input_vec_size=2,
        can_accumulate_in_output=False,
    )


def _logic_buffers(dims_at: int | None) -> Callable[[Any, Any, Any], list[int]]:
    """all / any (``and_kernel_cuda``): the accumulator is the input's type."""

    def buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
        inp = args[0]
        if dims_at is None:
            dims, keepdim = None, False
        else:
            dims = _arg(args, kwargs, dims_at, "dim", None)
            keepdim = bool(_arg(args, kwargs, dims_at + 1, "keepdim", False))
        if inp.numel() <= 1:
            return []  # fill_ or copy_, no reduction
        return _reduce_buffers(
            inp, [out], dims, keepdim, in_dtype=inp.dtype, arg_size=inp.element_size()
        )

    return buffers


def _register_reductions() -> None:
    table: list[tuple[str, str, Callable[[Any, Any, Any], list[int]]]] = [
        ("sum", "dim_IntList", _sum_like(1)),
        ("sum", "default", _sum_like(None)),
        ("nansum", "default", _sum_like(1)),
        ("mean", "dim", _sum_like(1)),
        ("mean", "default", _sum_like(None)),
        ("prod", "dim_int", _sum_like(1)),
        ("prod", "default", _sum_like(None)),
        ("linalg_vector_norm", "default", _vector_norm_buffers),
        ("amax", "default", _values_buffers),
        ("amin", "default", _values_buffers),
        ("max", "dim", _max_dim_buffers),
        ("min", "dim", _max_dim_buffers),
        ("argmax", "default", _arg_reduction_buffers),
        ("argmin", "default", _arg_reduction_buffers),
        ("var", "correction", _welford_buffers),
        ("std", "correction", _welford_buffers),
        ("var_mean", "correction", _welford_buffers),
        ("std_mean", "correction", _welford_buffers),
        ("all", "default", _logic_buffers(None)),
        ("all", "dim", _logic_buffers(1)),
        ("all", "dims", _logic_buffers(1)),
        ("any", "default", _logic_buffers(None)),
        ("any", "dim", _logic_buffers(1)),
        ("any", "dims", _logic_buffers(1)),
    ]
    for name, overload, model in table:
        packet = getattr(_aten, name, None)
        if packet is not None and hasattr(packet, overload):
            INTERNAL_BUFFERS[getattr(packet, overload)] = model


_register_reductions()


def _bias_grad_buffers(grad_output: Any, grad_bias: Any) -> list[int]:
    """``grad_output.sum((0, 2, 3))``: ``convolution_backward``'s bias gradient where the
    backend does not compute it (ATen's own kernels)."""
    dims = [0, *range(2, grad_output.dim())]
    return _sum_like(1)((grad_output, dims), {}, grad_bias)


def _conv_forward_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    return _conv_workspace.forward_buffers(args, kwargs, out, _bias_grad_buffers)


def _conv_backward_buffers(args: Any, kwargs: Any, out: Any) -> list[int]:
    return _conv_workspace.backward_buffers(args, kwargs, out, _bias_grad_buffers)


INTERNAL_BUFFERS[_aten.convolution.default] = _conv_forward_buffers
INTERNAL_BUFFERS[_aten.convolution_backward.default] = _conv_backward_buffers
# The C++ meta kernel of a convolution picks no cuDNN layout (meta is not CUDA): its results
# are contiguous where cuDNN makes channels-last ones.
OUTPUT_LAYOUT[_aten.convolution.default] = _conv_workspace.forward_layout
OUTPUT_LAYOUT[_aten.convolution_backward.default] = _conv_workspace.backward_layout


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
