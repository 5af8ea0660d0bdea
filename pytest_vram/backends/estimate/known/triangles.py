"""Triangular tensors: one known value on and above (or below) a diagonal, another elsewhere.

``triu``/``tril`` of a known uniform tensor (a causal mask,
``torch.triu(torch.full((n, n), -inf), 1)``) is such a tensor, in its logical indices; a
:class:`Triangle` describes it, and :func:`compare` gives the triangle (or the one value)
of an elementwise comparison of two of them or of one with a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_vram.backends.estimate.known.scalars import Scalar, cast, is_number, same


def layout(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.dtype, tuple(t.shape), t.stride(), t.storage_offset(), t.is_neg(), t.is_conj())


class Triangle:
    """``inside`` where column - row (of the last two dimensions) is at least ``diagonal``
    (``triu``) or at most it (``tril``), ``outside`` elsewhere."""

    __slots__ = ("kind", "diagonal", "inside", "outside")

    def __init__(self, kind: str, diagonal: int, inside: Any, outside: Any) -> None:
        self.kind, self.diagonal, self.inside, self.outside = kind, diagonal, inside, outside

    def same_region(self, other: Triangle) -> bool:
        return self.kind == other.kind and self.diagonal == other.diagonal

    def cast(self, dtype: torch.dtype) -> Triangle | None:
        inside, outside = cast(self.inside, dtype), cast(self.outside, dtype)
        if inside is None or outside is None:
            return None
        return Triangle(self.kind, self.diagonal, inside, outside)

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
            return inside if same(inside, outside) else None
        return inside if has_in else outside if has_out else None


def exactly_comparable(a: object, b: object) -> bool:
    """Whether comparing ``a`` and ``b`` as Python numbers is what torch computes: two
    tensors of one dtype, or a tensor and a number its dtype holds exactly (torch casts a
    Python number to a tensor's dtype of its kind, and promotes an integer tensor compared
    with a float; those casts are left undecided)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype
    tensor, number = (a, b) if isinstance(a, torch.Tensor) else (b, a)
    if not isinstance(tensor, torch.Tensor) or not is_number(number):
        return False
    if isinstance(number, float) and not tensor.dtype.is_floating_point:
        return False
    converted = cast(number, tensor.dtype)
    return converted is not None and converted == number


def is_triangle(x: object) -> bool:
    return isinstance(x, Triangle)


def compare(op: Callable[[Any, Any], bool], a: Any, b: Any) -> Triangle | Scalar | None:
    """``op`` of two operands (triangles or values), elementwise, as a triangle."""
    if is_triangle(a) and is_triangle(b):
        if not a.same_region(b):
            return None
        return Triangle(a.kind, a.diagonal, op(a.inside, b.inside), op(a.outside, b.outside))
    triangle, value, first = (a, b, True) if is_triangle(a) else (b, a, False)
    if value is None or isinstance(value, complex):
        return None

    def apply(x: Any) -> bool:
        return op(x, value) if first else op(value, x)

    return Triangle(
        triangle.kind, triangle.diagonal, apply(triangle.inside), apply(triangle.outside)
    )
