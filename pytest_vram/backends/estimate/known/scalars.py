"""Scalar values as torch computes them: casts, sums and pointwise results, exactly.

What :mod:`.values` knows of a tensor is one Python scalar per element; these functions
give the value torch would give, or None where it may differ (an out-of-range cast, a
floating sum that rounds, NaN). Results are memoised: identical layers repeat the same
computations on known values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: the most elements of a real tensor compared to find whether they are all equal
REAL_NUMEL_LIMIT = 1 << 20

Scalar = bool | int | float | complex


def is_number(c: object) -> bool:
    """A real number, not NaN (every comparison with NaN is False, decided by no rule)."""
    return isinstance(c, (bool, int, float)) and not (isinstance(c, float) and math.isnan(c))


def arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements are ``t.numel()`` consecutive ones, each seen once."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def same(a: Scalar, b: Scalar) -> bool:
    """Whether two values are the same element (``-0.0`` is not ``0.0``, NaN is NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and a == b


_CASTS: dict[tuple[torch.dtype, type, str], Scalar | None] = {}


def cast(value: Any, dtype: torch.dtype) -> Scalar | None:
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


def uniform_real(t: torch.Tensor) -> Scalar | None:
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


def exact_sum(value: Scalar | None, count: int, dtype: torch.dtype) -> Scalar | None:
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
    return cast(total, dtype)


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


def compute(
    func: Any,
    inplace: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    values: dict[int, Scalar],
) -> Scalar | None:
    """Run a pointwise operator on one-element CPU tensors holding the known values.

    A dimensioned input becomes shape (1,), a 0-d one shape (): type promotion is the
    same as for the real inputs, and so is the result's dtype. Results are memoised.
    """
    key: tuple[Any, ...] | None = (
        func,
        tuple(_input_key(a, values) for a in args),
        tuple((k, _input_key(v, values)) for k, v in kwargs.items()),
    )
    try:
        return _COMPUTED[key]  # type: ignore[index]
    except KeyError:
        pass
    except TypeError:  # an unhashable argument (a list): computed every time
        key = None
    value = _compute_now(func, inplace, args, kwargs, values)
    if key is not None:
        if len(_COMPUTED) >= _COMPUTED_LIMIT:
            _COMPUTED.clear()
        _COMPUTED[key] = value
    return value


def _compute_now(
    func: Any,
    inplace: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    values: dict[int, Scalar],
) -> Scalar | None:
    def real(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            shape = (1,) if a.dim() else ()
            return torch.full(shape, values[id(a)], dtype=a.dtype)
        return a

    with torch._C._DisableTorchDispatch(), torch.no_grad():
        try:
            real_args = [real(a) for a in args]
            real_kwargs = {k: real(v) for k, v in kwargs.items()}
            result = func(*real_args, **real_kwargs)
        except Exception:  # noqa: BLE001 - an input the operator refuses: not known
            return None
        if inplace:
            result = real_args[0]
        if not isinstance(result, torch.Tensor) or result.numel() != 1:
            return None
        value = result.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
