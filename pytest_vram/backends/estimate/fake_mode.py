"""The estimator's fake mode: torch's ``FakeTensorMode``, feeding the allocator model.

A test's build step and workload run unchanged on fake CUDA tensors: every operator
computes output shapes, dtypes and strides with its meta kernel and allocates nothing.
:class:`EstimatingFakeMode` additionally

* hands every operator's outputs to the storage tracker (:mod:`.tracker`), which replays
  each new CUDA storage, and its release, through the allocator model;
* adds what the CUDA kernel allocates that the meta kernel does not (:mod:`.kernels`:
  transient buffers, outputs the meta kernel leaves on ``meta``, CUDA's memory formats);
* follows the values the program alone determines (:mod:`.known`) and answers reads of
  them; refuses, with the user's line and the fix, what depends on values it does not
  have, or has no fake kernel (:mod:`.refusals`);
* answers the autograd engine's device queries as ``meta`` where no GPU is usable
  (:mod:`.autograd_engine`);
* takes torch's dispatch cache's hot path with less per-call overhead (the methods it
  overrides are checked at backend creation, :mod:`.torch_compat`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses import fake_tensor as _fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorConverter, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from pytest_vram.backends.estimate import kernels
from pytest_vram.backends.estimate.autograd_engine import engine_is_asking
from pytest_vram.backends.estimate.known import KnownValues
from pytest_vram.backends.estimate.refusals import (
    CUSTOM_OP_WITHOUT_FAKE,
    no_kernel,
    value_dependent,
)
from pytest_vram.backends.estimate.torch_compat import VALUE_DEPENDENT_ERRORS
from pytest_vram.backends.estimate.tracker import StorageTracker

_PRIM_DEVICE = torch.ops.prim.device.default
_META = torch.device("meta")
_CUDA = torch.device("cuda", 0)
_HAS_CPP_META: dict[Any, bool] = {}
_EMPTY_LIKE = torch.ops.aten.empty_like.default
_LOCAL_SCALAR_DENSE = torch.ops.aten._local_scalar_dense.default
#: ``bool(t)`` under inference mode reaches the mode as itself, not as ``_local_scalar_dense``
_IS_NONZERO = torch.ops.aten.is_nonzero.default
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
#: metadata queries (``prim.device``, ``aten.size``...) FakeTensorMode answers from the fake
#: tensor itself, before any caching or kernel: the C++ side asks ``device`` of a fake tensor
#: through the mode (half of all dispatches of a sharded training step)
_METADATA_QUERIES = getattr(_fake_tensor, "_DISPATCH_META_HANDLERS", {})


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


def _host_only(args: Any, kwargs: dict[str, Any]) -> bool:
    """An operator on real CPU tensors only, making nothing on another device."""
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        return False
    for t in pytree.arg_tree_leaves(*args, **kwargs):
        if isinstance(t, torch.Tensor) and (isinstance(t, FakeTensor) or t.device.type != "cpu"):
            return False
    return True


def _hide_constants(args: Any, kwargs: dict[str, Any]) -> list[tuple[FakeTensor, Any]]:
    """For an operator that makes its result on another device than the CPU (``empty_like(
    x, device="cuda")``), take the constants off its fake inputs; returns them, to put back.

    torch's fake mode runs an operator whose inputs all hold constants for real, to keep
    the result a constant too, and skips that only for ``_to_copy`` to another device:
    ``torch.empty_like(torch.arange(4.0), device="cuda")`` (transformers moves a model's
    non-persistent buffers so) would run a CUDA kernel. A CUDA result is never a constant.
    """
    device = kwargs.get("device")
    if device is None or torch.device(device).type in ("cpu", "meta"):
        return []
    hidden = []
    for t in pytree.arg_tree_leaves(*args):
        if isinstance(t, FakeTensor) and t.constant is not None:
            hidden.append((t, t.constant))
            t.constant = None
    return hidden


class UnmemoizedConverter(FakeTensorConverter):
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


class EstimatingFakeMode(FakeTensorMode):
    """``FakeTensorMode`` that feeds the allocator model and emulates CUDA for autograd."""

    def __init__(self, tracker: StorageTracker, emulate: bool) -> None:
        # No fallback kernels: an operator without a fake kernel is refused (``refusals.no_kernel``)
        super().__init__(allow_non_fake_inputs=True, allow_fallback_kernels=False)
        self._tracker = tracker
        #: tensors whose every element is one known value (``known``)
        self.known = tracker.known if tracker.known is not None else KnownValues()
        self.fake_tensor_converter = UnmemoizedConverter(self.known)
        self._known_idle = self.known.idle
        self._emulate = emulate
        self._nesting = threading.local()
        #: device -> the attributes of a new fake tensor, but its mode (see ``_new_fake``)
        self._fake_templates: dict[torch.device, dict[str, Any]] = {}
        #: set by :meth:`real_host`: operators on real CPU tensors run for real
        self._real_host = False

    @contextlib.contextmanager
    def real_host(self) -> Iterator[None]:
        """Operators on real CPU tensors only (factories for the CPU included) run for
        real, while this is entered: what a fixture of a wider scope than the test makes
        on the host outlives the test and may be read (``save_pretrained``). Anything that
        involves a fake tensor or another device (``.to("cuda")``) is fake as ever."""
        previous, self._real_host = self._real_host, True
        try:
            yield
        finally:
            self._real_host = previous

    @property
    def avoid_device_init(self) -> bool:
        """Whether this mode must never run an operator on a real device: where the CUDA
        runtime is emulated, always. torch asks ``torch.cuda.is_available()`` at every
        call, which the emulated card answers True inside the scope; constant propagation
        and ``torch.tensor(..., device="cuda")`` would then run CUDA kernels this machine
        does not have."""
        return True if self._emulate else bool(FakeTensorMode.avoid_device_init.fget(self))

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
            return None  # a leaf of a graph, or page-locked memory: made as any other
        with _fake_tensor.no_dispatch():
            if func(*args, **{**kwargs, "device": "meta"}).numel() > CPU_CONSTANT_NUMEL_LIMIT:
                return None  # (its size from the meta kernel: nothing real is made)
            real = func(*args, **kwargs)
        out = self.fake_tensor_converter.from_real_tensor(self, real, make_constant=True)
        self._tracker.track(out)
        return out

    def _known_scalar(self, func: Any, args: Any) -> Any:
        """The answer to a scalar read of a tensor whose value is known (``.item()``,
        ``bool(t)``), or None."""
        if func is _LOCAL_SCALAR_DENSE:
            return self.known.scalar(args[0])
        if func is _IS_NONZERO:
            value = self.known.scalar(args[0])
            return None if value is None else bool(value)
        return None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No ``torch._disable_dynamo`` wrapper around :meth:`__torch_dispatch__`.

        ``TorchDispatchMode`` wraps a subclass's ``__torch_dispatch__`` so that Dynamo does
        not compile inside it; each call then sets and restores the frame evaluation
        callback, about a microsecond on every one of the 10^5 operators a training step
        dispatches. Where code is compiled in the scope, Dynamo is kept out of this method
        and everything it calls by an execution strategy on its code object instead, which
        costs nothing where nothing compiles (``compiled._dynamo_skips_the_estimator``).
        """
        return False

    def __deepcopy__(self, memo: dict[int, Any]) -> EstimatingFakeMode:
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
        building the key is the largest part of a hit (torch's ``extract_tensor_metadata``
        and its flattening of every argument). A fake tensor of this mode, strided and
        without a constant, is keyed by one tuple of the same metadata (marked
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
        # costs more than the allocation itself.
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
            # Only the autograd engine gets "meta" (see autograd_engine, point 2), and only for
            # CUDA tensors: a CPU tensor's gradients are made on the CPU, as on a GPU machine.
            # (``_fake_device``: what the ``fake_device`` property returns, without the call)
            device = getattr(args[0], "_fake_device", None)
            if device is not None and device.type == "cuda":
                return _META
        query = _METADATA_QUERIES.get(func)
        if query is not None:
            return query(args)
        kwargs = kwargs or {}
        if self._real_host and _host_only(args, kwargs):
            return func(*args, **kwargs)
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
        if func in kernels.NO_ALLOCATION_INPLACE:
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
                hidden = _hide_constants(args, kwargs)
                try:
                    out = self.dispatch(func, types, args, kwargs)
                finally:
                    for t, constant in hidden:
                        t.constant = constant
                layout = None if depth else kernels.OUTPUT_LAYOUT.get(func)
                if layout is not None:
                    out = _relayout(out, layout(args, kwargs, out))
        except _fake_tensor.UnsupportedOperatorException as exc:
            if depth:
                raise
            __tracebackhide__ = True
            raise no_kernel(exc.args[0] if exc.args else func) from None
        except VALUE_DEPENDENT_ERRORS:
            if depth:
                raise
            __tracebackhide__ = True
            out = self._known_scalar(func, args)
            if out is None:
                out = value_dependent(func, args)
        except RuntimeError as exc:  # after the value-dependent errors, also RuntimeErrors
            if depth or not str(exc).startswith(CUSTOM_OP_WITHOUT_FAKE):
                raise
            __tracebackhide__ = True
            raise no_kernel(func, torch_advice=str(exc)) from None
        finally:
            self._nesting.depth = depth
        if depth:
            return out
        if out is not NotImplemented and not self._known_idle.get(func):
            self.known.after(func, args, kwargs, out)
        plan = kernels.OUTPUT_PLAN.get(func)
        if plan is None:
            self._tracker.track(out)
        else:
            self._tracker.track_planned(plan(args, kwargs, out))
        model = kernels.INTERNAL_BUFFERS.get(func)
        if model is not None:
            self._tracker.transient(model(args, kwargs, out))
        return out
