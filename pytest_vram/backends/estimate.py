"""The ``estimate`` backend: CUDA memory predicted on fake tensors, without a GPU.

A test's build step and workload run unchanged on fake CUDA tensors (torch's
``FakeTensorMode``): every operator computes output shapes, dtypes and strides with its meta
kernel and allocates nothing. The fake mode used here additionally

* replays every new CUDA storage, and its release (a weak reference on the storage), through
  a model of the CUDA caching allocator (:mod:`._allocator`), so ``allocated()`` and
  ``peak()`` are ``torch.cuda.memory_allocated``/``max_memory_allocated`` to the byte;
* adds the transient buffers that fused CUDA kernels allocate internally and that no
  dispatcher-level tracker can see (:mod:`._fake_kernels`);
* where no GPU is usable, emulates what the CUDA runtime would decide (autograd's device
  guard, autocast, SDPA's kernel choice; see :mod:`._fake_cuda`).

Everything is per test: ``begin_test`` makes a fresh fake mode and an empty allocator pool
(the CUDA backend's ``empty_cache()``), ``end_test`` drops them, so figures do not depend
on test order, process or worker. See docs/estimator.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sysconfig
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses import fake_tensor as _fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorConverter, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from pytest_vram.backends import (
    _allocator,
    _conv_workspace,
    _fake_distributed,
    _fake_kernels,
    _torch_compat,
    _transformers,
)
from pytest_vram.backends._fake_cuda import (
    emulated_cuda_runtime,
    engine_is_asking,
    install_cuda_guard,
    install_sdpa_kernel,
    settle_engine_threads,
)
from pytest_vram.backends._known_values import KnownValues
from pytest_vram.backends.base import Backend, BackendUnavailable, metric_name

_PRIM_DEVICE = torch.ops.prim.device.default
_META = torch.device("meta")
_CUDA = torch.device("cuda", 0)
_HAS_CPP_META: dict[Any, bool] = {}
_EMPTY_LIKE = torch.ops.aten.empty_like.default
_LOCAL_SCALAR_DENSE = torch.ops.aten._local_scalar_dense.default
#: the most elements of a CPU tensor whose real values the fake mode keeps (its
#: ``constant``; torch keeps one element): enough for the values ordinary code computes on
#: the CPU and reads (a stochastic-depth schedule, ``torch.linspace(0, rate, depth)``),
#: small enough that computing them costs nothing
CPU_CONSTANT_NUMEL_LIMIT = 1024
#: deterministic factories whose small CPU results are computed, so their values are known
_CPU_VALUE_FACTORIES = frozenset(
    {torch.ops.aten.linspace.default, torch.ops.aten.logspace.default}
    | {getattr(torch.ops.aten.arange, name) for name in ("default", "start", "start_step")}
)
_CPU_VALUE_FACTORY_IDS = frozenset(map(id, _CPU_VALUE_FACTORIES))
#: ``Tensor.pin_memory()``: a copy in page-locked host memory, which no CUDA pool holds
_PIN_MEMORY = torch.ops.aten._pin_memory.default
_CLONE = torch.ops.aten.clone.default
_TO = torch.ops.aten.to
_TORCH_DIR = os.path.dirname(torch.__file__)
#: where installed libraries live: a value read inside one is named with its caller too
_LIBRARY_DIRS = (_TORCH_DIR, *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
#: metadata queries (``prim.device``, ``aten.size``...) FakeTensorMode answers from the fake
#: tensor itself, before any caching or kernel: the C++ side asks ``device`` of a fake tensor
#: through the mode (half of all dispatches of a sharded training step)
_METADATA_QUERIES = getattr(_fake_tensor, "_DISPATCH_META_HANDLERS", {})


class _StorageTracker:
    """Allocates a block for every new fake CUDA storage and frees it when the storage dies.

    One tracker per test, so weak-reference callbacks of storages a previous test leaked
    land in that test's (discarded) pool, never in the current one.
    """

    def __init__(
        self,
        allocator: _allocator.CachingAllocatorModel,
        observer: Any = None,
        known: KnownValues | None = None,
    ) -> None:
        self.allocator = allocator
        #: the test's known tensor values: a resized storage's contents are new
        self.known = known
        self._live: dict[int, tuple[weakref.ref[Any], _allocator.Block | None]] = {}
        #: optional attribution hook (``pytest_vram.attribution.Collector``): told of every
        #: storage made and released, and of every transient buffer
        self.observer = observer
        #: the warnings this test was given (each category once: a convolution whose
        #: workspace is unknown, an RNN)
        self._warned: set[type[Warning]] = set()

    def track(self, out: object) -> None:
        """Account for the storages of an operator's outputs (tensors, tuples, lists)."""
        if isinstance(out, FakeTensor):
            self._track_tensor(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                if isinstance(item, (FakeTensor, tuple, list)):
                    self.track(item)

    def track_planned(self, tensors: list[Any]) -> None:
        """Account for exactly ``tensors``, in order, whatever device the meta kernel gave
        them (see ``_fake_kernels.OUTPUT_PLAN``)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._track_tensor(t, any_device=True)

    def _track_tensor(self, t: torch.Tensor, any_device: bool = False) -> None:
        if not any_device and t.fake_device.type != "cuda":  # type: ignore[attr-defined]
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return  # a view, an in-place result or an output seen before
        block = self.allocator.malloc(storage.nbytes())
        self._live[key] = (weakref.ref(storage, functools.partial(self._release, key)), block)
        if self.observer is not None and block is not None:
            self.observer.allocated(key, block.size)

    def _release(self, key: int, _ref: object) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.allocator.free(entry[1])
            if self.observer is not None and entry[1] is not None:
                self.observer.freed(key)

    def resized(self, storage: Any) -> None:
        """Re-count a live storage whose size changed in place (``storage.resize_``)."""
        key = storage._cdata
        if self.known is not None:
            self.known.forget(storage)
        entry = self._live.pop(key, None)
        if entry is not None:
            self.allocator.free(entry[1])
            if self.observer is not None and entry[1] is not None:
                self.observer.freed(key)
        block = self.allocator.malloc(storage.nbytes()) if storage.nbytes() else None
        self._live[key] = (weakref.ref(storage, functools.partial(self._release, key)), block)
        if self.observer is not None and block is not None:
            self.observer.allocated(key, block.size)

    def transient(self, sizes: list[int]) -> None:
        """Allocate and immediately free buffers a kernel uses internally (peak only)."""
        if self.observer is not None:
            self.observer.transient([_allocator.round_size(n) for n in sizes])
        blocks = [self.allocator.malloc(n) for n in sizes]
        for block in reversed(blocks):
            self.allocator.free(block)
        unmodelled = getattr(sizes, "unmodelled", None)
        if unmodelled is not None:
            self._unmodelled(unmodelled)

    def _unmodelled(self, description: str) -> None:
        """Warn, once per test, of a convolution whose cuDNN workspace is not known."""
        name, _ = _conv_workspace.current_table()
        self.warn_once(
            _conv_workspace.ConvWorkspaceUnknown,
            f"the estimate counts no cuDNN workspace for the {description}: it is not "
            f"in pytest_vram/backends/data/{name}, so this test's figure may be low by "
            "up to that workspace (on the H200, 0 B to several times the input's size "
            "for common CNN layers). Fix: measure the table on the GPU the estimate "
            "models with benchmarks/cudnn_workspace.py from pytest-vram's repository, "
            "or measure this test with --vram-backend=cuda. Further convolutions of "
            "this test that are not in the table are not reported again.",
        )

    def warn_once(self, category: type[Warning], message: str) -> None:
        """Warn of ``category`` at the user's line, the first time in this test."""
        if category in self._warned:
            return
        self._warned.add(category)
        frames = _torch_compat.user_frames()
        where = next((f for f in frames if not f.filename.startswith(_TORCH_DIR)), None)
        warnings.warn_explicit(
            category(message),
            category,
            where.filename if where else "<unknown>",
            (where.lineno or 0) if where else 0,
        )


@contextlib.contextmanager
def _memory_queries(tracker: _StorageTracker) -> Iterator[None]:
    """Inside the scope without a GPU, ``torch.cuda``'s memory queries answer from the
    allocator model (they answered 0: no CUDA allocator), and the device's size is refused.

    ``memory_allocated``/``max_memory_allocated``/``memory_reserved``/``max_memory_reserved``
    give the model's counters, ``reset_peak_memory_stats`` resets its peaks, as on a GPU
    (so a reset inside a measured call lowers that call's figure there too). No size is
    emulated: ``mem_get_info`` and ``get_device_properties`` decide by the GPU's memory (a
    device map, a batch size), which the estimate would have to guess, so they fail with
    the fix.
    """
    allocator = tracker.allocator

    def refused(name: str) -> Callable[..., Any]:
        def query(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            raise EstimateUnsupported(
                f"the estimate backend emulates no GPU size: torch.cuda.{name}() at "
                f"{_user_line(_torch_compat.user_frames())} asks for the device's memory, "
                "and what the program then does (a device map, a batch size) would rest on "
                "a guess. Measure this test with --vram-backend=cuda, give the size "
                "explicitly, or mark it @pytest.mark.vram(skip_estimate='<reason>')."
            )

        return query

    patches = {
        "memory_allocated": lambda device=None: allocator.allocated,
        "max_memory_allocated": lambda device=None: allocator.peak,
        "memory_reserved": lambda device=None: allocator.reserved,
        "max_memory_reserved": lambda device=None: allocator.peak_reserved,
        "reset_peak_memory_stats": lambda device=None: allocator.reset_peak(),
        "reset_max_memory_allocated": lambda device=None: allocator.reset_peak(),
        "mem_get_info": refused("mem_get_info"),
        "get_device_properties": refused("get_device_properties"),
    }
    saved = {name: getattr(torch.cuda, name) for name in patches}
    for name, value in patches.items():
        setattr(torch.cuda, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.cuda, name, value)


class RNNNotModelled(UserWarning):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on CUDA tensors: cuDNN's RNN is not modelled,
    so the estimate may be off in either direction."""


#: the sequence RNNs of ``torch._VF`` that a GPU runs as one cuDNN call
_RNN_FUNCTIONS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@contextlib.contextmanager
def _rnns_reported(tracker: _StorageTracker) -> Iterator[None]:
    """Inside the scope, an RNN over CUDA tensors warns (:class:`RNNNotModelled`).

    ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` call ``torch._VF.<mode>``, which on a GPU runs
    cuDNN's fused RNN (its weight buffer, workspace and training reserve space are sized by
    cuDNN). The estimate runs what this torch runs on fake tensors: without cuDNN (a
    CPU-only torch) the native cell-by-cell path; with it, cuDNN's weight flattening,
    which has no fake kernel (refused). The cells (``nn.LSTMCell``...) are the same fused
    CUDA kernels on both sides and are not reported.
    """
    vf = torch._VF
    saved = {name: vf.__dict__.get(name) for name in _RNN_FUNCTIONS}

    def reporting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def rnn(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cuda":
                tracker.warn_once(
                    RNNNotModelled,
                    f"the estimate does not model cuDNN's RNN (torch._VF.{name}, which "
                    "nn.LSTM, nn.GRU and nn.RNN call): a GPU runs one cuDNN kernel with "
                    "its own workspace and training reserve space, which the estimate does "
                    "not count (it runs the cell-by-cell path, or fails where cuDNN's ops have "
                    "no fake kernel), so this test's figure may be off in either direction. "
                    "Fix: measure this "
                    "test with --vram-backend=cuda. Further RNN calls of this test are "
                    "not reported again.",
                )
            return original(*args, **kwargs)

        return rnn

    for name in _RNN_FUNCTIONS:
        setattr(vf, name, reporting(name, getattr(vf.vf, name)))
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is None:
                delattr(vf, name)
            else:
                setattr(vf, name, before)


def _is_meta_device(device: object) -> bool:
    return device is not None and torch.device(device).type == "meta"  # type: ignore[arg-type]


def _is_plain_meta(t: object) -> bool:
    # A wrapper subclass (a DTensor of FSDP2) dispatches itself, onto its plain local tensor.
    return (
        isinstance(t, torch.Tensor)
        and not isinstance(t, FakeTensor)
        and not is_traceable_wrapper_subclass(t)
        and t.is_meta
    )


def _is_real_meta_call(args: Any, kwargs: dict[str, Any]) -> bool:
    """A factory for the meta device, or an op on a plain (non-fake) meta tensor."""
    device = kwargs.get("device")
    if device is not None:
        return torch.device(device).type == "meta"
    if args:
        first = args[0]
        if isinstance(first, torch.Tensor):
            return not isinstance(first, FakeTensor) and first.device.type == "meta"
    return False


class EstimateUnsupported(RuntimeError):
    """An operation whose result (and so the memory after it) depends on tensor values."""


#: Source files whose value-dependent scalar reads decide *values*, never memory, and the
#: answer given there (by the type of the scalar read: float, int, bool).
#:
#: * weight initialisation: ``trunc_normal_`` redraws out-of-range samples until none is
#:   left; "nothing to redraw" (no CUDA memory is measured during a build anyway);
#: * ``torch.optim``: step counts and hyperparameters kept in tensors (``_get_value``,
#:   Adafactor's norms, ASGD's ``mu``) scale the update; the first step's value, 1;
#: * ``torch.amp.GradScaler``: ``found_inf`` decides whether the optimizer step runs; the
#:   estimate assumes finite gradients (0 infs), i.e. the step runs and creates its state.
_VALUE_FREE_CALLERS: tuple[tuple[str, tuple[float, int, bool]], ...] = (
    (os.path.join(_TORCH_DIR, "nn", "init.py"), (0.0, 0, False)),
    (os.path.join(_TORCH_DIR, "optim", ""), (1.0, 1, False)),
    (os.path.join(_TORCH_DIR, "amp", "grad_scaler.py"), (0.0, 0, False)),
    # clip_grad_norm_(error_if_nonfinite=True): "is the total norm NaN or inf?" decides
    # whether to raise, never what is allocated; finite, as for GradScaler's found_inf
    (os.path.join(_TORCH_DIR, "nn", "utils", "clip_grad.py"), (0.0, 0, False)),
)


def _value_free_answer(filename: str, dtype: torch.dtype) -> float | int | bool | None:
    for prefix, (real, integer, boolean) in _VALUE_FREE_CALLERS:
        if filename.startswith(prefix):
            if dtype == torch.bool:
                return boolean
            return real if dtype.is_floating_point else integer
    return None


def _value_dependent(func: Any, args: Any) -> Any:
    """Answer a value-dependent query where memory cannot depend on it, else explain.

    Fake tensors have no values: ``.item()``, ``bool(t)``, ``nonzero``, boolean indexing
    cannot be computed. Where the answer only decides values (see ``_VALUE_FREE_CALLERS``)
    a fixed answer is given; anywhere else the figure would depend on data the estimator
    does not have, so the test fails, naming the user's line.
    """
    frames = _torch_compat.user_frames()
    if func is torch.ops.aten._local_scalar_dense.default and frames:
        answer = _value_free_answer(frames[0].filename, args[0].dtype)
        if answer is not None:
            return answer
    hint = _transformers.value_dependent_hint(frames) or _data_loader_hint(frames)
    fix = f"{hint}; or measure" if hint else "Measure"
    raise EstimateUnsupported(
        f"the estimate backend cannot run {func} at {_user_line(frames)}: its result depends "
        "on tensor values, which fake tensors do not have (e.g. .item(), nonzero, boolean "
        f"indexing, data-dependent control flow). {fix} this test with --vram-backend=cuda, "
        "or mark it @pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."
    ) from None


_DATA_DIR = os.path.join(_TORCH_DIR, "utils", "data", "")


def _data_loader_hint(frames: list[traceback.FrameSummary]) -> str | None:
    """The fix for a DataLoader iterated inside the scope: its base seed and its shuffling
    (``randperm(...).tolist()``) read random tensors, which are fake there."""
    if not any(f.filename.startswith(_DATA_DIR) for f in frames):
        return None
    return (
        "torch.utils.data reads random tensors here (the DataLoader's seed, its "
        "sampler's shuffled order), which are fake inside the measured call. Iterate the "
        "DataLoader outside vram.run/vram.build and pass each batch in (its move to the "
        "GPU inside is what is measured)"
    )


def _user_line(frames: list[traceback.FrameSummary]) -> str:
    """Where the program called what the estimator cannot run: the innermost line outside
    torch (and torch's line inside it), and the first outside installed libraries."""
    where = next((f for f in frames if not f.filename.startswith(_TORCH_DIR)), None)
    line = f"{where.filename}:{where.lineno} ({where.line})" if where else "an unknown line"
    if frames and where is not frames[0]:
        line += f", inside {frames[0].filename}:{frames[0].lineno}"
    caller = next((f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)), None)
    if caller is not None and where is not None and caller is not where:
        line += f", called from {caller.filename}:{caller.lineno} ({caller.line})"
    return line


#: why an operator without a fake kernel is called, where a common idiom reaches one
_NO_KERNEL_HINTS = {
    "_nested_tensor_from_mask_left_aligned": (
        "nn.TransformerEncoder's inference fast path, which packs a padded batch into "
        "nested tensors (fake tensors have none); with enable_nested_tensor=False the "
        "padded batch runs as in training, on the GPU too"
    ),
}


#: how a ``torch.library.custom_op`` without ``register_fake`` fails in the fake mode
_CUSTOM_OP_WITHOUT_FAKE = "There was no fake impl registered for "


def _no_kernel(func: Any, torch_advice: str | None = None) -> EstimateUnsupported:
    """The error for an operator that has no fake (meta) kernel.

    torch's fake mode would run such an operator for real on zero-filled copies of its
    inputs (the "fallback kernel"): on a CPU-only torch that fails for CUDA tensors with
    "Torch not compiled with CUDA enabled", and anywhere it allocates memory the estimate
    does not see. The estimator turns the fallback off and says what to do. A custom
    operator (``torch.library.custom_op``) gets torch's own advice (``torch_advice``).
    """
    where = _user_line(_torch_compat.user_frames())
    skip = "or mark it @pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."
    if torch_advice is None and getattr(func, "namespace", "aten") not in ("aten", "prims"):
        torch_advice = "torch.library.register_fake adds one"
    if torch_advice is not None:
        return EstimateUnsupported(
            f"the estimate backend cannot run the custom operator {func} at {where}: it has "
            f"no fake kernel, so what it allocates cannot be predicted ({torch_advice}). "
            f"Register one, measure this test with --vram-backend=cuda, {skip}"
        )
    name = getattr(func, "__name__", str(func)).split(".")[0]
    hint = _NO_KERNEL_HINTS.get(name)
    because = f" (here: {hint})" if hint else ""
    return EstimateUnsupported(
        f"the estimate backend cannot run {func} at {where}: torch {torch.__version__} has "
        f"no fake (meta) kernel for it, so what it allocates cannot be predicted{because}. "
        f"Measure this test with --vram-backend=cuda, {skip}"
    )


def _shallow_copy(self: FakeTensor) -> torch.Tensor:
    """``copy.copy`` of a fake tensor: a new tensor on the same storage, as for a CUDA one.

    A real tensor pickles its storage, so ``copy.copy`` shares it; a fake tensor pickles as
    a storage-less wrapper subclass, which no allocation would ever account for.
    """
    out = self.detach()
    if self.requires_grad:
        out.requires_grad_(True)
    for key, value in self.__dict__.items():
        out.__dict__.setdefault(key, value)
    return out


def _deep_copy(self: FakeTensor, memo: dict[int, Any]) -> torch.Tensor:
    """``copy.deepcopy`` of a fake tensor: torch's own, without its data-pointer warning.

    ``Tensor.__deepcopy__`` asks a subclass for ``data_ptr()`` (0 for a fake tensor: it then
    clones), which warns; under ``-W error`` a plain ``copy.deepcopy(model)`` would fail.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        return torch.Tensor.__deepcopy__(self, memo)


@contextlib.contextmanager
def _fake_tensor_copy() -> Iterator[None]:
    """``copy.copy`` and ``copy.deepcopy`` of fake tensors as for CUDA tensors (scope only)."""
    methods = {"__copy__": _shallow_copy, "__deepcopy__": _deep_copy}
    previous = {name: FakeTensor.__dict__.get(name) for name in methods}
    for name, method in methods.items():
        setattr(FakeTensor, name, method)
    try:
        yield
    finally:
        for name, method in previous.items():
            if method is None:
                delattr(FakeTensor, name)
            else:
                setattr(FakeTensor, name, method)


@contextlib.contextmanager
def _constants_swappable(converter: FakeTensorConverter) -> Iterator[None]:
    """``module.to()`` of a parameter made from ``torch.tensor(value)`` (CLIP's
    ``logit_scale``): the fake mode keeps such small real values as the fake tensor's
    ``constant`` and tracks its aliases through weak references, and
    ``torch.utils.swap_tensors`` (``Module._apply``) refuses a tensor with weak references
    ("Couldn't swap CLIPModel.logit_scale"). Inside the scope a fake tensor about to be
    swapped stops being a constant first (for every alias, as an in-place write would
    make it), which also drops the converter's memo entry of its value.
    """
    original = torch.utils.swap_tensors
    memo = converter.meta_converter

    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        for t in (t1, t2):
            constant = getattr(t, "constant", None) if isinstance(t, FakeTensor) else None
            if constant is not None:
                converter.invalidate_constant_aliases(constant)
                tid = memo.describer.lookup_tensor.get(constant)
                if tid is not None:
                    memo.tensor_memo.pop(tid, None)
        original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


@contextlib.contextmanager
def _optimizers_take_fake_tensors() -> Iterator[None]:
    """Let ``torch.optim`` pick its default implementation for fake tensors as for CUDA ones.

    An optimizer built without ``foreach=`` asks ``_default_to_fused_or_foreach`` whether
    every tensor's exact type is ``Tensor`` or ``Parameter``; a fake tensor's is not, so on
    the estimator every default optimizer would run its for-loop implementation, which
    allocates one parameter's temporaries at a time, where CUDA runs the foreach one, which
    allocates them for all parameters at once (Adam's ``_foreach_sqrt`` of the second
    moments: one more copy of the parameters at the peak of a step).
    """
    import torch.optim.optimizer as module

    previous = module._foreach_supported_types
    module._foreach_supported_types = [*previous, FakeTensor]
    try:
        yield
    finally:
        module._foreach_supported_types = previous


def _compile_message(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    mine = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    user = [f for f in frames if not f.filename.startswith((_TORCH_DIR, mine))]
    line = f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else "?"
    return (
        f"the estimate backend cannot run a torch.compile'd function, called at {line}: "
        "the compiled kernels' memory (fusion, Inductor's buffer reuse) is not what the "
        "eager operators allocate, and the compiler needs a real GPU. Measure this test "
        "with --vram-backend=cuda, call the uncompiled module (e.g. the "
        "OptimizedModule's ._orig_mod) for the estimate, or mark the test "
        "@pytest.mark.vram(skip_estimate='torch.compile')."
    )


class _UnmemoizedConverter(FakeTensorConverter):
    """Wraps an operator's fresh meta outputs without keeping a weak reference to them.

    ``FakeTensorConverter`` memoises every wrapped output in a weak-value dictionary, so
    each fake tensor has a weak reference, and ``torch.utils.swap_tensors`` (which
    ``Module._apply`` uses for every fake parameter: ``.to()``, ``.cuda()``, ``.half()``)
    refuses tensors with weak references ("Couldn't swap Linear.weight"). A fresh output's
    meta tensor is never wrapped twice, so the memo buys nothing here. Real tensors
    (``from_real_tensor``) keep their memo: the same CPU tensor must map to one fake.
    """

    def __init__(self, known: KnownValues) -> None:
        super().__init__()
        self._known = known

    def from_real_tensor(  # type: ignore[override]
        self, fake_mode: FakeTensorMode, t: torch.Tensor, *args: Any, **kwargs: Any
    ) -> FakeTensor:
        """A real tensor's fake, made known to the known values (a write to it taints it)."""
        fresh = self._get_memo(t) is None
        out = super().from_real_tensor(fake_mode, t, *args, **kwargs)
        if fresh:
            self._known.converted(t, out)
        return out

    def from_meta_and_device(  # type: ignore[override]
        self,
        fake_mode: FakeTensorMode,
        t: torch.Tensor,
        device: torch.device,
        pytype: type[torch.Tensor] | None = None,
        dispatch_keys: Any = None,
    ) -> FakeTensor:
        return FakeTensor(fake_mode, t, device, pytype=pytype, dispatch_keys=dispatch_keys)


def _for_another_subclass(func: Any, types: Any, args: Any, kwargs: Any) -> bool:
    """Whether FakeTensorMode would hand the call to a tensor subclass (``NotImplemented``).

    A DTensor (FSDP2's sharded parameters) reaches the mode before its own
    ``__torch_dispatch__`` unwraps it; FakeTensorMode answers ``NotImplemented`` only after
    failing to build a cache key and flattening the arguments (every ``init_weights``
    operator of a sharded build). The same test, made before the cache is tried.
    """
    for kind in types:
        if not issubclass(kind, FakeTensor):
            break
    else:
        return False
    if func in _fake_tensor._DISPATCH_HANDLE_DIRECTLY:
        return False
    return _fake_tensor._check_for_subclass(pytree.arg_tree_leaves(*args, **kwargs))


class _TensorKey:
    """Marks a fake tensor's entry in a dispatch-cache key (see ``_prep_args_for_hash``)."""


#: argument types whose value (with the type: 1 and 1.0 hash alike) is their cache key
_PLAIN_ARGS = frozenset(
    {int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout}
    | {torch.memory_format}
)


def _tensor_key(t: FakeTensor) -> tuple[object, ...]:
    """What ``FakeTensorMode`` keys a fake tensor argument by, as one tuple.

    torch's key (``extract_tensor_metadata``) also holds the layout (strided here), the
    memory format (a function of shape and strides), ``is_quantized`` (of the dtype) and the
    sparse fields (none here).
    """
    return (
        _TensorKey,
        t.dtype,
        t.shape,
        t.stride(),
        t.device,
        t.storage_offset(),
        t.untyped_storage().nbytes(),
        t.requires_grad,
        t.is_conj(),
        t.is_neg(),
        t.is_inference(),
    )


def _relayout(out: Any, formats: list[Any]) -> Any:
    """``out`` with each tensor in the memory format CUDA gives it (``OUTPUT_LAYOUT``).

    Runs inside the operator (nesting depth > 0): the replaced results are never counted,
    their replacements are, as the operator's outputs.
    """
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    changed = False
    for i, (t, fmt) in enumerate(zip(items, formats, strict=False)):
        if isinstance(t, FakeTensor) and fmt is not None and not t.is_contiguous(memory_format=fmt):
            items[i] = torch.empty_like(t, memory_format=fmt)
            changed = True
    if not changed:
        return out
    return type(out)(items) if isinstance(out, (tuple, list)) else items[0]


class _EstimatingFakeMode(FakeTensorMode):
    """``FakeTensorMode`` that feeds the allocator model and emulates CUDA for autograd."""

    def __init__(self, tracker: _StorageTracker, emulate: bool) -> None:
        # No fallback kernels: an operator without a fake kernel is refused (``_no_kernel``)
        super().__init__(allow_non_fake_inputs=True, allow_fallback_kernels=False)
        self._tracker = tracker
        #: tensors whose every element is one known value (``_known_values``)
        self.known = tracker.known if tracker.known is not None else KnownValues()
        self.fake_tensor_converter = _UnmemoizedConverter(self.known)
        self._known_idle = self.known.idle
        self._emulate = emulate
        self._nesting = threading.local()
        #: device -> the attributes of a new fake tensor, but its mode (see ``_new_fake``)
        self._fake_templates: dict[torch.device, dict[str, Any]] = {}

    def may_turn_const(self, t: torch.Tensor) -> bool:
        """Whether the real result ``t`` of an operator on constants stays a constant: on
        the CPU up to ``CPU_CONSTANT_NUMEL_LIMIT`` elements (torch: 1), elsewhere as torch.

        A CPU constant's values are what the program computes there too (on the CPU, on
        a GPU machine as here), so reading them (``.tolist()``, ``.item()``) is exact.
        """
        if t.device.type == "cpu" and t.numel() <= CPU_CONSTANT_NUMEL_LIMIT:
            return t.layout == torch.strided and not self.is_our_fake(t)
        return super().may_turn_const(t)

    def _cpu_constant(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """A small CPU ``linspace``/``logspace``/``arange``, computed: a fake tensor with its
        values (None: not on the CPU, or too large; made as any fake tensor)."""
        device = kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":
            return None
        if kwargs.get("requires_grad") or kwargs.get("pin_memory"):
            return None  # a leaf of a graph, or page-locked memory: made as before
        with _fake_tensor.no_dispatch():
            if func(*args, **{**kwargs, "device": "meta"}).numel() > CPU_CONSTANT_NUMEL_LIMIT:
                return None  # (its size from the meta kernel: nothing real is made)
            real = func(*args, **kwargs)
        out = self.fake_tensor_converter.from_real_tensor(self, real, make_constant=True)
        self._tracker.track(out)
        return out

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No ``torch._disable_dynamo`` wrapper around :meth:`__torch_dispatch__`.

        ``TorchDispatchMode`` wraps a subclass's ``__torch_dispatch__`` so that Dynamo does
        not compile inside it; each call then sets and restores the frame evaluation
        callback, about a microsecond on every one of the 10^5 operators a training step
        dispatches. Nothing compiles inside the estimator's scope (``torch.compile`` is
        refused there, see ``_torch_compat``), so the wrapper guards nothing here.
        """
        return False

    def __deepcopy__(self, memo: dict[int, Any]) -> _EstimatingFakeMode:
        # ``copy.deepcopy`` of a module copies each fake tensor's ``__dict__``, which holds
        # its mode: the copy must live in the same mode (and the same allocator model).
        return self

    def cpp_meta_supports_symint(self, func: Any) -> bool:
        """Prefer an operator's C++ meta kernel to a Python decomposition.

        ``FakeTensorMode`` otherwise runs some operators through ``torch._decomp``
        decompositions that are written for tracing, not for memory: ``addmm`` on fp16
        becomes an fp32 upcast, ``mm``, two ``mul`` and an ``add``, each a new tensor the
        single cuBLAS call on a GPU never allocates. An operator with a C++ meta kernel has
        one native CUDA kernel as well, allocating just its outputs.
        """
        if super().cpp_meta_supports_symint(func):
            return True
        known = _HAS_CPP_META.get(func)
        if known is None:
            known = _HAS_CPP_META[func] = torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "Meta"
            )
        return known

    def _prep_args_for_hash(
        self,
        result: list[object],
        args: Any,
        state: Any,
        id_hashed_objects: list[object],
    ) -> None:
        """torch's dispatch-cache key of ``args``, with a cheaper key for fake tensors.

        Identical layers repeat identical operators, so most dispatches hit the cache, and
        building the key was the largest part of a hit (``extract_tensor_metadata`` and its
        flattening: a third of the estimator's time). A fake tensor of this mode, strided
        and without a constant, is keyed by one tuple of the same metadata (marked
        ``_TensorKey``, so no key of a plain ``FakeTensorMode`` can equal it); everything
        else goes through torch's own code.
        """
        if self.shape_env is not None or not isinstance(args, (list, tuple)):
            super()._prep_args_for_hash(result, args, state, id_hashed_objects)
            return
        append = result.append
        append(type(args))
        append(f"length_{len(args)}")
        for arg in args:
            kind = type(arg)
            if kind in _PLAIN_ARGS:
                append(kind)
                append(arg)
            elif (
                isinstance(arg, FakeTensor)
                and arg.fake_mode is self
                and arg.constant is None
                and arg.layout == torch.strided
            ):
                append(_tensor_key(arg))
            elif kind is list or kind is tuple:
                self._prep_args_for_hash(result, arg, state, id_hashed_objects)
            else:
                super()._prep_args_for_hash(result, (arg,), state, id_hashed_objects)

    def _get_output_tensor_from_cache_entry(
        self, state: Any, entry: Any, key: Any, func: Any, args: Any
    ) -> Any:
        """A cache hit's new output tensor, as torch makes it, with less per-call overhead.

        Without a shape environment the cached sizes are plain integers (torch's version
        checks every one for a symbolic stub), and the meta allocation (for a view: with
        the input's storage) involves no fake tensor, so it needs Python dispatch off but
        not torch's kernel-invocation scope. Anything else is torch's own code.
        """
        metadata = entry.metadata
        if self.shape_env is not None or entry.inplace_idx is not None or metadata is None:
            return super()._get_output_tensor_from_cache_entry(state, entry, key, func, args)
        if metadata.layout != torch.strided:
            return super()._get_output_tensor_from_cache_entry(state, entry, key, func, args)
        view_of = args[entry.view_idx] if func.is_view else None
        if view_of is not None and not isinstance(view_of, FakeTensor):
            return super()._get_output_tensor_from_cache_entry(state, entry, key, func, args)
        # torch's kernel-invocation scope (which makes fake tensors pose as meta ones)
        # cost twice the allocation itself.
        with torch._C._DisableTorchDispatch():
            empty = torch.empty_strided(
                metadata.shape,
                metadata.stride,
                dtype=metadata.dtype,
                layout=metadata.layout,
                device=_META,
                requires_grad=metadata.requires_grad,
            )
            if metadata.is_conj:
                torch._C._set_conj(empty, True)
            if metadata.is_neg:
                torch._C._set_neg(empty, True)
            if view_of is not None:
                empty.set_(
                    view_of.untyped_storage(),
                    metadata.storage_offset,
                    metadata.shape,
                    metadata.stride,
                )
        return self._new_fake(empty, metadata.device)

    def _new_fake(self, elem: torch.Tensor, device: torch.device) -> FakeTensor:
        """``FakeTensor(self, elem, device)`` for a fresh meta ``elem``, made faster.

        Every fake tensor starts with the same attributes (its device, this mode, and
        empty constant and memo slots); ``FakeTensor.__new__`` normalises the device and
        sets them one by one, a sixth of a cache hit. The first one made for a device is
        made by torch, and its attributes are the template for the next ones.
        """
        template = self._fake_templates.get(device)
        if template is None:
            out = FakeTensor(self, elem, device)
            if not _fake_tensor.FakeTensorConfig.debug:
                attrs = dict(out.__dict__)
                if attrs.pop("fake_mode", None) is self:
                    self._fake_templates[device] = attrs
            return out
        out = torch.Tensor._make_subclass(
            FakeTensor,
            elem,
            elem.requires_grad,
            dispatch_device=True,
            device_for_backend_keys=device,
        )
        if self._allow_unsafe_data_ptr_access:
            torch._C._set_warn_deprecated_on_mutable_data_ptr(out)
        else:
            torch._C._set_throw_on_mutable_data_ptr(out)
        attrs = out.__dict__
        attrs.update(template)
        attrs["fake_mode"] = self
        return out

    def __torch_dispatch__(  # type: ignore[override]
        self,
        func: Any,
        types: Any,
        args: Any = (),
        kwargs: Any = None,
    ) -> Any:
        if func is _PRIM_DEVICE and self._emulate and engine_is_asking(2):
            # Only the autograd engine gets "meta" (see _fake_cuda, point 2), and only for
            # CUDA tensors: a CPU tensor's gradients are made on the CPU, as on a GPU machine.
            # (``_fake_device``: what the ``fake_device`` property returns, without the call)
            device = getattr(args[0], "_fake_device", None)
            if device is not None and device.type == "cuda":
                return _META
        query = _METADATA_QUERIES.get(func)
        if query is not None:
            return query(args)
        kwargs = kwargs or {}
        if self._emulate and _is_meta_device(kwargs.get("device")) and engine_is_asking(2):
            # A tensor the engine's C++ code makes "like" a gradient it was told is meta.
            kwargs = {**kwargs, "device": _CUDA}
        if (
            func is _EMPTY_LIKE
            and _is_plain_meta(args[0])
            and not _is_meta_device(kwargs.get("device"))
        ):
            # ``to_empty`` of a meta model: make the fake tensor straight from a meta
            # ``empty_like``, skipping the generic (slow) conversion of the meta input.
            device = torch.device(kwargs["device"]) if kwargs.get("device") else _CUDA
            rest = {k: v for k, v in kwargs.items() if k != "device"}
            meta = func(args[0], **rest)
            out = self.fake_tensor_converter.from_meta_and_device(self, meta, device)
            self._tracker.track(out)
            return out
        if id(func) in _CPU_VALUE_FACTORY_IDS:  # (by id: an OpOverload hashes in Python)
            value = self._cpu_constant(func, args, kwargs)
            if value is not None:
                return value
        if func is _PIN_MEMORY:
            # No fake kernel; on a GPU the copy is host memory from the pinned allocator,
            # never counted in CUDA's figures: a host copy, as the fake CPU tensor it is.
            func, args, kwargs = _CLONE, args[:1], {}
        if func in _fake_kernels.NO_ALLOCATION_INPLACE:
            self.known.after(func, args, kwargs, None)  # it writes its inputs
            return None
        if getattr(func, "overloadpacket", None) is _TO:
            # Under inference mode ``Tensor.to`` reaches the mode undecomposed, and fake
            # constant propagation then runs it for real on a CUDA device this torch lacks;
            # its decomposition (``_to_copy`` or the input itself) is what CUDA runs.
            return func.decompose(*args, **kwargs)
        if _is_real_meta_call(args, kwargs):
            # Meta stays meta: a model built on the meta device inside the scope must be
            # made of plain meta tensors (as outside), or ``to_empty`` cannot swap them.
            return func(*args, **kwargs)
        # Only an operator the program dispatches is a CUDA kernel. Operators that the fake
        # mode runs *inside* another one (a Python decomposition, e.g. the first, uncached
        # ``native_layer_norm``: an fp32 ``var_mean`` and casts) allocate nothing on a GPU:
        # their intermediates are not counted, their results are when the outer one returns.
        depth = getattr(self._nesting, "depth", 0)
        self._nesting.depth = depth + 1
        try:
            if _for_another_subclass(func, types, args, kwargs):
                out = NotImplemented
            else:
                # FakeTensorMode.__torch_dispatch__ is ``dispatch`` behind a call counter
                # and a Dynamo-disabling wrapper that this method already has (5% a call).
                out = self.dispatch(func, types, args, kwargs)
                layout = None if depth else _fake_kernels.OUTPUT_LAYOUT.get(func)
                if layout is not None:
                    out = _relayout(out, layout(args, kwargs, out))
        except _fake_tensor.UnsupportedOperatorException as exc:
            if depth:
                raise
            __tracebackhide__ = True
            raise _no_kernel(exc.args[0] if exc.args else func) from None
        except _torch_compat.VALUE_DEPENDENT_ERRORS:
            if depth:
                raise
            __tracebackhide__ = True
            out = self.known.scalar(args[0]) if func is _LOCAL_SCALAR_DENSE else None
            if out is None:
                out = _value_dependent(func, args)
        except RuntimeError as exc:  # after the value-dependent errors, also RuntimeErrors
            if depth or not str(exc).startswith(_CUSTOM_OP_WITHOUT_FAKE):
                raise
            __tracebackhide__ = True
            raise _no_kernel(func, torch_advice=str(exc)) from None
        finally:
            self._nesting.depth = depth
        if depth:
            return out
        if out is not NotImplemented and not self._known_idle.get(func):
            self.known.after(func, args, kwargs, out)
        plan = _fake_kernels.OUTPUT_PLAN.get(func)
        if plan is None:
            self._tracker.track(out)
        else:
            self._tracker.track_planned(plan(args, kwargs, out))
        model = _fake_kernels.INTERNAL_BUFFERS.get(func)
        if model is not None:
            self._tracker.transient(model(args, kwargs, out))
        return out


class _Scope:
    """The estimator's scope: the CUDA emulation (if any) and the fake mode.

    A class rather than a generator so that an :class:`EstimateUnsupported` reaches the
    test from a frame pytest hides, with its message (which names the user's line) and
    without torch's and the estimator's frames.
    """

    def __init__(self, mode: _EstimatingFakeMode, emulate: bool, tracker: _StorageTracker) -> None:
        self._mode = mode
        self._emulate = emulate
        self._tracker = tracker
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        with contextlib.ExitStack() as stack:
            if self._emulate:
                stack.enter_context(emulated_cuda_runtime())
                # Every backward on the calling thread: the engine's device thread (which
                # the emulated CUDA guard makes it start) then never holds a task's state,
                # whose Python objects it would release while the interpreter finalizes.
                stack.enter_context(torch.autograd.set_multithreading_enabled(False))
            stack.enter_context(_fake_tensor_copy())
            stack.enter_context(_constants_swappable(self._mode.fake_tensor_converter))
            stack.enter_context(_optimizers_take_fake_tensors())
            stack.enter_context(self._mode)
            stack.enter_context(_transformers.reads_known_values(self._mode.known))
            stack.enter_context(_fake_distributed.sharded_training(self._tracker, self._emulate))
            stack.enter_context(_rnns_reported(self._tracker))
            if self._emulate:
                stack.enter_context(_memory_queries(self._tracker))
            self._stack = stack.pop_all()

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        self._stack.__exit__(typ, exc, tb)
        if self._emulate:
            settle_engine_threads()
        if isinstance(exc, EstimateUnsupported):
            raise EstimateUnsupported(str(exc)) from None
        if exc is not None and _torch_compat.is_compile_failure(exc):
            raise EstimateUnsupported(_compile_message(exc)) from None
        return False


class EstimateBackend(Backend):
    """Peak CUDA memory predicted on fake tensors: no GPU, no real memory."""

    name = "estimate"
    #: a test marked world_size=N runs on a fake process group of N ranks (rank 0 measured)
    simulates_ranks = True

    def __init__(self, allocator: str = "expandable") -> None:
        self._allocator_mode = allocator
        # Emulate the CUDA runtime only where there is no usable GPU; with one, fake CUDA
        # tensors behave natively and SDPA's real chooser runs.
        self._emulate = not torch.cuda.is_available()
        gone = _torch_compat.missing(cpu_only=self._emulate and not torch.backends.cuda.is_built())
        if gone:
            raise BackendUnavailable(
                f"the estimate backend needs torch internals that torch {torch.__version__} "
                f"lacks: {', '.join(gone)}; use a tested torch (2.11 to 2.13, see README.md) "
                "or --vram-backend=cuda"
            )
        if self._emulate and not torch.backends.cuda.is_built() and not install_cuda_guard():
            raise BackendUnavailable(
                "the estimate backend cannot register a CUDA device guard on this torch "
                f"build ({torch.__version__}); autograd on fake CUDA tensors would abort"
            )
        if self._emulate:
            install_sdpa_kernel()
        _fake_kernels.install_missing_meta_kernels()
        self._allocator = _allocator.CachingAllocatorModel(allocator)
        self._tracker: _StorageTracker | None = None
        self._mode: _EstimatingFakeMode | None = None
        self._observer: Any = None

    # -- identity -----------------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cuda"

    def profile(self) -> str:
        return "estimate"

    def context(self) -> dict[str, str]:
        if self._emulate:
            device = "fake CUDA, emulated sm90 (H100/H200 rules)"
        else:
            device = f"fake CUDA on {torch.cuda.get_device_name()}"
        return {
            "backend": "estimate",
            "device": device,
            "torch": torch.__version__,
            "allocator": (
                f"caching-allocator model v{_allocator.MODEL_VERSION}, {self._allocator_mode}"
            ),
            "metric": metric_name(self._allocator_mode),
        }

    # -- per test -----------------------------------------------------------------------
    def warmup(self) -> None:
        """Pay torch's one-time costs (imports, meta registrations) outside any test."""
        self.begin_test()
        try:
            with self.scope():
                _fake_kernels.warmup_workload()
        finally:
            self.end_test()

    def begin_test(self) -> None:
        self._allocator = _allocator.CachingAllocatorModel(self._allocator_mode)
        self._tracker = _StorageTracker(self._allocator, self._observer, KnownValues())
        self._mode = _EstimatingFakeMode(self._tracker, self._emulate)

    def end_test(self) -> None:
        self._mode = None
        self._tracker = None

    def scope(self) -> contextlib.AbstractContextManager[None]:
        if self._mode is None:
            self.begin_test()
        assert self._mode is not None
        return _Scope(self._mode, self._emulate, self._tracker)

    def observe(self, observer: Any) -> bool:
        """Report storages to ``observer`` from the next ``begin_test`` on (None: stop)."""
        self._observer = observer
        return True

    # -- counters -----------------------------------------------------------------------
    def synchronize(self) -> None:
        """Nothing is queued: fake kernels run synchronously."""

    def allocated(self) -> int:
        return self._allocator.allocated

    def reset_peak(self) -> None:
        self._allocator.reset_peak()

    def peak(self) -> int:
        return self._allocator.peak

    def reserved(self) -> int:
        return self._allocator.reserved

    def peak_reserved(self) -> int:
        return self._allocator.peak_reserved
