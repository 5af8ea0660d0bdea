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
import weakref
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree

from pytest_vram.backends.estimate.known.rules import (
    AND_OPS,
    COPY_INPLACE,
    FACTORIES,
    FILL_INPLACE,
    LOGICAL_OPS,
    MASKED_FILL,
    MIRRORED,
    NONNEGATIVE_COMPARISONS,
    NONNEGATIVE_DRAWS,
    OR_OPS,
    PATTERN_COMPARISONS,
    PATTERN_COPIES,
    PATTERN_OPS,
    TRIANGLES,
    WHERE,
    Rule,
    exactly_rounded,
)
from pytest_vram.backends.estimate.known.scalars import (
    Scalar,
    arg,
    cast,
    compute,
    dense,
    exact_sum,
    is_number,
    same,
    uniform_real,
)
from pytest_vram.backends.estimate.known.triangles import (
    Triangle,
    compare,
    exactly_comparable,
    is_triangle,
    layout,
)

_aten = torch.ops.aten
#: a write that leaves its storage's knowledge as it is
_UNCHANGED = object()


class KnownValues:
    """The known uniform values of one test's fake tensors (see the module docstring)."""

    def __init__(self) -> None:
        #: storage key -> (weak reference to the storage, dtype, value)
        self._entries: dict[int, tuple[weakref.ref[Any], torch.dtype, Scalar]] = {}
        self._rules: dict[Any, Rule] = {}
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
        self._patterns: dict[int, tuple[weakref.ref[Any], tuple[Any, ...], Triangle]] = {}

    # -- queries ---------------------------------------------------------------------
    def value(self, t: object) -> Scalar | None:
        """The value of every element of ``t``, or None where it is not known."""
        if isinstance(t, FakeTensor):
            if t.constant is not None:
                return uniform_real(t.constant)
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
            return uniform_real(t)  # type: ignore[arg-type]
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
            rule = self._rules[func] = Rule(func)
            self.idle[func] = rule.idle
        entries = self._entries
        if not (entries or rule.source or self._reals or self._nonnegative or self._patterns):
            return  # nothing known, nothing this operator could make known
        if (
            rule.packet in PATTERN_OPS
            and not rule.written
            and (self._patterns or rule.packet in TRIANGLES)
            and self._pattern_result(rule, args, kwargs, out)
        ):
            return
        if self._nonnegative and rule.packet in NONNEGATIVE_COMPARISONS and not rule.written:
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
                and NONNEGATIVE_DRAWS[_aten.uniform_](args, kwargs)
            ):
                self._mark_nonnegative(args[0])
            return
        if rule.packet in NONNEGATIVE_DRAWS and isinstance(out, FakeTensor):
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
        self, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any], out: FakeTensor
    ) -> Scalar | None:
        kind = rule.kind
        if kind == "pointwise":
            return self._pointwise(rule, args, kwargs, out.dtype)  # type: ignore[return-value]
        if kind == "copy":
            value = self.value(args[0]) if args else None
            return None if value is None else cast(value, out.dtype)
        if kind == "factory":
            if rule.packet is _aten.arange and out.numel() != 1:
                return None
            return cast(FACTORIES[rule.packet](args, kwargs), out.dtype)
        if kind == "reduction":
            return self._reduction(rule.packet, args, out)
        if kind == "concatenation":
            tensors = [t for t in args[0] if t.numel()] if args else []
            values = [self.value(t) for t in tensors]
            if not values or values[0] is None or len({t.dtype for t in tensors}) != 1:
                return None
            if all(v is not None and same(v, values[0]) for v in values):
                return cast(values[0], out.dtype)
        return None

    def _after_write(self, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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
        self, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any], target: FakeTensor
    ) -> object:
        packet = rule.packet
        if packet in FACTORIES:
            return cast(FACTORIES[packet](args, kwargs), target.dtype)
        if packet is FILL_INPLACE:
            value = args[1] if len(args) > 1 else kwargs.get("value")
            if isinstance(value, torch.Tensor):
                value = self.value(value)
            return None if value is None else cast(value, target.dtype)
        if packet is COPY_INPLACE:
            value = self.value(args[1]) if len(args) > 1 else None
            return None if value is None else cast(value, target.dtype)
        if rule.kind == "pointwise":
            return self._pointwise(rule, args, kwargs, target.dtype)
        return None

    # -- triangular tensors -------------------------------------------------------------
    def _triangle(self, t: object) -> Triangle | None:
        """The triangle ``t`` holds, if ``t`` is the very tensor it was recorded for."""
        if not isinstance(t, FakeTensor):
            return None
        entry = self._patterns.get(t.untyped_storage()._cdata)
        if entry is None or entry[1] != layout(t):
            return None
        return entry[2]

    def _operand(self, a: object) -> Triangle | Scalar | None:
        """A comparison's operand: a triangle, a known value (tensor or number), or None."""
        triangle = self._triangle(a)
        if triangle is not None:
            return triangle
        if isinstance(a, torch.Tensor):
            return self.value(a)
        return a if is_number(a) else None

    def _pattern_result(
        self, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> bool:
        """Record what a triangle operator's result holds; True when it was decided."""
        if not isinstance(out, FakeTensor) or not args:
            return False
        packet = rule.packet
        result: Triangle | Scalar | None = None
        if packet in TRIANGLES:
            value = self.value(args[0])
            if value is None or out.dim() < 2:
                return False
            diagonal = int(arg(args, kwargs, 1, "diagonal", 0))
            zero = cast(0, out.dtype)
            result = Triangle(TRIANGLES[packet], diagonal, cast(value, out.dtype), zero)
        elif packet in PATTERN_COPIES:
            triangle = self._triangle(args[0])
            if triangle is None or out.shape != args[0].shape:
                return False
            result = triangle.cast(out.dtype)
        elif packet in PATTERN_COMPARISONS:
            if len(args) < 2 or not exactly_comparable(args[0], args[1]):
                return False
            a, b = self._operand(args[0]), self._operand(args[1])
            if a is None or b is None or not (is_triangle(a) or is_triangle(b)):
                return False
            for x, t in ((a, args[0]), (b, args[1])):
                if is_triangle(x) and t.shape != out.shape:
                    return False  # broadcast: the triangle's indices are not the result's
            result = compare(PATTERN_COMPARISONS[packet], a, b)
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
            result = cast(all(truths) if packet is _aten.all else any(truths), out.dtype)
        if is_triangle(result):
            simple = result.uniform(out.shape[-2], out.shape[-1]) if out.numel() else None
            if simple is None:
                self._record_triangle(out, result)
                return True
            result = simple
        if result is None:
            return False
        self._write(out, result)  # type: ignore[arg-type]
        return True

    def _record_triangle(self, t: FakeTensor, triangle: Triangle) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._reals:
            return  # the fake of a real tensor: its data may change outside the mode
        self._entries.pop(key, None)
        ref = weakref.ref(storage, functools.partial(_release, self._patterns, key))
        self._patterns[key] = (ref, layout(t), triangle)

    def _mark_nonnegative(self, t: FakeTensor) -> None:
        """``t`` was just drawn, every element of its storage at least 0."""
        storage = t.untyped_storage()
        if (
            t.numel() * t.element_size() != storage.nbytes()
            or t.storage_offset()
            or not (t.is_contiguous() or dense(t))
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
            packet = MIRRORED[packet]
            if not self._is_nonnegative(x):
                return None
        number = self.value(c) if isinstance(c, torch.Tensor) else c
        if not is_number(number):
            return None
        result, decides = NONNEGATIVE_COMPARISONS[packet]
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
            and (t.is_contiguous() or dense(t))
        )
        entry = entries.get(key)
        if whole:
            if entry is not None and entry[0]() is storage:
                entries[key] = (entry[0], t.dtype, value)
            else:
                ref = weakref.ref(storage, functools.partial(_release, entries, key))
                entries[key] = (ref, t.dtype, value)
        elif entry is not None and not (entry[1] == t.dtype and same(entry[2], value)):
            del entries[key]

    # -- values of results -------------------------------------------------------------
    def _pointwise(
        self, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
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
        if dtype.is_floating_point and not exactly_rounded(rule, args, kwargs):
            return None
        return compute(rule.func, rule.inplace, args, kwargs, values)

    def _decided(
        self,
        rule: Rule,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        dtype: torch.dtype,
    ) -> object:
        """A result one known input decides: ``x | True``, ``x & False``, ``where``..."""
        packet = rule.packet
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        known = [(t, v) for t in tensors if (v := self.value(t)) is not None]
        if packet in OR_OPS or packet in AND_OPS:
            absorbing = packet in OR_OPS
            for t, v in known:
                # bitwise: for booleans only (``x | 1`` of an int is not 1)
                boolean = t.dtype == torch.bool and dtype == torch.bool
                if (boolean or packet in LOGICAL_OPS) and bool(v) is absorbing:
                    if rule.inplace and t is args[0]:
                        return _UNCHANGED  # self already holds the result
                    return cast(absorbing, dtype)
            return None
        if packet is WHERE and len(args) == 3:
            condition = self.value(args[0])
            if condition is None:
                return None
            chosen = args[1] if condition else args[2]
            value = self.value(chosen) if isinstance(chosen, torch.Tensor) else chosen
            return None if value is None else cast(value, dtype)
        if packet in MASKED_FILL and len(args) >= 3:
            mask = self.value(args[1])
            if mask is not None and not mask:
                return _UNCHANGED if rule.inplace else self._cast_value(args[0], dtype)
            fill = self.value(args[2]) if isinstance(args[2], torch.Tensor) else args[2]
            if fill is None:
                return None
            fill = cast(fill, dtype)
            if mask:
                return fill
            current = self.value(args[0])
            if current is not None and same(cast(current, dtype), fill):
                return _UNCHANGED if rule.inplace else fill
        return None

    def _cast_value(self, t: object, dtype: torch.dtype) -> Scalar | None:
        value = self.value(t)
        return None if value is None else cast(value, dtype)

    def _reduction(self, packet: Any, args: tuple[Any, ...], out: FakeTensor) -> Scalar | None:
        source = args[0] if args else None
        if not isinstance(source, torch.Tensor):
            return None
        if source.numel() == 0:
            # every element of the result is an empty reduction
            identity = {_aten.all: True, _aten.any: False, _aten.sum: 0}
            if packet in identity:
                return cast(identity[packet], out.dtype)
            return 0 if packet is _aten.count_nonzero else None
        value = self.value(source)
        if value is None:
            return None
        if packet in (_aten.all, _aten.any):
            return cast(bool(value), out.dtype)
        if packet is _aten.count_nonzero:
            return source.numel() // max(out.numel(), 1) if value else 0
        if packet is _aten.sum:
            count = source.numel() // max(out.numel(), 1)
            return exact_sum(cast(value, out.dtype), count, out.dtype)
        return cast(value, out.dtype)  # amax, amin, max, min


def _release(entries: dict[int, Any], key: int, ref: object) -> None:
    """A storage died: drop its entry (unless the key is another storage's now)."""
    entry = entries.get(key)
    if entry is not None and entry[0] is ref:
        del entries[key]


def _is_tensor(t: object) -> bool:
    return isinstance(t, torch.Tensor)


def _unknown_fake(t: object, entries: dict[int, Any], reals: dict[int, Any] | None = None) -> bool:
    """Whether ``t`` is a fake tensor whose value is not known (the common case, fast), and
    (given ``reals``) not the fake of a real tensor."""
    if not isinstance(t, FakeTensor) or t.constant is not None:
        return False
    key = t.untyped_storage()._cdata
    return key not in entries and (reals is None or key not in reals)
