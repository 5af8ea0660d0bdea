"""Make fake CUDA tensors behave like CUDA tensors on a machine without a usable GPU.

``FakeTensorMode`` gives tensors that report ``device="cuda"`` and run torch's meta
kernels, so shapes, dtypes and allocation sizes are those of CUDA. Without a visible GPU
four things still differ from a real CUDA run; each is fixed here and only while the
estimator's scope is active (everything is restored on exit):

1. **Autograd aborts.** Autograd records a stream for every CUDA tensor it sees, which asks
   torch for the CUDA device guard; a CPU-only build has none and ``c10`` calls
   ``std::terminate``. :func:`install_cuda_guard` registers a no-op guard for the CUDA device
   type (torch's own Python-backend guard, ``torch._C._acc.DeviceGuard``, written into the
   CUDA slot of c10's guard registry).
2. **The backward engine insists on CUDA streams** once it sees a CUDA gradient, and asks
   ``at::getAccelerator()``, which is "none" without a GPU. :func:`engine_is_asking` lets the
   estimator's fake mode report such tensors as ``meta`` *to the autograd engine only*
   (queries coming straight from C++ engine code, never from a Python kernel, a
   checkpoint recomputation or the test), so the engine takes its stream-free path; the
   kernels themselves still see CUDA tensors and the device of every result stays CUDA.
3. **Autocast is silently off.** ``torch.autocast("cuda")`` disables itself when CUDA is
   unavailable. The availability check is patched, so the real C++ ``AutocastCUDA`` kernels
   run (fp16 casts for matmuls, fp32 for norms and softmax, the weight-cast cache).
4. **SDPA takes the math path** (the CUDA kernel chooser is not compiled in), which
   materialises an O(L^2) attention matrix. :func:`install_sdpa_kernel` registers a kernel
   for ``aten::_scaled_dot_product_attention_math`` on the AutogradCUDA key, which every
   SDPA call on CUDA tensors reaches (however the function was imported, on any thread);
   inside the scope it applies the Hopper choice (cuDNN on torch >= 2.10, then flash,
   memory-efficient, math) and calls the fused op, whose outputs and backward are the real
   ones.

Besides, the runtime calls ordinary code makes (``torch.cuda.synchronize``, streams,
events, the current device, NVTX ranges) act on one emulated device, doing nothing.

On a machine with a real GPU none of this is installed: fake CUDA tensors already work
there and SDPA's own chooser runs.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

_REGISTRY_SYMBOL = "_ZN3c104impl26device_guard_impl_registryE"
_install_lock = threading.Lock()
_guard_keepalive: list[object] = []  # the registered guard must outlive the process


def _guard_slots() -> ctypes.Array[ctypes.c_void_p] | None:
    """c10's device-guard registry (one pointer per device type), or None if not found."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(libdir, "*c10.*"))):
        try:
            lib = ctypes.CDLL(path)
            registry = ctypes.c_void_p.in_dll(lib, _REGISTRY_SYMBOL)
        except (OSError, ValueError):
            continue
        n = int(torch._C._autograd.DeviceType.PrivateUse1.value) + 1
        return (ctypes.c_void_p * n).from_address(ctypes.addressof(registry))
    return None


def install_cuda_guard() -> bool:
    """Register a no-op CUDA device guard if torch has none; True when one is in place.

    Without it, anything autograd records for a fake CUDA tensor (``.float()`` of a
    parameter, any backward) kills the process from C++. A CUDA build without a GPU has a
    guard already (and ``FakeTensorMode`` swaps in a fake one), so this only acts on
    CPU-only builds.
    """
    with _install_lock:
        slots = _guard_slots()
        if slots is None:
            return False
        cuda = int(torch._C._autograd.DeviceType.CUDA.value)
        pu1 = int(torch._C._autograd.DeviceType.PrivateUse1.value)
        if slots[cuda]:
            return True
        acc = getattr(torch._C, "_acc", None)
        if acc is None or not hasattr(acc, "register_python_privateuseone_device_guard"):
            return False

        class _NoOpCudaGuard(acc.DeviceGuard):  # type: ignore[name-defined, misc]
            """Torch's Python-backend guard, reporting the CUDA device type."""

            def type_(self) -> Any:
                return torch._C._autograd.DeviceType.CUDA

        guard = _NoOpCudaGuard()
        previous = slots[pu1]
        # The only public way to build a C++ guard object from Python registers it for
        # PrivateUse1; move it to the CUDA slot and leave PrivateUse1 as it was.
        acc.register_python_privateuseone_device_guard(guard)
        slots[cuda] = slots[pu1]
        slots[pu1] = previous
        _guard_keepalive.append(guard)
        return bool(slots[cuda])


