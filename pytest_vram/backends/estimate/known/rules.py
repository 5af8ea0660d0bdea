"""What each operator does to known values, worked out once from its schema and tags.

The tables name the operators whose results can be known (factories, copies, reductions,
concatenations, pointwise operators), those where one known input decides the result
(``or``, ``and``, ``where``, ``masked_fill``), the non-negative draws and the comparisons
they decide, and the triangle operators; :class:`Rule` classifies any operator from them
and from its schema (what it writes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_vram.backends.estimate.known.scalars import is_number

_aten = torch.ops.aten

#: factories (and whole-tensor fills) and the value they write, from ``(args, kwargs)``
FACTORIES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Any]] = {
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
#: ``x | y``, ``x & y``, ``x ^ y`` as operators: decomposed into ``bitwise_*`` before the
#: fake mode sees them, except under ``torch.inference_mode()``, where they reach it as
#: themselves (transformers' ``generate`` updates its finished sequences with ``&`` and
#: ``|``)
_BITWISE_DUNDERS = frozenset(
    {_aten.__or__, _aten.__ior__, _aten.__and__, _aten.__iand__, _aten.__xor__, _aten.__ixor__}
)
OR_OPS = frozenset(
    {_aten.logical_or, _aten.logical_or_, _aten.bitwise_or, _aten.bitwise_or_}
    | {_aten.__or__, _aten.__ior__}
)
AND_OPS = frozenset(
    {_aten.logical_and, _aten.logical_and_, _aten.bitwise_and, _aten.bitwise_and_}
    | {_aten.__and__, _aten.__iand__}
)
LOGICAL_OPS = frozenset(
    {_aten.logical_or, _aten.logical_or_, _aten.logical_and, _aten.logical_and_}
)
WHERE = _aten.where
MASKED_FILL = frozenset({_aten.masked_fill, _aten.masked_fill_})
#: operators not tagged pointwise whose result, for uniform non-empty inputs, is the
#: operator applied to one element of each (``isin``: whether ``v`` equals ``w``)
_ELEMENTWISE = MASKED_FILL | _BITWISE_DUNDERS | {_aten.isin}
COPY_INPLACE = _aten.copy_
FILL_INPLACE = _aten.fill_
#: draws whose every element is at least 0 (CUDA's and the CPU's ``uniform_`` compute
#: ``from + u * (to - from)`` with ``u`` in [0, 1], and give ``from`` for ``to``; with
#: ``from >= 0`` no rounding makes that negative), from ``(args, kwargs)``
NONNEGATIVE_DRAWS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], bool]] = {
    _aten.rand: lambda a, k: True,
    _aten.rand_like: lambda a, k: True,
    _aten.uniform_: lambda a, k: (
        is_number(f := a[1] if len(a) > 1 else k.get("from", 0.0)) and f >= 0
    ),
}
#: comparisons ``x OP c`` decided for every ``x >= 0`` by ``c`` alone: the operator, then
#: (the result, and whether ``c`` decides it) -> ``c <= 0`` decides ``lt``/``ge``, ``c < 0``
#: ``le``/``gt``; with the tensor second (``c OP x``) the mirrored operator
NONNEGATIVE_COMPARISONS: dict[Any, tuple[bool, Callable[[float], bool]]] = {
    _aten.lt: (False, lambda c: c <= 0),
    _aten.ge: (True, lambda c: c <= 0),
    _aten.le: (False, lambda c: c < 0),
    _aten.gt: (True, lambda c: c < 0),
}
MIRRORED = {_aten.lt: _aten.gt, _aten.gt: _aten.lt, _aten.le: _aten.ge, _aten.ge: _aten.le}
#: triangles: whether an element (row i, column j of the last two dimensions) is kept
TRIANGLES = {_aten.triu: "triu", _aten.tril: "tril"}
#: operators whose result holds its first argument's elements at the same logical indices
PATTERN_COPIES = frozenset({_aten._to_copy, _aten.clone, _aten.lift_fresh, _aten.lift_fresh_copy})
PATTERN_COMPARISONS = {_aten.eq: lambda a, b: a == b, _aten.ne: lambda a, b: a != b}
_PATTERN_REDUCTIONS = frozenset({_aten.all, _aten.any})
PATTERN_OPS = frozenset(TRIANGLES) | PATTERN_COPIES | frozenset(PATTERN_COMPARISONS)
PATTERN_OPS |= _PATTERN_REDUCTIONS


class Rule:
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
        if packet in FACTORIES:
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
            packet in OR_OPS or packet in AND_OPS or packet is WHERE or (packet in MASKED_FILL)
        )
        #: an in-place operator (its first argument is its only written one)
        writes_self = self.written == ((0, func._schema.arguments[0].name),)
        self.inplace = writes_self and not seeded
        #: whether the rule matters when nothing is known yet
        #: (a reduction of an empty tensor is known whatever it holds)
        self.source = (
            self.kind in ("factory", "copy", "reduction")
            or packet in (COPY_INPLACE, FILL_INPLACE)
            or packet in NONNEGATIVE_DRAWS
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
            and packet not in NONNEGATIVE_DRAWS
            and packet not in TRIANGLES
        )


def exactly_rounded(rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a floating pointwise result is the same on CPU and CUDA: one IEEE operation
    (``a + alpha * b`` with ``alpha != 1`` is two, which CUDA may fuse into one FMA)."""
    if rule.base not in _EXACT_FLOATING:
        return False
    if rule.base in ("add", "sub", "rsub"):
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        return alpha == 1
    return True
