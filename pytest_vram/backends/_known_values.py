"""Known values of fake tensors: tensors whose every element is the same, known value.

Fake tensors have no values, so a scalar read (``.item()``, ``bool(t)``) cannot be
answered, and libraries that know this (transformers' ``is_tracing``) take a path the GPU
does not take. Many reads in ordinary code are nevertheless determined by the program
alone: ``torch.ones_like(ids).all()``, a stopping flag built with ``torch.full`` and ORed
with an unknown one that is already ``True``. This module follows such **uniform**
tensors, exactly and never by guess:

* **sources**: ``ones``/``zeros``/``full`` (and their ``_like``/``new_`` forms),
  ``scalar_tensor``, an ``arange`` of one element, ``fill_``/``zero_``, and real CPU
  tensors (or fake tensors holding a real constant) whose elements are all equal (at most
  ``REAL_NUMEL_LIMIT`` elements are compared);
* **propagation**: views share the knowledge through their storage; copies and gathers
  (``clone``, ``_to_copy``, ``index``, ``expand_copy``...) keep the value (cast); pointwise
  operators whose tensor inputs are all known are computed on one-element CPU tensors
  (floating results only for operators that are exactly rounded, so a CPU and a CUDA
  kernel agree); ``or``/``and``/``where``/``masked_fill`` answer when one known input
  decides the result; reductions (``all``, ``any``, ``amax``, ``amin``, ``max``, ``min``,
  ``count_nonzero``, exact integral ``sum``) of known inputs, and ``all``/``any``/``sum``
  of empty ones;
* **invalidation**: an operator that writes a storage (schema ``Tensor(a!)``, ``out=``)
  keeps or sets its knowledge only when it writes one known value over the whole storage
  (or the value it already holds), and forgets it otherwise; so does a storage resize.

Triangular tensors are followed as well: ``triu``/``tril`` of a known uniform tensor (a
causal mask, ``torch.triu(torch.full((n, n), -inf), 1)``) holds one known value on and
above (or below) a diagonal and another elsewhere, in its logical indices; copies keep it,
``==``/``!=`` with another such tensor of the same shape and diagonal or with a known value
give one, and ``all``/``any`` of it are known (``nn.TransformerEncoder`` compares a mask
with a causal one it builds, ``bool((mask == causal).all())``). It holds only for that
exact tensor (a view sees nothing), and any write to its storage forgets it.

One fact that is not a value is followed too: a uniform draw (``rand``, ``rand_like``,
``uniform_`` from a non-negative ``from``) holds no negative element, so comparing it with
a number at most 0 (``torch.rand([]) < 0.0``, transformers' LayerDrop with
``layerdrop=0.0``) has a known result. Any write to its storage forgets that as well.

Knowledge is keyed by storage, with the dtype it was written in: every view of a uniform
storage is uniform (a view in another dtype, or with the negative/conjugate bit, is
unknown). Entries hold weak references, so nothing here keeps a tensor alive.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree

#: the most elements of a real tensor compared to find whether they are all equal
REAL_NUMEL_LIMIT = 1 << 20
#: a write that leaves its storage's knowledge as it is
_UNCHANGED = object()

Scalar = bool | int | float | complex

_aten = torch.ops.aten

#: factories (and whole-tensor fills) and the value they write, from ``(args, kwargs)``
_FACTORIES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Any]] = {
    _aten.ones: lambda a, k: 1,
    _aten.ones_like: lambda a, k: 1,
    _aten.new_ones: lambda a, k: 1,
    _aten.zeros: lambda a, k: 0,
    _aten.zeros_like: lambda a, k: 0,
    _aten.new_zeros: lambda a, k: 0,
    _aten.zero_: lambda a, k: 0,
    _aten.full: lambda a, k: a[1] if len(a) > 1 else k.get("fill_value"),
    _aten.full_like: lambda a, k: a[1] if len(a) > 1 else k.get("fill_value"),
    _aten.new_full: lambda a, k: a[2] if len(a) > 2 else k.get("fill_value"),
    _aten.scalar_tensor: lambda a, k: a[0] if a else k.get("s"),
    # one element (``after`` asks): its start
    _aten.arange: lambda a, k: a[0] if len(a) > 1 else k.get("start", 0),
}
#: operators whose every output element is an element of their first argument
_COPIES = frozenset(
    {
        _aten._to_copy,
        _aten.lift_fresh,
        _aten.lift_fresh_copy,
        _aten.clone,
        _aten.contiguous,
        _aten._unsafe_view,
        _aten.repeat,
        _aten.expand_copy,
        _aten.index,
        _aten.index_select,
        _aten.gather,
        _aten.take,
        _aten.flip,
        _aten.roll,
        _aten.narrow_copy,
        _aten.slice_copy,
        _aten.select_copy,
        _aten.permute_copy,
        _aten.view_copy,
        _aten._reshape_copy,
        _aten.transpose_copy,
        _aten.t_copy,
        _aten.unsqueeze_copy,
        _aten.squeeze_copy,
        _aten.detach_copy,
        _aten.alias_copy,
        _aten.unfold_copy,
        _aten.embedding,
    }
)
#: operators whose output elements are elements of the tensors in their first argument
_CONCATENATIONS = frozenset({_aten.cat, _aten.stack, _aten.hstack, _aten.vstack})
_REDUCTIONS = frozenset(
    {
        _aten.all,
        _aten.any,
        _aten.amax,
        _aten.amin,
        _aten.max,
        _aten.min,
        _aten.sum,
        _aten.count_nonzero,
    }
)
#: operator namespaces whose schemas declare every write (``Tensor(a!)``)
_ANNOTATED_NAMESPACES = frozenset({"aten", "prims", "prim"})
#: the overloads of ``_REDUCTIONS`` that reduce
_REDUCING = frozenset({"default", "dim", "dims", "dim_IntList", "int"})
#: pointwise operators with a floating result that CPU and CUDA round the same way
#: (IEEE basic operations, comparisons, selections, casts), so a value computed on the CPU
#: is the CUDA kernel's; any other floating result stays unknown
_EXACT_FLOATING = frozenset(
    {
        "add",
        "sub",
        "rsub",
        "mul",
        "div",
        "neg",
        "abs",
        "sqrt",
        "clone",
        "where",
        "masked_fill",
        "clamp",
        "clamp_min",
        "clamp_max",
        "maximum",
        "minimum",
        "fmax",
        "fmin",
        "floor",
        "ceil",
        "trunc",
        "round",
        "sign",
        "copysign",
        "fill",
        "fmod",
    }
)
_OR = frozenset({_aten.logical_or, _aten.logical_or_, _aten.bitwise_or, _aten.bitwise_or_})
_AND = frozenset({_aten.logical_and, _aten.logical_and_, _aten.bitwise_and, _aten.bitwise_and_})
_LOGICAL = frozenset({_aten.logical_or, _aten.logical_or_, _aten.logical_and, _aten.logical_and_})
_WHERE = _aten.where
_MASKED_FILL = frozenset({_aten.masked_fill, _aten.masked_fill_})
#: operators not tagged pointwise whose result, for uniform non-empty inputs, is the
#: operator applied to one element of each (``isin``: whether ``v`` equals ``w``)
_ELEMENTWISE = _MASKED_FILL | {_aten.isin}
_COPY_ = _aten.copy_
_FILL_ = _aten.fill_
#: draws whose every element is at least 0 (CUDA's and the CPU's ``uniform_`` compute
#: ``from + u * (to - from)`` with ``u`` in [0, 1], and give ``from`` for ``to``; with
#: ``from >= 0`` no rounding makes that negative), from ``(args, kwargs)``
_NONNEGATIVE_DRAWS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], bool]] = {
    _aten.rand: lambda a, k: True,
    _aten.rand_like: lambda a, k: True,
    _aten.uniform_: lambda a, k: (
        _is_number(f := a[1] if len(a) > 1 else k.get("from", 0.0)) and f >= 0
    ),
}
#: comparisons ``x OP c`` decided for every ``x >= 0`` by ``c`` alone: the operator, then
#: (the result, and whether ``c`` decides it) -> ``c <= 0`` decides ``lt``/``ge``, ``c < 0``
#: ``le``/``gt``; with the tensor second (``c OP x``) the mirrored operator
_NONNEGATIVE_COMPARISONS: dict[Any, tuple[bool, Callable[[float], bool]]] = {
    _aten.lt: (False, lambda c: c <= 0),
    _aten.ge: (True, lambda c: c <= 0),
    _aten.le: (False, lambda c: c < 0),
    _aten.gt: (True, lambda c: c < 0),
}
_MIRRORED = {_aten.lt: _aten.gt, _aten.gt: _aten.lt, _aten.le: _aten.ge, _aten.ge: _aten.le}
#: triangles: whether an element (row i, column j of the last two dimensions) is kept
_TRIANGLES = {_aten.triu: "triu", _aten.tril: "tril"}
#: operators whose result holds its first argument's elements at the same logical indices
_PATTERN_COPIES = frozenset({_aten._to_copy, _aten.clone, _aten.lift_fresh, _aten.lift_fresh_copy})
_PATTERN_COMPARISONS = {_aten.eq: lambda a, b: a == b, _aten.ne: lambda a, b: a != b}
_PATTERN_REDUCTIONS = frozenset({_aten.all, _aten.any})
_PATTERN_OPS = frozenset(_TRIANGLES) | _PATTERN_COPIES | frozenset(_PATTERN_COMPARISONS)
_PATTERN_OPS |= _PATTERN_REDUCTIONS


class _Rule:
    """What an operator does to known values, worked out once from its schema and tags."""

    __slots__ = (
        "func",
        "packet",
        "base",
        "kind",
        "decides",
        "source",
        "written",
        "inplace",
        "quick",
        "quick_write",
        "foreign",
        "idle",
    )

    def __init__(self, func: Any) -> None:
        self.func = func
        self.packet = func.overloadpacket
        #: an operator outside ATen: its schema need not say what it writes (``c10d``'s
        #: collectives write their tensors and declare nothing), so it writes them all
        self.foreign = func.namespace not in _ANNOTATED_NAMESPACES
        #: the operator's name without namespace and in-place suffix (``add_`` -> ``add``)
        self.base = func._schema.name.split("::")[-1].rstrip("_")
        #: positions and names of the arguments the operator writes
        self.written = tuple(
            (i, a.name)
            for i, a in enumerate(func._schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
        tags = func.tags
        seeded = torch.Tag.nondeterministic_seeded in tags
        packet = self.packet
        #: which computation gives the value of the result (None: it is never known)
        self.kind: str | None = None
        if packet in _FACTORIES:
            self.kind = "factory"
        elif packet in _COPIES:
            self.kind = "copy"
        elif packet in _REDUCTIONS and func._overloadname in _REDUCING:
            self.kind = "reduction"  # not the binary ``max.other``
        elif packet in _CONCATENATIONS:
            self.kind = "concatenation"
        elif (torch.Tag.pointwise in tags or packet in _ELEMENTWISE) and not seeded:
            self.kind = "pointwise"
        #: whether one known input can decide the result (``x | True``)
        self.decides = (
            packet in _OR or packet in _AND or packet is _WHERE or (packet in _MASKED_FILL)
        )
        #: an in-place operator (its first argument is its only written one)
        writes_self = self.written == ((0, func._schema.arguments[0].name),)
        self.inplace = writes_self and not seeded
        #: whether the rule matters when nothing is known yet
        #: (a reduction of an empty tensor is known whatever it holds)
        self.source = (
            self.kind in ("factory", "copy", "reduction")
            or packet in (_COPY_, _FILL_)
            or packet in _NONNEGATIVE_DRAWS
        )
        #: whether an unknown first argument makes the result unknown (fast exits): for an
        #: in-place operator (no entry to drop either), and for a pure one
        self.quick_write = writes_self and not self.source and not self.decides
        self.quick = not self.decides and self.kind in ("copy", "pointwise")
        #: an operator that neither writes nor makes a value (a view, a matmul...)
        self.idle = (
            self.kind is None
            and not self.written
            and not self.foreign
            and packet not in _NONNEGATIVE_DRAWS
            and packet not in _TRIANGLES
        )


class KnownValues:
    """The known uniform values of one test's fake tensors (see the module docstring)."""

    def __init__(self) -> None:
        #: storage key -> (weak reference to the storage, dtype, value)
        self._entries: dict[int, tuple[weakref.ref[Any], torch.dtype, Scalar]] = {}
        self._rules: dict[Any, _Rule] = {}
        #: operator -> whether :meth:`after` can skip it whatever is known (the caller
        #: looks it up first: most operators are views and matmuls)
        self.idle: dict[Any, bool] = {}
        #: fake storage key -> (weak reference to that storage, the key of the real (CPU)
        #: storage it was converted from), while the fake storage lives
        self._reals: dict[int, tuple[weakref.ref[Any], int]] = {}
        #: real storages written inside the mode: the write ran on their fake, so their
        #: data is no longer what the program's tensor holds
        self._tainted: set[int] = set()
        self._all_tainted = False
        #: storage key -> (weak reference to the storage, dtype) of a non-negative draw
        self._nonnegative: dict[int, tuple[weakref.ref[Any], torch.dtype]] = {}
        #: storage key -> (weak reference, the tensor's layout, its triangle) of a
        #: triangular tensor (see the module docstring)
        self._patterns: dict[int, tuple[weakref.ref[Any], tuple[Any, ...], _Triangle]] = {}

    # -- queries ---------------------------------------------------------------------
    def value(self, t: object) -> Scalar | None:
        """The value of every element of ``t``, or None where it is not known."""
        if isinstance(t, FakeTensor):
            if t.constant is not None:
                return _uniform_real(t.constant)
            entry = self._entries.get(t.untyped_storage()._cdata) if self._entries else None
            if entry is None or entry[1] != t.dtype or t.is_neg():
                return None
            if entry[1].is_complex and t.is_conj():
                return None
            # an empty view of a known storage holds no value (``isin`` would be wrong)
            return entry[2] if t.numel() else None
        if (
            type(t) in (torch.Tensor, torch.nn.Parameter)
            and t.layout == torch.strided  # type: ignore[attr-defined]
            and not self._all_tainted
            and t.untyped_storage()._cdata not in self._tainted  # type: ignore[attr-defined]
        ):
            # A real tensor (made outside the scope, e.g. a tokenizer's mask): its data is
            # what the program's tensor holds, unless the mode wrote its fake since.
            return _uniform_real(t)  # type: ignore[arg-type]
        return None

    def converted(self, real: torch.Tensor, fake: FakeTensor) -> None:
        """The mode converted ``real`` to ``fake``: a write to the fake taints the real."""
        if isinstance(fake, FakeTensor) and isinstance(real, torch.Tensor):
            storage = fake.untyped_storage()
            key = storage._cdata
            entry = self._reals.get(key)
            if entry is None or entry[0]() is not storage:
                ref = weakref.ref(storage, functools.partial(_release, self._reals, key))
                self._reals[key] = (ref, real.untyped_storage()._cdata)

    def is_known(self, t: object) -> bool:
        return self.value(t) is not None

    def scalar(self, t: object) -> Scalar | None:
        """``t.item()`` where ``t`` has one element whose value is known."""
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            return self.value(t)
        return None

    # -- updates ---------------------------------------------------------------------
    def forget(self, storage: Any) -> None:
        """Drop what is known of ``storage`` (its contents changed outside any operator)."""
        self._entries.pop(storage._cdata, None)
        self._nonnegative.pop(storage._cdata, None)
        self._patterns.pop(storage._cdata, None)

    def _is_nonnegative(self, t: object) -> bool:
        """Whether ``t`` is (a view of) a non-negative draw, in the dtype it was drawn in."""
        if not isinstance(t, FakeTensor) or t.is_neg():
            return False
        entry = self._nonnegative.get(t.untyped_storage()._cdata)
        return entry is not None and entry[1] == t.dtype

    def after(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Update the knowledge for an operator the program ran (``out``: its result)."""
        rule = self._rules.get(func)
        if rule is None:
            if not isinstance(func, torch._ops.OpOverload):
                # a higher-order operator (DTensor's RNG op): no schema says what its inner
                # operators write, and they run nested, unseen here; forget everything
                self._entries.clear()
                self._nonnegative.clear()
                self._patterns.clear()
                self._all_tainted = True
                return
            rule = self._rules[func] = _Rule(func)
            self.idle[func] = rule.idle
        entries = self._entries
        if not (entries or rule.source or self._reals or self._nonnegative or self._patterns):
            return  # nothing known, nothing this operator could make known
        if (
            rule.packet in _PATTERN_OPS
            and not rule.written
            and (self._patterns or rule.packet in _TRIANGLES)
            and self._pattern_result(rule, args, kwargs, out)
        ):
            return
        if self._nonnegative and rule.packet in _NONNEGATIVE_COMPARISONS and not rule.written:
            decided = self._compared_with_nonnegative(rule.packet, args, out)
            if decided is not None:
                self._write(out, decided)
                return
        if rule.foreign:
            tensors = [t for t in pytree.arg_tree_leaves(*args, **kwargs) if _is_tensor(t)]
            self._after_write_to(tensors, None)
            return
        if rule.written:
            if (
                rule.quick_write
                and _unknown_fake(args[0], entries, self._reals)
                and not (self._nonnegative and self._is_nonnegative(args[0]))
                and not (self._patterns and args[0].untyped_storage()._cdata in self._patterns)
            ):
                return  # an unknown tensor updated from its own elements stays unknown
            self._after_write(rule, args, kwargs)
            if (
                rule.packet is _aten.uniform_
                and isinstance(args[0], FakeTensor)
                and _NONNEGATIVE_DRAWS[_aten.uniform_](args, kwargs)
            ):
                self._mark_nonnegative(args[0])
            return
        if rule.packet in _NONNEGATIVE_DRAWS and isinstance(out, FakeTensor):
            self._mark_nonnegative(out)  # rand, rand_like (their out= forms write)
            return
        if rule.kind is None:
            return
        if rule.quick and args and _unknown_fake(args[0], entries):
            return  # the result depends on the first argument's unknown elements
        if not isinstance(out, FakeTensor):
            if rule.packet in (_aten.max, _aten.min) and isinstance(out, tuple) and out:
                out = out[0]  # (values, indices) of max.dim / min.dim: the values
            else:
                return
        value = self._result(rule, args, kwargs, out)
        if value is not None:
            self._write(out, value)

    def _result(
        self, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], out: FakeTensor
    ) -> Scalar | None:
        kind = rule.kind
        if kind == "pointwise":
            return self._pointwise(rule, args, kwargs, out.dtype)  # type: ignore[return-value]
        if kind == "copy":
            value = self.value(args[0]) if args else None
            return None if value is None else _cast(value, out.dtype)
        if kind == "factory":
            if rule.packet is _aten.arange and out.numel() != 1:
                return None
            return _cast(_FACTORIES[rule.packet](args, kwargs), out.dtype)
        if kind == "reduction":
            return self._reduction(rule.packet, args, out)
        if kind == "concatenation":
            tensors = [t for t in args[0] if t.numel()] if args else []
            values = [self.value(t) for t in tensors]
            if not values or values[0] is None or len({t.dtype for t in tensors}) != 1:
                return None
            if all(v is not None and _same(v, values[0]) for v in values):
                return _cast(values[0], out.dtype)
        return None

    def _after_write(self, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        targets = []
        for index, name in rule.written:
            target = args[index] if index < len(args) else kwargs.get(name)
            if isinstance(target, torch.Tensor):
                targets.append(target)
            elif isinstance(target, (list, tuple)):
                targets.extend(t for t in target if isinstance(t, torch.Tensor))
        value: object = None
        fakes = [t for t in targets if isinstance(t, FakeTensor)]
        if rule.inplace and fakes and fakes[0] is targets[0]:
            value = self._inplace_value(rule, args, kwargs, fakes[0])
        self._after_write_to(targets, value)

    def _after_write_to(self, targets: list[torch.Tensor], value: object) -> None:
        """``targets`` were written, with ``value`` in every element (None: unknown)."""
        if not all(isinstance(t, FakeTensor) for t in targets):
            # a real tensor: the write ran on its fake, so taint it, know nothing of it
            reals = [t for t in targets if type(t) in (torch.Tensor, torch.nn.Parameter)]
            self._tainted.update(t.untyped_storage()._cdata for t in reals)
            targets = [t for t in targets if isinstance(t, FakeTensor)]
        if self._reals:
            for t in targets:
                real = self._reals.get(t.untyped_storage()._cdata)
                if real is not None:
                    self._tainted.add(real[1])
        for target in targets:
            if self._nonnegative:
                self._nonnegative.pop(target.untyped_storage()._cdata, None)
            if self._patterns:
                self._patterns.pop(target.untyped_storage()._cdata, None)
            if value is _UNCHANGED:
                continue
            if value is None:
                if self._entries:
                    self._entries.pop(target.untyped_storage()._cdata, None)
            else:
                self._write(target, value)  # type: ignore[arg-type]

    def _inplace_value(
        self, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], target: FakeTensor
    ) -> object:
        packet = rule.packet
        if packet in _FACTORIES:
            return _cast(_FACTORIES[packet](args, kwargs), target.dtype)
        if packet is _FILL_:
            value = args[1] if len(args) > 1 else kwargs.get("value")
            if isinstance(value, torch.Tensor):
                value = self.value(value)
            return None if value is None else _cast(value, target.dtype)
        if packet is _COPY_:
            value = self.value(args[1]) if len(args) > 1 else None
            return None if value is None else _cast(value, target.dtype)
        if rule.kind == "pointwise":
            return self._pointwise(rule, args, kwargs, target.dtype)
        return None

    # -- triangular tensors -------------------------------------------------------------
    def _triangle(self, t: object) -> _Triangle | None:
        """The triangle ``t`` holds, if ``t`` is the very tensor it was recorded for."""
        if not isinstance(t, FakeTensor):
            return None
        entry = self._patterns.get(t.untyped_storage()._cdata)
        if entry is None or entry[1] != _layout(t):
            return None
        return entry[2]

    def _operand(self, a: object) -> _Triangle | Scalar | None:
        """A comparison's operand: a triangle, a known value (tensor or number), or None."""
        triangle = self._triangle(a)
        if triangle is not None:
            return triangle
        if isinstance(a, torch.Tensor):
            return self.value(a)
        return a if _is_number(a) else None

    def _pattern_result(
        self, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> bool:
        """Record what a triangle operator's result holds; True when it was decided."""
        if not isinstance(out, FakeTensor) or not args:
            return False
        packet = rule.packet
        result: _Triangle | Scalar | None = None
        if packet in _TRIANGLES:
            value = self.value(args[0])
            if value is None or out.dim() < 2:
                return False
            diagonal = int(_arg(args, kwargs, 1, "diagonal", 0))
            zero = _cast(0, out.dtype)
            result = _Triangle(_TRIANGLES[packet], diagonal, _cast(value, out.dtype), zero)
        elif packet in _PATTERN_COPIES:
            triangle = self._triangle(args[0])
            if triangle is None or out.shape != args[0].shape:
                return False
            result = triangle.cast(out.dtype)
        elif packet in _PATTERN_COMPARISONS:
            if len(args) < 2 or not _exactly_comparable(args[0], args[1]):
                return False
            a, b = self._operand(args[0]), self._operand(args[1])
            if a is None or b is None or not (_is_triangle(a) or _is_triangle(b)):
                return False
            for x, t in ((a, args[0]), (b, args[1])):
                if _is_triangle(x) and t.shape != out.shape:
                    return False  # broadcast: the triangle's indices are not the result's
            result = _compare(_PATTERN_COMPARISONS[packet], a, b)
            if result is None:
                return False
        else:  # all / any
            triangle = self._triangle(args[0])
            if triangle is None or rule.func._overloadname != "default":
                return False
            rows, cols = args[0].shape[-2], args[0].shape[-1]
            present = [v for v, n in triangle.regions(rows, cols) if n]
            if not present or args[0].numel() == 0:
                return False
            truths = [bool(v) for v in present]
            result = _cast(all(truths) if packet is _aten.all else any(truths), out.dtype)
        if _is_triangle(result):
            simple = result.uniform(out.shape[-2], out.shape[-1]) if out.numel() else None
            if simple is None:
                self._record_triangle(out, result)
                return True
            result = simple
        if result is None:
            return False
        self._write(out, result)  # type: ignore[arg-type]
        return True

    def _record_triangle(self, t: FakeTensor, triangle: _Triangle) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._reals:
            return  # the fake of a real tensor: its data may change outside the mode
        self._entries.pop(key, None)
        ref = weakref.ref(storage, functools.partial(_release, self._patterns, key))
        self._patterns[key] = (ref, _layout(t), triangle)

    def _mark_nonnegative(self, t: FakeTensor) -> None:
        """``t`` was just drawn, every element of its storage at least 0."""
        storage = t.untyped_storage()
        if (
            t.numel() * t.element_size() != storage.nbytes()
            or t.storage_offset()
            or not (t.is_contiguous() or _dense(t))
            or t.is_neg()
            or not (t.dtype.is_floating_point and not t.dtype.is_complex)
            or t.untyped_storage()._cdata in self._reals
        ):
            return  # a part of its storage (the rest holds anything) or not a real draw
        key = storage._cdata
        ref = weakref.ref(storage, functools.partial(_release, self._nonnegative, key))
        self._nonnegative[key] = (ref, t.dtype)

    def _compared_with_nonnegative(
        self, packet: Any, args: tuple[Any, ...], out: Any
    ) -> bool | None:
        """``x OP c`` (or ``c OP x``) for a non-negative draw ``x``, where ``c`` (a number
        or a known tensor) decides it for every element; None otherwise."""
        if len(args) < 2 or not isinstance(out, FakeTensor) or out.dtype != torch.bool:
            return None
        x, c = args[0], args[1]
        if not self._is_nonnegative(x):
            x, c = c, x
            packet = _MIRRORED[packet]
            if not self._is_nonnegative(x):
                return None
        number = self.value(c) if isinstance(c, torch.Tensor) else c
        if not _is_number(number):
            return None
        result, decides = _NONNEGATIVE_COMPARISONS[packet]
        return result if decides(number) else None

    def _write(self, t: FakeTensor, value: Scalar) -> None:
        """``t`` now holds ``value`` in every element: record what that says of its storage."""
        n = t.numel()
        if not n:
            return  # nothing written
        storage = t.untyped_storage()
        key = storage._cdata
        if self._patterns:
            self._patterns.pop(key, None)
        entries = self._entries
        if t.is_neg() or t.is_conj() or key in self._reals:
            # (the fake of a real tensor: the real one's data may change outside the mode)
            entries.pop(key, None)
            return
        whole = (
            n * t.element_size() == storage.nbytes()
            and t.storage_offset() == 0
            and (t.is_contiguous() or _dense(t))
        )
        entry = entries.get(key)
        if whole:
            if entry is not None and entry[0]() is storage:
                entries[key] = (entry[0], t.dtype, value)
            else:
                ref = weakref.ref(storage, functools.partial(_release, entries, key))
                entries[key] = (ref, t.dtype, value)
        elif entry is not None and not (entry[1] == t.dtype and _same(entry[2], value)):
            del entries[key]

    # -- values of results -------------------------------------------------------------
    def _pointwise(
        self, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
    ) -> object:
        values: dict[int, Scalar] = {}
        for a in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(a, torch.Tensor):
                value = self.value(a)
                if value is None:
                    return self._decided(rule, args, kwargs, dtype) if rule.decides else None
                values[id(a)] = value
        if dtype.is_complex:
            return None
        if dtype.is_floating_point and not _exactly_rounded(rule, args, kwargs):
            return None
        return _compute(rule, args, kwargs, values)

    def _decided(
        self,
        rule: _Rule,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        dtype: torch.dtype,
    ) -> object:
        """A result one known input decides: ``x | True``, ``x & False``, ``where``..."""
        packet = rule.packet
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        known = [(t, v) for t in tensors if (v := self.value(t)) is not None]
        if packet in _OR or packet in _AND:
            absorbing = packet in _OR
            for t, v in known:
                # bitwise: for booleans only (``x | 1`` of an int is not 1)
                boolean = t.dtype == torch.bool and dtype == torch.bool
                if (boolean or packet in _LOGICAL) and bool(v) is absorbing:
                    if rule.inplace and t is args[0]:
                        return _UNCHANGED  # self already holds the result
                    return _cast(absorbing, dtype)
            return None
        if packet is _WHERE and len(args) == 3:
            condition = self.value(args[0])
            if condition is None:
                return None
            chosen = args[1] if condition else args[2]
            value = self.value(chosen) if isinstance(chosen, torch.Tensor) else chosen
            return None if value is None else _cast(value, dtype)
        if packet in _MASKED_FILL and len(args) >= 3:
            mask = self.value(args[1])
            if mask is not None and not mask:
                return _UNCHANGED if rule.inplace else self._cast_value(args[0], dtype)
            fill = self.value(args[2]) if isinstance(args[2], torch.Tensor) else args[2]
            if fill is None:
                return None
            fill = _cast(fill, dtype)
            if mask:
                return fill
            current = self.value(args[0])
            if current is not None and _same(_cast(current, dtype), fill):
                return _UNCHANGED if rule.inplace else fill
        return None

    def _cast_value(self, t: object, dtype: torch.dtype) -> Scalar | None:
        value = self.value(t)
        return None if value is None else _cast(value, dtype)

    def _reduction(self, packet: Any, args: tuple[Any, ...], out: FakeTensor) -> Scalar | None:
        source = args[0] if args else None
        if not isinstance(source, torch.Tensor):
            return None
        if source.numel() == 0:
            # every element of the result is an empty reduction
            identity = {_aten.all: True, _aten.any: False, _aten.sum: 0}
            if packet in identity:
                return _cast(identity[packet], out.dtype)
            return 0 if packet is _aten.count_nonzero else None
        value = self.value(source)
        if value is None:
            return None
        if packet in (_aten.all, _aten.any):
            return _cast(bool(value), out.dtype)
        if packet is _aten.count_nonzero:
            return source.numel() // max(out.numel(), 1) if value else 0
        if packet is _aten.sum:
            count = source.numel() // max(out.numel(), 1)
            return _exact_sum(_cast(value, out.dtype), count, out.dtype)
        return _cast(value, out.dtype)  # amax, amin, max, min


def _release(entries: dict[int, Any], key: int, ref: object) -> None:
    """A storage died: drop its entry (unless the key is another storage's now)."""
    entry = entries.get(key)
    if entry is not None and entry[0] is ref:
        del entries[key]


def _exactly_rounded(rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a floating pointwise result is the same on CPU and CUDA: one IEEE operation
    (``a + alpha * b`` with ``alpha != 1`` is two, which CUDA may fuse into one FMA)."""
    if rule.base not in _EXACT_FLOATING:
        return False
    if rule.base in ("add", "sub", "rsub"):
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        return alpha == 1
    return True


def _is_tensor(t: object) -> bool:
    return isinstance(t, torch.Tensor)


def _is_number(c: object) -> bool:
    """A real number, not NaN (every comparison with NaN is False, decided by no rule)."""
    return isinstance(c, (bool, int, float)) and not (isinstance(c, float) and math.isnan(c))


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _layout(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.dtype, tuple(t.shape), t.stride(), t.storage_offset(), t.is_neg(), t.is_conj())


class _Triangle:
    """``inside`` where column - row (of the last two dimensions) is at least ``diagonal``
    (``triu``) or at most it (``tril``), ``outside`` elsewhere."""

    __slots__ = ("kind", "diagonal", "inside", "outside")

    def __init__(self, kind: str, diagonal: int, inside: Any, outside: Any) -> None:
        self.kind, self.diagonal, self.inside, self.outside = kind, diagonal, inside, outside

    def same_region(self, other: _Triangle) -> bool:
        return self.kind == other.kind and self.diagonal == other.diagonal

    def cast(self, dtype: torch.dtype) -> _Triangle | None:
        inside, outside = _cast(self.inside, dtype), _cast(self.outside, dtype)
        if inside is None or outside is None:
            return None
        return _Triangle(self.kind, self.diagonal, inside, outside)

    def regions(self, rows: int, cols: int) -> list[tuple[Any, int]]:
        """(value, whether any element holds it) for the inside, then the outside."""
        d = self.diagonal
        # column - row ranges over [-(rows - 1), cols - 1]
        low, high = -(rows - 1), cols - 1
        if self.kind == "triu":
            inside, outside = high >= d, low < d
        else:
            inside, outside = low <= d, high > d
        return [
            (self.inside, int(inside and rows > 0 and cols > 0)),
            (self.outside, int(outside and rows > 0 and cols > 0)),
        ]

    def uniform(self, rows: int, cols: int) -> Scalar | None:
        """The one value every element holds, if so (one region empty, or both alike)."""
        (inside, has_in), (outside, has_out) = self.regions(rows, cols)
        if has_in and has_out:
            return inside if _same(inside, outside) else None
        return inside if has_in else outside if has_out else None


def _exactly_comparable(a: object, b: object) -> bool:
    """Whether comparing ``a`` and ``b`` as Python numbers is what torch computes: two
    tensors of one dtype, or a tensor and a number its dtype holds exactly (torch casts a
    Python number to a tensor's dtype of its kind, and promotes an integer tensor compared
    with a float; those casts are left undecided)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype
    tensor, number = (a, b) if isinstance(a, torch.Tensor) else (b, a)
    if not isinstance(tensor, torch.Tensor) or not _is_number(number):
        return False
    if isinstance(number, float) and not tensor.dtype.is_floating_point:
        return False
    cast = _cast(number, tensor.dtype)
    return cast is not None and cast == number


def _is_triangle(x: object) -> bool:
    return isinstance(x, _Triangle)


def _compare(op: Callable[[Any, Any], bool], a: Any, b: Any) -> _Triangle | Scalar | None:
    """``op`` of two operands (triangles or values), elementwise, as a triangle."""
    if _is_triangle(a) and _is_triangle(b):
        if not a.same_region(b):
            return None
        return _Triangle(a.kind, a.diagonal, op(a.inside, b.inside), op(a.outside, b.outside))
    triangle, value, first = (a, b, True) if _is_triangle(a) else (b, a, False)
    if value is None or isinstance(value, complex):
        return None

    def apply(x: Any) -> bool:
        return op(x, value) if first else op(value, x)

    return _Triangle(
        triangle.kind, triangle.diagonal, apply(triangle.inside), apply(triangle.outside)
    )


def _unknown_fake(t: object, entries: dict[int, Any], reals: dict[int, Any] | None = None) -> bool:
    """Whether ``t`` is a fake tensor whose value is not known (the common case, fast), and
    (given ``reals``) not the fake of a real tensor."""
    if not isinstance(t, FakeTensor) or t.constant is not None:
        return False
    key = t.untyped_storage()._cdata
    return key not in entries and (reals is None or key not in reals)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements are ``t.numel()`` consecutive ones, each seen once."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _same(a: Scalar, b: Scalar) -> bool:
    """Whether two values are the same element (``-0.0`` is not ``0.0``, NaN is NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and a == b


_CASTS: dict[tuple[torch.dtype, type, str], Scalar | None] = {}


def _cast(value: Any, dtype: torch.dtype) -> Scalar | None:
    """``value`` converted to ``dtype`` as a fill does (c10's scalar conversion), memoised
    (by type and ``repr``, so ``-0.0`` is not ``0.0``)."""
    if value is None or isinstance(value, torch.Tensor):
        return None
    key = (dtype, type(value), repr(value))
    try:
        return _CASTS[key]
    except KeyError:
        pass
    with torch._C._DisableTorchDispatch():
        try:
            result = torch.scalar_tensor(value, dtype=dtype).item()
        except (RuntimeError, TypeError, OverflowError):  # out of the dtype's range
            result = None
    if len(_CASTS) >= _COMPUTED_LIMIT:
        _CASTS.clear()
    _CASTS[key] = result
    return result


def _uniform_real(t: torch.Tensor) -> Scalar | None:
    """The value of every element of a real tensor, if they are all the same."""
    n = t.numel()
    if n == 0 or n > REAL_NUMEL_LIMIT or t.device.type != "cpu" or t.is_quantized:
        return None
    if n == 1:  # a constant: ``item`` reads it with its negative/conjugate bits
        with torch._C._DisableTorchDispatch():
            value = t.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    with torch._C._DisableTorchDispatch(), torch.no_grad():
        flat = t.detach().resolve_conj().resolve_neg().reshape(-1)
        first = flat[0]
        if n > 1 and not bool(torch.eq(flat[-1], first)):
            return None
        if n > 1 and not bool(torch.eq(flat, first).all()):
            return None
        signs = torch.signbit(flat) if flat.dtype.is_floating_point and n > 1 else None
        if signs is not None and not bool(torch.eq(signs, signs[0]).all()):
            return None  # -0.0 and 0.0
        value = first.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _exact_sum(value: Scalar | None, count: int, dtype: torch.dtype) -> Scalar | None:
    """``count`` additions of ``value``, where every order of summation gives it exactly."""
    if value is None or isinstance(value, complex):
        return None
    total = value * count
    if dtype.is_floating_point:
        # integral values below 2**24 add exactly in fp32 (CUDA's accumulator) and above
        if not float(value).is_integer() or abs(total) > 1 << 24:
            return None
    elif abs(total) >= 1 << 31:
        return None
    return _cast(total, dtype)


#: (operator, its inputs as ``_input_key`` describes them) -> result: identical layers
#: repeat the same computations on known values
_COMPUTED: dict[tuple[Any, ...], Scalar | None] = {}
_COMPUTED_LIMIT = 4096


def _input_key(a: Any, values: dict[int, Scalar]) -> Any:
    """What a pointwise result depends on in ``a``: for a tensor its dtype, whether it has
    dimensions and its value; a scalar by type and ``repr`` (so ``-0.0`` is not ``0.0``)."""
    if isinstance(a, torch.Tensor):
        v = values[id(a)]
        return (a.dtype, a.dim() > 0, type(v), repr(v))
    if isinstance(a, (bool, int, float, complex)):
        return (type(a), repr(a))
    return a


def _compute(
    rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], values: dict[int, Scalar]
) -> Scalar | None:
    """Run a pointwise operator on one-element CPU tensors holding the known values.

    A dimensioned input becomes shape (1,), a 0-d one shape (): type promotion is the
    same as for the real inputs, and so is the result's dtype. Results are memoised.
    """
    key: tuple[Any, ...] | None = (
        rule.func,
        tuple(_input_key(a, values) for a in args),
        tuple((k, _input_key(v, values)) for k, v in kwargs.items()),
    )
    try:
        return _COMPUTED[key]  # type: ignore[index]
    except KeyError:
        pass
    except TypeError:  # an unhashable argument (a list): computed every time
        key = None
    value = _compute_now(rule, args, kwargs, values)
    if key is not None:
        if len(_COMPUTED) >= _COMPUTED_LIMIT:
            _COMPUTED.clear()
        _COMPUTED[key] = value
    return value


def _compute_now(
    rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any], values: dict[int, Scalar]
) -> Scalar | None:

    def real(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            shape = (1,) if a.dim() else ()
            return torch.full(shape, values[id(a)], dtype=a.dtype)
        return a

    func = rule.func
    with torch._C._DisableTorchDispatch(), torch.no_grad():
        try:
            real_args = [real(a) for a in args]
            real_kwargs = {k: real(v) for k, v in kwargs.items()}
            result = func(*real_args, **real_kwargs)
        except Exception:  # noqa: BLE001 - an input the operator refuses: not known
            return None
        if rule.inplace:
            result = real_args[0]
        if not isinstance(result, torch.Tensor) or result.numel() != 1:
            return None
        value = result.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