def _python_thread_states() -> int:
    """How many Python thread states the interpreter has (the stable C API, via ctypes)."""
    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
    api.PyThreadState_Next.restype = ctypes.c_void_p
    api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
    count, state = 0, api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while state:
        count += 1
        state = api.PyThreadState_Next(state)
    return count


def _autograd_device_threads() -> int:
    """The autograd engine's device threads (named ``pt_autograd_<n>``), on Linux."""
    count = 0
    for comm in glob.glob("/proc/self/task/*/comm"):
        try:
            with open(comm) as f:
                count += f.read().startswith("pt_autograd_")
        except OSError:
            pass
    return count


_engine_threads_settled = [False]


def settle_engine_threads(timeout: float = 10.0) -> None:
    """Wait until the autograd engine's device threads have their Python thread state.

    The no-op CUDA guard reports one device, so the first backward of the process starts
    one engine device thread, whose first act is to take the GIL (``PythonEngine::
    thread_init``). On a loaded machine that can be delayed past the end of the program:
    a thread taking the GIL while the interpreter finalizes is made to exit by
    ``pthread_exit`` through C++ frames that cannot unwind, and the process aborts
    ("terminate called without an active exception", exit 134) after every test passed.
    So, once per process, after a scope in which such a thread exists, wait (releasing the
    GIL) until every thread the engine started has its thread state.
    """
    if _engine_threads_settled[0]:
        return
    engine = _autograd_device_threads()
    if not engine:
        return
    deadline = time.monotonic() + timeout
    while _python_thread_states() < threading.active_count() + engine:
        if time.monotonic() > deadline:
            return  # best effort: try again after the next scope
        time.sleep(0.001)
    _engine_threads_settled[0] = True


# -- 2. the autograd engine sees meta tensors ----------------------------------------------
_ENGINE_CODE = torch.autograd.graph._engine_run_backward.__code__
_TORCH_DIR = os.path.dirname(torch.__file__)
#: Python wrappers torch puts between C++ and a mode's __torch_dispatch__.
_WRAPPER_NAMES = frozenset({"_fn", "inner", "wrapper", "__torch_dispatch__"})


def engine_is_asking(depth: int = 2) -> bool:
    """Whether the current device query comes from the autograd engine's C++ code.

    The engine runs either on the thread that called ``backward`` (its innermost Python
    frame is then ``_engine_run_backward``) or on a device thread with no Python frame at
    all. A query from a kernel, a hook or a checkpoint recomputation has its own Python
    frames on top, so it is answered with the real (CUDA) device.
    """
    frame = sys._getframe(depth)
    while frame is not None:
        code = frame.f_code
        if code is _ENGINE_CODE:
            return True
        if code.co_name in _WRAPPER_NAMES and code.co_filename.startswith(_TORCH_DIR):
            frame = frame.f_back
            continue
        return False
    return True


