"""``torch.compile`` on the estimator: the compiled program's allocations, in order.

A compiled module or function (``torch.compile(model)``, ``torch.compile(fn)``; the
``inductor``, ``aot_eager`` and ``eager`` backends, default mode) runs in the estimator's
scope as on the GPU: Dynamo traces the fake CUDA tensors in its own fake mode (the
estimator sees no tracing), AOTAutograd partitions the joint graph, and Inductor
generates its CUDA wrapper and Triton kernels for the emulated card (``backends.cards``).
The wrapper then runs on fake tensors: every ``empty_strided_cuda`` is a request to the
allocator model through the storage tracker, a ``# reuse`` or in-place buffer is none,
``del bufN`` frees, extern kernels (cuBLAS ``mm`` with ``out=``) and fallback operators
run through the fake mode with their kernel models; Triton kernel launches do nothing.
The figure is therefore Inductor's own program, counted by the same allocator model as
eager code (docs/estimator.md, "Compiled models").

What is changed, and when:

* **While compiling** (Dynamo's compile callbacks, ``torch._dynamo.callback``: a frame, and
  AOTAutograd's lazy backward compile), a :class:`~pytest_vram.backends.patching.Patches`
  of its own, restored when the compile ends: the autograd engine, run by AOTAutograd's
  joint trace on ``FunctionalTensor`` wrappers, is told ``meta`` when it asks their
  device (:func:`_engine_sees_meta`); Dynamo's device interface and Triton's driver
  answer as the emulated card (:func:`_emulated_compiler_device`); fake modes never run an
  operator on a device, and the constants Inductor computes while compiling are computed
  on the CPU (:func:`_no_device_work`); convolutions are laid out as cuDNN lays them out
  (:func:`_convolutions_laid_out_as_cudnn`); ``pad_mm``'s timing is answered from
  :mod:`.kernels.pad_mm`; Triton kernels are not compiled (:class:`NoOpKernel`); the
  persistent caches and profiles are off (:data:`_CONFIG`) and one compile thread is
  used. ``mode="reduce-overhead"``, ``"max-autotune"`` and ``cpp_wrapper`` are refused
  there (:func:`_refuse_modes`).
* **While the scope is active**: the callbacks are registered (and registered again after
  a ``torch._dynamo.reset()``), and ``torch.cuda``'s device exchange
  (``torch.cuda.device``, the wrapper's ``_DeviceGuard``) answers the one emulated device.
* **Between tests**: a test starts with no compiled code (:func:`forget_compiled_code`).
* **For the process** (``patching.PROCESS_WIDE``): every wrapper Inductor loads in a scope
  has its C++ helpers rebound to dispatching equivalents (:func:`_bind_wrapper`; such a
  wrapper only ever runs fake tensors, "compiled-wrappers"); Dynamo runs the estimator's
  code that C++ calls without tracing it (:func:`_dynamo_skips_the_estimator`,
  "dynamo-skips-the-estimator").

Only where the CUDA runtime is emulated (no usable GPU): with a GPU the compiler would
time and run kernels on it, so a compile on the estimator is refused there.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses import fake_tensor as _fake_tensor

from pytest_vram.backends.cards import Card
from pytest_vram.backends.estimate.kernels import pad_mm
from pytest_vram.backends.estimate.refusals import EstimateUnsupported, user_frames
from pytest_vram.backends.patching import Patches, install_for_process, installed_for_process

_TORCH_DIR = os.path.dirname(torch.__file__)
_PRIM_DEVICE = torch.ops.prim.device.default
_META = torch.device("meta")
_ENGINE_CODE = torch.autograd.graph._engine_run_backward.__code__
#: the fix for a compile without triton
TRITON_FIX = "pip install 'pytest-vram[compile]'"
_SKIP = "or mark it @pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."


def triton_installed() -> bool:
    """Whether the ``triton`` package is importable (Inductor's CUDA code needs it)."""
    return importlib.util.find_spec("triton") is not None


# -- the scope ---------------------------------------------------------------------------
def dynamo_maps_torch_itself() -> None:
    """Dynamo's table of torch's functions is built from torch's own objects, before a
    scope replaces any (call it before patching).

    Dynamo maps torch's functions to tracing rules by object, in a table built once per
    process (``trace_rules.get_torch_obj_rule_map``) from the objects the names hold at
    that moment. Built inside a scope (the process's first ``torch.compile`` in a vram
    test), it would hold the scope's wrappers of torch's factories in place of torch's
    own builtins; a wrapper traced in a later compile then calls a builtin Dynamo does not
    know, breaks its graph and runs eagerly, so a compiled figure would depend on which
    test compiled first. (Dynamo is imported by :func:`install` in every scope anyway.)"""
    from torch._dynamo import trace_rules

    trace_rules.get_torch_obj_rule_map()


def install(patches: Patches, mode: Any, card: Card, tracker: Any, emulate: bool) -> None:
    """For a scope: compiles started in it run under the compile-time changes (``mode``:
    the scope's fake mode)."""
    from torch._dynamo import callback as dynamo_callback

    compiling = _Compiling(mode, card, tracker, emulate)
    handler = dynamo_callback.callback_handler

    def register() -> None:
        handler.register_start_callback(compiling.start)
        handler.register_end_callback(compiling.end)

    def unregister() -> None:
        if compiling.start in handler.start_callbacks:
            handler.remove_start_callback(compiling.start)
        if compiling.end in handler.end_callbacks:
            handler.remove_end_callback(compiling.end)
        compiling.abandon()

    clear = handler.clear

    def clear_and_keep_ours() -> None:
        # torch._dynamo.reset() (a test's fresh start) clears every callback
        clear()
        register()

    register()
    patches.on_restore(unregister)
    patches.set(handler, "clear", clear_and_keep_ours)
    if emulate:
        patches.set(torch.cuda, "_exchange_device", _exchange_device)
        patches.set(torch.cuda, "_maybe_exchange_device", _maybe_exchange_device)


#: whether code was compiled in a scope since the last :func:`forget_compiled_code`
_compiled = [False]


def forget_compiled_code() -> None:
    """A test starts with no compiled code, as in a fresh process (``torch._dynamo.reset``),
    where an earlier one compiled: Dynamo's caches would otherwise carry its programs and
    its automatic-dynamic state (a shape seen by an earlier test makes this test's compile
    dynamic) and count toward its recompile limit, so a figure would depend on which tests
    ran before in the process. Nothing is done where nothing was compiled."""
    if _compiled[0]:
        _compiled[0] = False
        torch._dynamo.reset()


def _dynamo_skips_the_estimator() -> None:
    """Dynamo never traces the estimator's code that C++ calls (once per process, at its
    first compile in a scope).

    Where compiled code breaks its graph, Dynamo runs the rest of the frame eagerly with
    its frame callback still set, and tries to trace every Python frame entered from
    there: the fake mode's ``__torch_dispatch__`` (which opts out of torch's per-call
    Dynamo guard, for speed: ``EstimatingFakeMode._should_skip_dynamo``), the release
    callbacks of dying storages, the SDPA kernel, the compile callbacks (a backward
    compiled lazily from such code: tracing them would compile inside Dynamo's own
    callback lock), and whatever they call (logging, inspect, importlib). Their code
    objects get Dynamo's "skip, and skip every frame it calls" execution strategy, which
    Dynamo's frame hook reads only while its callback is set: eager estimates pay
    nothing."""
    if "dynamo-skips-the-estimator" in installed_for_process():
        return
    from torch._C._dynamo.eval_frame import set_code_exec_strategy
    from torch._dynamo.types import FrameAction, FrameExecStrategy

    from pytest_vram.backends.estimate import sdpa_choice, tracker
    from pytest_vram.backends.estimate.fake_mode import EstimatingFakeMode
    from pytest_vram.backends.estimate.known import values

    skip = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
    for function in (
        _Compiling.start,
        _Compiling.end,
        EstimatingFakeMode.__torch_dispatch__,
        tracker.StorageTracker._release,
        values._release,
        sdpa_choice._math_kernel,
    ):
        set_code_exec_strategy(function.__code__, skip)
    install_for_process("dynamo-skips-the-estimator")


# One object per name, the same in every scope: Dynamo maps torch's functions to tracing
# rules by object, once per process (see ``cuda_runtime._noop``).
def _exchange_device(device: int) -> int:
    """``torch.cuda.device(i)``/``_DeviceGuard`` entering: the one emulated device, 0."""
    return 0


def _maybe_exchange_device(device: int) -> int:
    """``torch.cuda.device(i)``/``_DeviceGuard`` leaving: the one emulated device, 0."""
    return 0


class _Compiling:
    """Dynamo's compile callbacks: the compile-time changes from a compile's start to its
    end (Dynamo runs the outermost start and end only, so nested compiles share them)."""

    def __init__(self, mode: Any, card: Card, tracker: Any, emulate: bool) -> None:
        self._mode = mode
        self._card = card
        self._tracker = tracker
        self._emulate = emulate
        self._patches: Patches | None = None
        self._stack = contextlib.ExitStack()
        self._thread: int | None = None

    def start(self, args: Any) -> None:
        if not self._emulate:
            raise EstimateUnsupported(
                f"the estimate backend cannot compile the torch.compile'd code called at "
                f"{_user_call()} where a GPU is usable: Inductor would time and "
                "run its kernels on that GPU. Measure this test with --vram-backend=cuda, or "
                "hide the GPU (CUDA_VISIBLE_DEVICES='') to estimate it as without one, " + _SKIP
            )
        if self._patches is not None:
            return
        _compiled[0] = True
        # before anything of this compile is traced; a process that never compiles keeps
        # Dynamo's defaults for the estimator's code
        _dynamo_skips_the_estimator()
        problem = _compile_internals_problem()
        if problem is not None:
            raise EstimateUnsupported(
                f"the estimate backend cannot compile the torch.compile'd code called at "
                f"{_user_call()}: {problem}"
            )
        patches = Patches()
        self._patches = patches
        self._thread = threading.get_ident()
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(patches.restore)
                _compile_time(patches, stack, self._mode, self._card, self._tracker)
                self._stack = stack.pop_all()
        except BaseException:
            self._patches = None
            raise

    def end(self, args: Any) -> None:
        if self._patches is None or self._thread != threading.get_ident():
            return
        self._patches = None
        stack, self._stack = self._stack, contextlib.ExitStack()
        stack.close()

    def abandon(self) -> None:
        """The scope exits: nothing of a compile may stay (a compile cut short)."""
        if self._patches is not None:
            self._patches = None
            stack, self._stack = self._stack, contextlib.ExitStack()
            stack.close()


#: configuration while compiling: no persistent cache read or written (a program made for
#: the emulated card is never stored for a GPU's compile, nor the other way round; the
#: figure never depends on what an earlier process left), no automatic-dynamic profile
#: from earlier processes (PGO), one compile thread (no worker processes: no kernel is
#: compiled)
_CONFIG: dict[str, dict[str, object]] = {
    "torch._inductor.config": {
        "compile_threads": 1,
        "fx_graph_cache": False,
        "fx_graph_remote_cache": False,
        "autotune_local_cache": False,
        "autotune_remote_cache": False,
        "bundled_autotune_remote_cache": False,
    },
    "torch._functorch.config": {
        "enable_autograd_cache": False,
        "enable_remote_autograd_cache": False,
    },
    "torch._dynamo.config": {
        "automatic_dynamic_local_pgo": False,
        "automatic_dynamic_remote_pgo": False,
    },
}


@functools.cache
def _compile_internals_problem() -> str | None:
    """What this torch lacks of the compiler internals the estimate uses (once per process)."""
    from pytest_vram.backends.estimate import torch_compat

    return torch_compat.check_compile()


def _compile_time(
    patches: Patches, stack: contextlib.ExitStack, mode: Any, card: Card, tracker: Any
) -> None:
    """Everything that is changed while one compile runs (see the module docstring)."""
    for config, changes in _CONFIG.items():
        stack.enter_context(importlib.import_module(config).patch(changes))
    _engine_sees_meta(patches)
    _no_device_work(patches)
    _emulated_compiler_device(patches, card)
    _wrappers_run_on_fake(patches)
    _refuse_modes(patches)
    _optimizer_state_is_counted(patches, mode)
    _convolutions_laid_out_as_cudnn(patches)
    pad_mm.install(patches, tracker, card.capability)


def _convolutions_laid_out_as_cudnn(patches: Patches) -> None:
    """The layout of a compiled convolution's results, as cuDNN gives it.

    Fake tensors take a convolution's memory format from the backend torch would select
    (``_conv_determine_backend_memory_format``); a CPU-only torch has no cuDNN to select,
    so Inductor would plan contiguous results where the GPU's are channels-last (its
    layout optimisation makes a CNN's activations channels-last), and the wrapper's
    stride checks would fail on the layout the estimator gives the same call at run time
    (``kernels.convolution.cuda_memory_format``, cuDNN's rule). Both follow that rule."""
    from pytest_vram.backends.estimate.kernels.convolution import cuda_memory_format

    original = torch._C._conv_determine_backend_memory_format

    def determine(inp: Any, weight: Any, backend: Any) -> Any:
        fmt = cuda_memory_format(inp, weight)
        return original(inp, weight, backend) if fmt is None else fmt

    patches.set(torch._C, "_conv_determine_backend_memory_format", determine)


def _optimizer_state_is_counted(patches: Patches, mode: Any) -> None:
    """A compiled optimizer step (``torch.compile(opt.step)``): Dynamo does not trace the
    optimizer's lazy state creation (``_init_group``) but runs it for real while tracing,
    outside every mode, so on a GPU the state (``exp_avg``, ``exp_avg_sq``, ``step``) is
    allocated while compiling and stays. Here it runs in the scope's fake mode, so the
    state is fake CUDA tensors, counted as on the GPU."""
    from torch._dynamo.variables.optimizer import OptimizerVariable

    original = OptimizerVariable.call_method

    def call_method(self: Any, tx: Any, name: str, args: Any, kwargs: Any) -> Any:
        if name != "_init_group":
            return original(self, tx, name, args, kwargs)
        with mode:
            return original(self, tx, name, args, kwargs)

    patches.set(OptimizerVariable, "call_method", call_method)


# -- the autograd engine in AOTAutograd's joint trace ------------------------------------
#: frames between the engine's C++ device query and the handler that answers it: modes'
#: dispatch methods, their decorators, and ``OpOverload.__call__`` (a mode re-dispatching
#: the query below itself)
_PASS_THROUGH = frozenset({"__torch_dispatch__", "dispatch", "wrapper", "_fn", "inner", "__call__"})


def _engine_asking() -> bool:
    """Whether a device query comes from the autograd engine's C++ code: below the modes'
    frames (and this module's), the first Python frame is ``_engine_run_backward``. A
    backward formula, a decomposition or a hook asking has a frame of its own there and
    gets the real device (``meta`` there broke GPT-2's ``native_dropout_backward``)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code is _ENGINE_CODE:
            return True
        if code.co_filename != __file__ and not (
            code.co_name in _PASS_THROUGH and code.co_filename.startswith(_TORCH_DIR)
        ):
            return False
        frame = frame.f_back
    return False


def _engine_sees_meta(patches: Patches) -> None:
    """AOTAutograd traces the joint graph by running autograd on ``FunctionalTensor``
    wrappers of Dynamo's fake tensors; the engine asks a CUDA gradient's stream, which a
    CPU-only torch cannot answer ("Cannot access accelerator device when none is
    available"). As the estimator's own mode does for its tensors, the engine is told
    ``meta``: by every ``FakeTensorMode``, and by ``FunctionalTensorMode`` for wrappers
    made to dispatch their device (a ``FunctionalTensor`` reports a fixed one otherwise,
    which no mode can answer)."""
    from torch._subclasses import functional_tensor as functional

    handlers = _fake_tensor._DISPATCH_META_HANDLERS
    original_handler = handlers[_PRIM_DEVICE]

    def device_handler(args: Any) -> torch.device:
        if isinstance(args[0], functional.FunctionalTensor):
            device = args[0].elem.device
        else:
            device = original_handler(args)
        if device.type == "cuda" and _engine_asking():
            return _META
        return device

    mode_class = functional.FunctionalTensorMode
    original_dispatch = mode_class.__torch_dispatch__

    def mode_dispatch(self: Any, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if (
            func is _PRIM_DEVICE
            and isinstance(args[0], functional.FunctionalTensor)
            and args[0].elem.device.type == "cuda"
            and _engine_asking()
        ):
            return _META
        return original_dispatch(self, func, types, args, kwargs)

    base_wrapper = torch._C.TensorBase._make_wrapper_subclass
    wrapper_class = functional.FunctionalTensor

    def make_wrapper_subclass(cls: Any, *args: Any, **kwargs: Any) -> Any:
        # FunctionalTensor.__new__ passes dispatch_device=False as positional argument 11
        if cls is wrapper_class and len(args) > 10 and args[10] is False:
            args = (*args[:10], True, *args[11:])
        return base_wrapper(cls, *args, **kwargs)

    handlers[_PRIM_DEVICE] = device_handler
    patches.on_restore(lambda: handlers.__setitem__(_PRIM_DEVICE, original_handler))
    patches.set(mode_class, "__torch_dispatch__", mode_dispatch)
    patches.set(torch.Tensor, "_make_wrapper_subclass", staticmethod(make_wrapper_subclass))


# -- work torch does on the device while compiling ---------------------------------------
class _CudaOnCpu(torch.utils._python_dispatch.TorchDispatchMode):
    """Runs an operator that names the CUDA device on the CPU instead."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def cpu(x: Any) -> Any:
            if isinstance(x, torch.device) and x.type == "cuda":
                return torch.device("cpu")
            if isinstance(x, torch.Tensor) and x.device.type == "cuda":
                return x.to("cpu")
            return x

        args, kwargs = torch.utils._pytree.tree_map(cpu, (args, kwargs or {}))
        return func(*args, **kwargs)


def _no_device_work(patches: Patches) -> None:
    """What the compiler computes for real while compiling, done without a device.

    * every ``FakeTensorMode`` (Dynamo's, AOTAutograd's, the pattern matcher's) avoids
      device work: it asks ``torch.cuda.is_available()``, which the emulated card answers
      True, and would then run constant propagation on CUDA;
    * the proxy tracer keeps no real constants (``CONSTANT_NUMEL_LIMIT``: it computes
      one-element results such as transformers' ``torch.tensor([], device="cuda")`` for
      real, with the fake mode unset); the graph is the same;
    * the joint-graph pass folds uniform constants by running one-element versions on
      their device (``aten.scalar_tensor(-inf, device="cuda")``): on the CPU here. The
      replacement nodes take their device from the graph's metadata, so the graph is the
      GPU's (a value may differ in its last bit; no allocation depends on it).

    On a GPU these are CUDA tensors made while compiling, freed before the compiled code
    runs: compile-time memory, which the figure excludes (docs/usage.md).
    """
    from torch._inductor.fx_passes import joint_graph
    from torch.fx.experimental import proxy_tensor

    patches.set(_fake_tensor.FakeTensorMode, "avoid_device_init", property(lambda self: True))
    patches.set(proxy_tensor, "CONSTANT_NUMEL_LIMIT", -1)
    folder = joint_graph.UniformValueConstantFolder
    original = folder._deduce_value

    def _deduce_value(self: Any, node: Any) -> Any:
        with _CudaOnCpu():
            return original(self, node)

    patches.set(folder, "_deduce_value", _deduce_value)


# -- the emulated card, as the compiler asks it ------------------------------------------
def _emulated_compiler_device(patches: Patches, card: Card) -> None:
    """Dynamo's device interface (``CudaInterface``, which bound ``torch.cuda``'s functions
    at import) and Triton's driver answer as the emulated card; torch's cached answers
    about the device and Triton are dropped before and after, so nothing computed under
    the emulation outlives the compile. Inductor reads the multiprocessors (split
    reductions: the size of their partial-result buffers), the threads per
    multiprocessor, the capability (Triton's target, sm90 for the H200) and the device
    name."""
    from torch._dynamo import device_interface
    from torch._inductor.runtime.hints import DeviceProperties

    properties = torch.cuda.get_device_properties()  # the scope's EmulatedProperties
    interface = device_interface.CudaInterface
    patches.set(interface, "get_device_properties", staticmethod(lambda device=None: properties))
    patches.set(interface, "current_device", staticmethod(lambda: 0))
    patches.set(interface, "device_count", staticmethod(lambda: 1))
    patches.set(interface, "is_available", staticmethod(lambda: True))
    patches.set(interface, "synchronize", staticmethod(lambda device=None: None))
    patches.set(interface, "exchange_device", staticmethod(_exchange_device))
    patches.set(interface, "maybe_exchange_device", staticmethod(_maybe_exchange_device))
    # cudagraphs keep a graph only with the native caching allocator
    if not hasattr(torch._C, "_cuda_cudaCachingAllocator_is_enabled"):
        patches.set(torch._C, "_cuda_cudaCachingAllocator_is_enabled", lambda: True)

    def forget() -> None:
        device_interface.caching_worker_device_properties.pop("cuda", None)
        DeviceProperties.create.cache_clear()
        _forget_triton()

    forget()
    patches.on_restore(forget)
    if triton_installed():
        _emulated_triton_driver(patches, card)


def _forget_triton() -> None:
    """Drop torch's cached answers about Triton (usable? which backend? its hash)."""
    from torch.utils import _triton

    for value in list(vars(_triton).values()):
        clear = getattr(value, "cache_clear", None)
        if clear is not None:
            clear()


def _emulated_triton_driver(patches: Patches, card: Card) -> None:
    """Triton's active driver answers for the emulated card (target ``cuda:<major><minor>``,
    warp 32) without loading libcuda; Inductor asks it for its kernels' backend hash,
    which runs Triton's bundled ``ptxas --version`` only."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime.driver import driver

    arch = card.architecture
    capability = card.major * 10 + card.minor
    utils_properties = {
        "max_shared_mem": arch.shared_memory_per_block_optin,
        "max_num_regs": arch.regs_per_multiprocessor,
        "multiprocessor_count": card.multi_processor_count,
        "warpSize": arch.warp_size,
    }

    class _Utils:
        def get_device_properties(self, device: int) -> dict[str, int]:
            return dict(utils_properties)

    class EmulatedCudaDriver(CudaDriver):  # type: ignore[misc]
        def __init__(self) -> None:  # no CudaUtils: it loads libcuda
            self.utils = _Utils()
            self.launcher_cls = None

        def get_current_device(self) -> int:
            return 0

        def set_current_device(self, device: int) -> None:
            pass

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_device_capability(self, device: int = 0) -> tuple[int, int]:
            return card.capability

        def get_current_target(self) -> Any:
            return GPUTarget("cuda", capability, arch.warp_size)

    patches.set(driver, "_active", EmulatedCudaDriver())


# -- the generated wrapper on fake tensors -----------------------------------------------
class NoOpKernel:
    """A generated Triton kernel, never compiled: its launches do nothing (fake tensors
    have no values) and allocate nothing, as a kernel launch allocates nothing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getitem__(self, grid: Any) -> NoOpKernel:
        return self


def _empty_strided_cuda(size: Any, stride: Any, dtype: torch.dtype) -> torch.Tensor:
    """The wrapper's allocation: the C++ helper calls the CUDA allocator directly (a
    CPU-only torch has none); through the dispatcher the fake mode counts it."""
    return torch.empty_strided(size, stride, dtype=dtype, device="cuda")


def _reinterpret_tensor(base: torch.Tensor, size: Any, stride: Any, offset: int) -> torch.Tensor:
    """A view of ``base``'s storage (the C++ helper builds it on the TensorImpl without
    dispatch, which on a fake tensor gives a plain meta tensor): no allocation."""
    return torch.as_strided(base, size, stride, base.storage_offset() + offset)


def _copy_if_misaligned(t: torch.Tensor) -> torch.Tensor:
    """An input not 16-byte aligned is copied (the C++ helper reads ``data_ptr()``). A
    CUDA block starts 512-byte aligned, so the storage offset decides."""
    if (t.storage_offset() * t.element_size()) % 16:
        from torch._inductor.compile_fx import clone_preserve_strides

        return clone_preserve_strides(t)
    return t


def _alloc_from_pool(
    pool: torch.Tensor, offset_bytes: int, dtype: torch.dtype, size: Any, stride: Any
) -> torch.Tensor:
    """``memory_planning``'s view of a pool in another dtype (its fake kernel gives a meta
    tensor): the same view made from views, no allocation."""
    as_bytes = pool.reshape(-1).view(torch.uint8)
    return torch.as_strided(as_bytes.view(dtype), size, stride, offset_bytes // dtype.itemsize)


def _raw_stream(device: int = 0) -> int:
    return 0


def _no_check(*args: Any, **kwargs: Any) -> None:
    return None


#: the wrapper's globals bound at its import from C++ helpers, and their replacements
_WRAPPER_GLOBALS: dict[str, Callable[..., Any]] = {
    "empty_strided_cuda": _empty_strided_cuda,
    "reinterpret_tensor": _reinterpret_tensor,
    "copy_if_misaligned": _copy_if_misaligned,
    "alloc_from_pool": _alloc_from_pool,
    "get_raw_stream": _raw_stream,
    "assert_alignment": _no_check,
}


def _bind_wrapper(module: Any) -> None:
    """Rebind a loaded wrapper's C++ helpers to the dispatching equivalents above."""
    namespace = vars(module)
    for name, value in _WRAPPER_GLOBALS.items():
        if name in namespace:
            namespace[name] = value


def _wrappers_run_on_fake(patches: Patches) -> None:
    """Inductor's wrapper modules load and run on fake CUDA tensors: kernels are not
    compiled (``AsyncCompile.triton`` -> :class:`NoOpKernel`), the CUDA stream the wrapper
    imports exists on a CPU-only torch, and every module Inductor loads is rebound
    (:func:`_bind_wrapper`) before it runs."""
    from torch._inductor import async_compile
    from torch._inductor.codecache import PyCodeCache

    def triton(self: Any, kernel_name: str, source_code: str, *args: Any, **kwargs: Any) -> Any:
        return NoOpKernel(kernel_name)

    patches.set(async_compile.AsyncCompile, "triton", triton)
    if not hasattr(torch._C, "_cuda_getCurrentRawStream"):
        patches.set(torch._C, "_cuda_getCurrentRawStream", _raw_stream)
    load = PyCodeCache.load_by_key_path.__func__

    def load_by_key_path(cls: Any, *args: Any, **kwargs: Any) -> Any:
        module = load(cls, *args, **kwargs)
        _bind_wrapper(module)
        install_for_process("compiled-wrappers")
        return module

    patches.set(PyCodeCache, "load_by_key_path", classmethod(load_by_key_path))


# -- what is refused ---------------------------------------------------------------------
_MODE_REASONS = {
    "cudagraphs": (
        "CUDA graph trees allocate from a private pool that is recorded and replayed on the "
        "GPU (inputs copied into it, outputs kept between replays), which the estimator "
        "does not model"
    ),
    "max_autotune": (
        "Inductor picks its kernels by timing candidates on the GPU, allocating example "
        "inputs and workspaces while it does, and the kernels picked decide the program"
    ),
    "cpp_wrapper": (
        "the C++ wrapper is built with the CUDA toolkit and allocates from C++, outside "
        "what the estimator runs"
    ),
}


def _unsupported_mode() -> tuple[str, str] | None:
    """The mode (as the user wrote it) and the reason, if Inductor's configuration asks for
    one the estimate cannot follow."""
    import torch._inductor.config as config

    cudagraphs = bool(config.triton.cudagraphs)
    autotune = bool(
        config.max_autotune or config.max_autotune_gemm or config.max_autotune_pointwise
    )
    if cudagraphs and autotune:
        return 'mode="max-autotune"', _MODE_REASONS["cudagraphs"]
    if cudagraphs:
        return 'mode="reduce-overhead"', _MODE_REASONS["cudagraphs"]
    if autotune:
        return 'mode="max-autotune-no-cudagraphs"', _MODE_REASONS["max_autotune"]
    if config.cpp_wrapper:
        return 'options={"cpp_wrapper": True}', _MODE_REASONS["cpp_wrapper"]
    return None


def _user_call() -> str:
    """The innermost line outside torch and this package: the call of the compiled code."""
    for frame in user_frames():
        if not frame.filename.startswith(_TORCH_DIR):
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "an unknown line"


def mode_message(mode: str, reason: str) -> str:
    return (
        f"the estimate backend does not support torch.compile({mode}), compiling the code "
        f"called at {_user_call()}: {reason}. Measure this test with "
        "--vram-backend=cuda, compile it in the default mode (torch.compile(model)) for the "
        "estimate, " + _SKIP
    )


def _refuse_modes(patches: Patches) -> None:
    """Inductor's entry (``compile_fx``, whose configuration patches carry the mode) refuses
    the modes the estimate cannot follow, before anything is compiled."""
    import torch._inductor.compile_fx as compile_fx_module
    import torch._inductor.config as config

    original = compile_fx_module.compile_fx
    signature = inspect.signature(original)

    def compile_fx(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        with config.patch(bound.arguments.get("config_patches") or {}):
            refused = _unsupported_mode()
        if refused is not None:
            raise EstimateUnsupported(mode_message(*refused))
        return original(*args, **kwargs)

    patches.set(compile_fx_module, "compile_fx", compile_fx)


def triton_missing_message(exc: BaseException | None = None) -> str:
    return (
        f"the estimate backend cannot compile the torch.compile'd code called at "
        f"{_compile_line(exc)} with Inductor: Inductor generates Triton kernels for a CUDA "
        f"device, and the triton package is not installed. Fix: {TRITON_FIX} (the "
        f"triton the estimate is tested with), measure this test with --vram-backend=cuda, " + _SKIP
    )


def _compile_line(exc: BaseException | None) -> str:
    """The user's line that called the compiled code, from a compile failure's traceback."""
    if exc is None:
        return _user_call()
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    user = [f for f in frames if not f.filename.startswith((_TORCH_DIR, package))]
    return f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else "?"


def refusal_in(exc: BaseException) -> EstimateUnsupported | None:
    """The estimator's refusal inside a compile failure (Dynamo wraps what its backend or a
    callback raises: ``BackendCompilerFailed``, ``InternalTorchDynamoError``), or one for
    Inductor's own "no triton" error (``TritonMissing``, raised as it is). None for an
    exception that is not torch's."""
    if not type(exc).__module__.startswith("torch."):
        return None
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EstimateUnsupported):
            return current
        if type(current).__name__ == "TritonMissing":
            return EstimateUnsupported(triton_missing_message(exc))
        for linked in (
            getattr(current, "inner_exception", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return None
