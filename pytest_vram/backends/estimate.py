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
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from pytest_vram.backends import _allocator, _fake_kernels
from pytest_vram.backends._fake_cuda import (
    emulated_cuda_runtime,
    engine_is_asking,
    install_cuda_guard,
)
from pytest_vram.backends.base import Backend, BackendUnavailable

_PRIM_DEVICE = torch.ops.prim.device.default
_META = torch.device("meta")
_CUDA = torch.device("cuda", 0)
_HAS_CPP_META: dict[Any, bool] = {}
_EMPTY_LIKE = torch.ops.aten.empty_like.default


class _StorageTracker:
    """Allocates a block for every new fake CUDA storage and frees it when the storage dies.

    One tracker per test, so weak-reference callbacks of storages a previous test leaked
    land in that test's (discarded) pool, never in the current one.
    """

    def __init__(self, allocator: _allocator.CachingAllocatorModel, observer: Any = None) -> None:
        self.allocator = allocator
        self._live: dict[int, tuple[weakref.ref[Any], _allocator.Block | None]] = {}
        #: optional attribution hook (``pytest_vram.attribution.Collector``): told of every
        #: storage made and released, and of every transient buffer
        self.observer = observer

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
        if self.observer is not None:
            self.observer.allocated(key, _allocator.round_size(storage.nbytes()))

    def _release(self, key: int, _ref: object) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.allocator.free(entry[1])
            if self.observer is not None:
                self.observer.freed(key)

    def transient(self, sizes: list[int]) -> None:
        """Allocate and immediately free buffers a kernel uses internally (peak only)."""
        if self.observer is not None:
            self.observer.transient([_allocator.round_size(n) for n in sizes])
        blocks = [self.allocator.malloc(n) for n in sizes]
        for block in reversed(blocks):
            self.allocator.free(block)


def _is_meta_device(device: object) -> bool:
    return device is not None and torch.device(device).type == "meta"  # type: ignore[arg-type]


def _is_plain_meta(t: object) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor) and t.is_meta


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


class _EstimatingFakeMode(FakeTensorMode):
    """``FakeTensorMode`` that feeds the allocator model and emulates CUDA for autograd."""

    def __init__(self, tracker: _StorageTracker, emulate: bool) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self._tracker = tracker
        self._emulate = emulate
        self._nesting = threading.local()

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

    def __torch_dispatch__(  # type: ignore[override]
        self,
        func: Any,
        types: Any,
        args: Any = (),
        kwargs: Any = None,
    ) -> Any:
        if func is _PRIM_DEVICE and self._emulate and engine_is_asking(2):
            # Only the autograd engine gets "meta" (see _fake_cuda, point 2).
            return _META
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
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._nesting.depth = depth
        if depth:
            return out
        plan = _fake_kernels.OUTPUT_PLAN.get(func)
        if plan is None:
            self._tracker.track(out)
        else:
            self._tracker.track_planned(plan(args, kwargs, out))
        model = _fake_kernels.INTERNAL_BUFFERS.get(func)
        if model is not None:
            self._tracker.transient(model(args, kwargs, out))
        return out


class EstimateBackend(Backend):
    """Peak CUDA memory predicted on fake tensors: no GPU, no real memory."""

    name = "estimate"

    def __init__(self) -> None:
        # Emulate the CUDA runtime only where there is no usable GPU; with one, fake CUDA
        # tensors behave natively and SDPA's real chooser runs.
        self._emulate = not torch.cuda.is_available()
        if self._emulate and not torch.backends.cuda.is_built() and not install_cuda_guard():
            raise BackendUnavailable(
                "the estimate backend cannot register a CUDA device guard on this torch "
                f"build ({torch.__version__}); autograd on fake CUDA tensors would abort"
            )
        self._allocator = _allocator.CachingAllocatorModel()
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
            "allocator": f"caching-allocator model v{_allocator.MODEL_VERSION}",
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
        self._allocator = _allocator.CachingAllocatorModel()
        self._tracker = _StorageTracker(self._allocator, self._observer)
        self._mode = _EstimatingFakeMode(self._tracker, self._emulate)

    def end_test(self) -> None:
        self._mode = None
        self._tracker = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        if self._mode is None:
            self.begin_test()
        assert self._mode is not None
        with contextlib.ExitStack() as stack:
            if self._emulate:
                stack.enter_context(emulated_cuda_runtime())
            stack.enter_context(self._mode)
            yield

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