# -- 4. SDPA backend choice -----------------------------------------------------------------
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
_scopes = [0]  # emulated scopes entered in the process (the backward engine has own threads)


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
    """``aten::_scaled_dot_product_attention_math`` for (fake) CUDA tensors (point 4).

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


_library: list[Any] = []  # the registration must live as long as the process


def install_sdpa_kernel() -> bool:
    """Register :func:`_math_kernel` once per process on a CPU-only build (no real CUDA
    tensor can reach it there); True when it is in place, False on a CUDA build."""
    if torch.backends.cuda.is_built():
        return False  # see _python_sdpa_patches
    with _install_lock:
        if not _library:
            lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 - an aten kernel
            lib.impl("_scaled_dot_product_attention_math", _math_kernel, "AutogradCUDA")
            _library.append(lib)
        return True


# -- 3 and the rest: patches active inside the scope ----------------------------------------
def _rng_state(device: object = "cuda") -> torch.Tensor:
    # fork_rng saves and restores the CUDA RNG state; fake kernels draw no random numbers.
    return torch.zeros(16, dtype=torch.uint8, device="cpu")


def _noop() -> Any:
    """A new do-nothing function: one object per patched name. Dynamo maps torch's functions
    to tracing rules by object (``trace_rules.get_torch_obj_rule_map``, built once, at the
    first ``torch.compile``); one object under two names with different rules fails it
    ("Duplicate torch object")."""

    def stub(*args: object, **kwargs: object) -> None:
        return None

    return stub


class _EmulatedStream(torch.Stream):
    """``torch.cuda.Stream`` inside the scope: a stream of the emulated device (the CUDA
    device guard's, so ``wait_stream``, ``synchronize``, ``query`` and ``record_event``
    work and do nothing). Fake kernels run synchronously: streams order nothing."""

    def __new__(cls, device: object = None, priority: int = 0, **kwargs: object) -> Any:
        return super().__new__(cls, device="cuda", priority=priority)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    @property
    def cuda_stream(self) -> int:
        return 0


class _EmulatedEvent(torch.Event):
    """``torch.cuda.Event`` inside the scope: records and waits do nothing; no time passes
    on the emulated device, so ``elapsed_time`` is 0.0 ms."""

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        return super().__new__(cls, device="cuda")

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def elapsed_time(self, end_event: object) -> float:
        return 0.0


def _stream() -> Any:
    """A new ``current_stream``/``default_stream``: one object per name (see ``_noop``)."""

    def stream(device: object = None) -> _EmulatedStream:
        return _EmulatedStream()

    return stream


def _patches() -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every patch the emulation needs."""
    import torch.cuda.amp.common as amp_common
    import torch.cuda.nvtx as nvtx

    return [
        (amp_common, "amp_definitely_not_available", lambda: False),
        # the runtime calls ordinary code makes, on the one emulated device (index 0);
        # none allocates (what the memory queries answer: the estimator's scope)
        (torch.cuda, "synchronize", _noop()),
        (torch.cuda, "current_device", lambda: 0),
        (torch.cuda, "set_device", _noop()),
        (torch.cuda, "Stream", _EmulatedStream),
        (torch.cuda, "Event", _EmulatedEvent),
        (torch.cuda, "current_stream", _stream()),
        (torch.cuda, "default_stream", _stream()),
        (torch.cuda, "set_stream", _noop()),
        (nvtx, "range_push", lambda *a, **k: 0),
        (nvtx, "range_pop", lambda *a, **k: 0),
        (nvtx, "mark", _noop()),
        (torch.cuda, "is_bf16_supported", lambda *a, **k: True),
        (torch.cuda, "get_rng_state", _rng_state),
        (torch.cuda, "set_rng_state", _noop()),
        (torch.cuda, "get_rng_state_all", lambda: [_rng_state()]),
        (torch.cuda, "set_rng_state_all", _noop()),
        (torch.cuda, "manual_seed", _noop()),
        (torch.cuda, "manual_seed_all", _noop()),
        (torch.cuda, "get_device_capability", lambda *a, **k: EMULATED_CAPABILITY),
        (torch.cuda, "get_device_name", lambda *a, **k: EMULATED_NAME),
        *_python_sdpa_patches(),
    ]


_original_sdpa = F.scaled_dot_product_attention


def _python_sdpa_patches() -> list[tuple[object, str, object]]:
    """On a CUDA build without a visible GPU, SDPA's C++ code runs the real CUDA kernel
    chooser (which needs a device) instead of calling the math operator: there the Python
    entry points are replaced, as before the dispatcher kernel existed. A name imported
    before the scope still reaches the chooser; CPU-only builds (CI) have no such gap."""
    if not torch.backends.cuda.is_built():
        return []
    return [
        (F, "scaled_dot_product_attention", scaled_dot_product_attention),
        (torch._C._nn, "scaled_dot_product_attention", scaled_dot_product_attention),
    ]


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


#: What the emulated GPU reports: an H200 (Hopper, sm90). Libraries pick kernels by it
#: (transformers' mixture-of-experts layers use ``_grouped_mm`` from sm80 on).
EMULATED_CAPABILITY = (9, 0)
EMULATED_NAME = "NVIDIA H200 (emulated by pytest-vram)"


@contextmanager
def emulated_cuda_runtime() -> Iterator[None]:
    """Apply the patches of points 3 and 4 (and CUDA RNG stubs); restore them on exit."""
    saved: list[tuple[object, str, object]] = []
    try:
        for owner, name, value in _patches():
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
        _scopes[0] += 1
        try:
            yield
        finally:
            _scopes[0] -= 1
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


__all__ = [
    "emulated_cuda_runtime",
    "engine_is_asking",
    "install_cuda_guard",
    "install_sdpa_kernel",
    "scaled_dot_product_attention",
    "sdp_choice",
    "settle_engine_threads",
]
