"""The staging buffers of ATen's CUDA reductions, by operator.

ATen's CUDA reductions (``sum``, ``mean``, ``linalg_vector_norm``, ``amax``, ``var_mean``,
...) that split each output's inputs across thread blocks allocate a staging buffer and
int semaphores for the duration of the call (:mod:`.reduce_launch`, a port of
``Reduce.cuh``'s launch configuration): e.g. 8 MiB + 32 B for the fp32 column sum of a
[1024, 1024] gradient (8,389,120 B with the allocator's rounding), 75 MiB for a bias
gradient ``sum`` of fp16 [3152, 3072] over dim 0. All 2,121 reduction calls of the 28
realistic corpus workloads measured on the H200 (72 distinct shapes) match to the byte.
This module maps each reduction operator (its arguments, the kernel's accumulator type
and vector sizes) onto that launch configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_vram.backends.estimate.kernels import reduce_launch

_aten = torch.ops.aten


def _arg(args: Any, kwargs: Any, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


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
    it = reduce_launch.build_iter(
        [int(n) for n in inp.shape],
        strides,
        offset,
        itemsize,
        out_strides,
        out.element_size(),
        mask,
        noutputs=len(outs),
    )
    return sizes + reduce_launch.gpu_reduce_buffers(
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


def _reductions() -> dict[Any, Callable[[Any, Any, Any], list[int]]]:
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
    return {
        getattr(packet, overload): model
        for name, overload, model in table
        if (packet := getattr(_aten, name, None)) is not None and hasattr(packet, overload)
    }


#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS = _reductions()


def bias_grad_buffers(grad_output: Any, grad_bias: Any) -> list[int]:
    """``grad_output.sum((0, 2, 3))``: ``convolution_backward``'s bias gradient where the
    backend does not compute it (ATen's own kernels)."""
    dims = [0, *range(2, grad_output.dim())]
    return _sum_like(1)((grad_output, dims), {}, grad_bias)
