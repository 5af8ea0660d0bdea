"""SDPA on fake CUDA tensors where no GPU is usable: the kernel an H100/H200 would pick.

Without a GPU, ``F.scaled_dot_product_attention`` takes the math path (the CUDA kernel
chooser is not compiled in, or needs a device), which materialises an O(L^2) attention
matrix that no GPU allocates. :func:`install_sdpa_kernel` registers a kernel for
``aten::_scaled_dot_product_attention_math`` on the AutogradCUDA key, which every SDPA call
on CUDA tensors reaches on a CPU-only torch (however the function was imported, on any
thread); inside a scope it applies the Hopper choice (:func:`sdp_choice`: cuDNN on torch
>= 2.10, then flash, memory-efficient, math) and calls the fused operator, whose outputs
and backward are the real ones. The registration stays for the process
(``patching.PROCESS_WIDE``, "sdpa-math-kernel"). On a CUDA build without a GPU the Python
entry points are replaced for each scope instead (:func:`install`).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import torch
import torch.nn.functional as F

from pytest_vram.backends.patching import Patches, install_for_process

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def prefers_cudnn_attention() -> bool:
    """Whether the emulated Hopper GPU tries cuDNN attention first.

    ``sdp_utils.cpp`` (``check_prefer_cudnn_attention``) moves cuDNN to the front of the
    priority order on sm90/sm100 when the cuDNN runtime is newer than 9.15, unless
    ``TORCH_CUDNN_SDPA_DEPRIORITIZED=1``. torch 2.11+cu130 on an H200 does so (measured:
    training and inference run ``_scaled_dot_product_cudnn_attention``); older torch
    versions (< 2.10) kept flash first.
    """
    if os.environ.get("TORCH_CUDNN_SDPA_DEPRIORITIZED", "").lower() in ("1", "true", "on"):
        return False
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return version >= (2, 10)


def sdp_choice(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    enable_gqa: bool,
) -> str:
    """The SDPA backend a Hopper GPU (sm90) picks: "cudnn", "flash", "efficient" or "math".

    Mirrors the priority of ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` (cuDNN
    first where :func:`prefers_cudnn_attention`, then flash, memory-efficient, math) and the
    checks that decide for dense inputs.
    """
    tensors = (query, key, value)
    if any(t.dim() != 4 for t in tensors) or any(t.is_nested for t in tensors):
        return "math"
    if any(t.stride(-1) != 1 for t in tensors) or any(t.size(-2) == 0 for t in tensors):
        return "math"
    dtype = query.dtype
    if key.dtype != dtype or value.dtype != dtype:
        return "math"
    same_heads = query.size(1) == key.size(1) == value.size(1) or enable_gqa
    same_batch = query.size(0) == key.size(0) == value.size(0)
    head = query.size(-1)
    same_head_dim = head == key.size(-1) == value.size(-1)
    causal_ok = not (is_causal and query.size(-2) != key.size(-2))
    backends = torch.backends.cuda
    if (
        prefers_cudnn_attention()
        and backends.cudnn_sdp_enabled()
        and dtype in _LOW_PRECISION
        and attn_mask is None
        and same_batch
        and not enable_gqa
        and query.size(1) == key.size(1) == value.size(1)
        and same_head_dim
        and head <= 128
        and head % 8 == 0
        and causal_ok
    ):
        return "cudnn"
    if (
        backends.flash_sdp_enabled()
        and dtype in _LOW_PRECISION
        and attn_mask is None
        and same_batch
        and same_heads
        and same_head_dim
        and head <= 256
        and causal_ok
    ):
        return "flash"
    alignment = 4 if dtype == torch.float32 else 8
    # check_last_dim_stride_equals_1_dense: on CUDA a mask must be contiguous in its last
    # dimension too (T5's position bias is a permuted view, stride num_heads: math path).
    mask_ok = attn_mask is None or attn_mask.stride(-1) == 1
    if (
        backends.mem_efficient_sdp_enabled()
        and mask_ok
        and dtype in (*_LOW_PRECISION, torch.float32)
        and same_batch
        and not enable_gqa
        and query.size(1) == key.size(1) == value.size(1)
        and head == key.size(-1)
        and head % alignment == 0
        and value.size(-1) % alignment == 0
        and head > 0
    ):
        return "efficient"
    return "math"


def _fused_attention(
    choice: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """The fused SDPA operator ``choice`` names, called as ``attention.cu`` calls it."""
    needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if choice == "cudnn":
        return torch.ops.aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, needs_lse, dropout_p, is_causal, False, scale=scale
        )[0]
    if choice == "flash":
        head = query.size(-1)
        scale = 1.0 / math.sqrt(head) if scale is None else scale
        pad = (-head) % 8
        if pad:  # the CUDA path pads the head dim to a multiple of 8, then slices
            query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
        out = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale
        )[0]
        return out[..., :head] if pad else out
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, needs_lse, dropout_p, is_causal, scale=scale
    )[0]


_MATH = torch.ops.aten._scaled_dot_product_attention_math.default
#: emulated scopes active in the process (read by the kernel, which also runs on the
#: autograd engine's own threads)
_scopes = [0]


def _math_kernel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    dropout_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten::_scaled_dot_product_attention_math`` for (fake) CUDA tensors.

    On a CPU-only build ``scaled_dot_product_attention``'s C++ code finds no CUDA kernel
    chooser and always calls the math operator. Registered for the AutogradCUDA key, this
    kernel sees every such call, however SDPA was reached (``F.``, an imported name, the
    autograd engine's thread recomputing a checkpoint), after the C++ code has applied
    autocast and converted a boolean mask, as on a GPU. Where the emulated sm90 chooser
    picks a fused kernel it runs that; otherwise the math decomposition itself.
    """
    args = (query, key, value, attn_mask, dropout_p, is_causal, dropout_mask)
    if _scopes[0] and dropout_mask is None:
        choice = sdp_choice(query, key, value, attn_mask, is_causal, enable_gqa)
        if choice != "math":
            out = _fused_attention(
                choice, query, key, value, attn_mask, dropout_p, is_causal, scale
            )
            # The math operator's second output (the attention weights) is dropped by SDPA.
            return out, query.new_empty(0)
    return _MATH.decompose(*args, scale=scale, enable_gqa=enable_gqa)


_install_lock = threading.Lock()
_library: list[Any] = []  # a registration lasts as long as its Library object


def install_sdpa_kernel() -> bool:
    """Register :func:`_math_kernel` once per process on a CPU-only build (no real CUDA
    tensor can reach it there); True when it is in place, False on a CUDA build, where
    :func:`install` replaces the Python entry points for each scope instead."""
    if torch.backends.cuda.is_built():
        return False
    with _install_lock:
        if not _library:
            lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 - an aten kernel
            lib.impl("_scaled_dot_product_attention_math", _math_kernel, "AutogradCUDA")
            _library.append(lib)
            install_for_process("sdpa-math-kernel")
        return True


def install(patches: Patches) -> None:
    """The SDPA emulation of one scope: the kernel applies the sm90 choice while the scope
    is active; on a CUDA build the Python entry points are replaced for the scope."""
    _scopes[0] += 1
    patches.on_restore(_leave_scope)
    if torch.backends.cuda.is_built():
        # SDPA's C++ code runs the real CUDA kernel chooser there (which needs a device)
        # instead of the math operator. A name imported before the scope still reaches
        # the chooser; CPU-only builds (CI) have no such gap.
        patches.set(F, "scaled_dot_product_attention", scaled_dot_product_attention)
        patches.set(torch._C._nn, "scaled_dot_product_attention", scaled_dot_product_attention)


def _leave_scope() -> None:
    _scopes[0] -= 1


_original_sdpa = F.scaled_dot_product_attention


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as CUDA runs it (CUDA builds without a GPU)."""
    args = (query, key, value, attn_mask, dropout_p, is_causal)
    if torch.is_autocast_enabled("cuda"):
        # SDPA is on autocast's lower-precision list: the AutocastCUDA kernel casts the
        # floating inputs first (fp64 stays), then runs the op with autocast off.
        low = torch.get_autocast_dtype("cuda")
        query, key, value = (
            t.to(low) if t.is_floating_point() and t.dtype != torch.float64 else t
            for t in (query, key, value)
        )
        args = (query, key, value, attn_mask, dropout_p, is_causal)
    with torch._C._ExcludeDispatchKeyGuard(
        torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)
    ):
        choice = sdp_choice(query, key, value, attn_mask, is_causal, enable_gqa)
        if choice == "math":
            return _original_sdpa(*args, scale=scale, enable_gqa=enable_gqa)
        return _fused_attention(choice, *args, scale)
