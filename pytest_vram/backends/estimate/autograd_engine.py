"""Autograd on fake CUDA tensors where torch has no CUDA: the device guard and the engine.

Two things abort or go astray when autograd meets a fake CUDA tensor on a machine without
a usable GPU:

1. **Autograd aborts.** Autograd records a stream for every CUDA tensor it sees, which asks
   torch for the CUDA device guard; a CPU-only build has none and ``c10`` calls
   ``std::terminate``. :func:`install_cuda_guard` registers a no-op guard for the CUDA
   device type (torch's own Python-backend guard, ``torch._C._acc.DeviceGuard``, written
   into the CUDA slot of c10's guard registry). It stays for the process
   (``patching.PROCESS_WIDE``, "cuda-device-guard").
2. **The backward engine insists on CUDA streams** once it sees a CUDA gradient, and asks
   ``at::getAccelerator()``, which is "none" without a GPU. :func:`engine_is_asking` lets the
   estimator's fake mode report such tensors as ``meta`` *to the autograd engine only*
   (queries coming straight from C++ engine code, never from a Python kernel, a
   checkpoint recomputation or the test), so the engine takes its stream-free path; the
   kernels themselves still see CUDA tensors and the device of every result stays CUDA.

The guard reports one device, so the first backward starts one engine device thread;
:func:`settle_engine_threads` keeps that thread from aborting the interpreter at exit.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
import time
from typing import Any

import torch

from pytest_vram.backends.patching import install_for_process

_REGISTRY_SYMBOL = "_ZN3c104impl26device_guard_impl_registryE"
_install_lock = threading.Lock()
_guard_keepalive: list[object] = []  # c10 keeps a raw pointer to the registered guard


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
        install_for_process("cuda-device-guard")
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


#: (looked up leniently: a torch without it is reported by torch_compat at creation)
_ENGINE_CODE = getattr(
    getattr(torch.autograd.graph, "_engine_run_backward", None), "__code__", None
)
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
