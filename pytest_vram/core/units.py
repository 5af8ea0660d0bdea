"""Sizes and tolerances: the one place where "8GiB", "0.5% + 4MiB" are parsed and printed.

Every size the plugin reads from a user (command line, ini file, marker, baseline file) goes
through :func:`parse_size` or :func:`parse_tolerance`, so the accepted syntax and the error
messages are the same everywhere. Parsing is exact: numbers are read as decimals, never as
binary floats, so "1.5 GiB" is exactly 1610612736 bytes and "0.5%" of a 6 GiB baseline is
floored at the same byte on every machine.
"""

from __future__ import annotations

import dataclasses
import math
import re
from decimal import Decimal, InvalidOperation, localcontext

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

#: Accepted units, lower-cased. Decimal units are powers of 1000, binary ones of 1024.
UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}

# Spellings that people write but that do not say whether 1000 or 1024 is meant. They get
# a message of their own instead of "unknown unit", because the fix is a choice.
_AMBIGUOUS: dict[str, str] = {
    "k": "K",
    "m": "M",
    "g": "G",
    "t": "T",
    "kilo": "K",
    "meg": "M",
    "megs": "M",
    "gig": "G",
    "gigs": "G",
    "tera": "T",
}

# A number (no exponent: "1e9" is easy to misread next to a unit) followed by a unit. ASCII
# digits only: re's \d also matches fullwidth and Arabic-Indic digits ('８GiB').
_SIZE_RE = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))[ \t]*(?P<unit>[A-Za-z]*)$"
)
_NUMBER_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
#: Largest size accepted (16 EiB): anything larger is a typo, and printing it would fail.
MAX_SIZE = 2**64
# Digits a number may have: enough for any size below MAX_SIZE with a few decimals.
_MAX_DIGITS = 40
_NONFINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}

_UNIT_HELP = "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"


class UnitError(ValueError):
    """A size or tolerance that cannot be parsed; the message says what was expected."""


def parse_size(value: str | int, *, what: str = "size") -> int:
    """Parse a size such as ``"8GiB"``, ``"512 MiB"`` or ``"1.5 GiB"`` into bytes.

    Integers are taken as bytes. Units are case-insensitive, so ``"8Gb"`` is 8 GB
    (gigabytes, not gigabits: nobody measures memory in bits). A fractional number is
    accepted when the result is a whole number of bytes. ``what`` names the value in
    error messages (e.g. ``"--vram-budget"``).
    """
    if isinstance(value, bool):
        # bool is an int subclass; `budget=True` is a mistake, not one byte.
        raise UnitError(f"{what} must be a size such as '8GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{what} must not be negative, got {value}")
        if value >= MAX_SIZE:
            raise UnitError(_too_large(what, value))
        return value
    if isinstance(value, float):
        raise UnitError(
            f"{what} must be a whole number of bytes or a string with a unit "
            f"such as '8GiB', got the float {value!r}"
        )
    if not isinstance(value, str):
        raise UnitError(f"{what} must be a size such as '8GiB', got {type(value).__name__}")
    return _parse_size_text(value, what)


def _parse_size_text(value: str, what: str) -> int:
    text = value.strip()
    if not text:
        raise UnitError(f"{what} must not be empty: give a size such as '8GiB' or '512MiB'")
    if _bare_nonfinite(text):
        raise UnitError(f"{what} must be a finite size, got {value!r}")
    match = _SIZE_RE.match(text)
    if match is None:
        raise UnitError(
            f"{what}: {value!r} is not a size; write a number and a unit, e.g. '8GiB' "
            f"or '512 MiB' (units: {_UNIT_HELP})"
        )
    number_text, unit_text = match.group("number"), match.group("unit")
    if len(number_text) > _MAX_DIGITS:
        raise UnitError(_too_large(what, value))
    if not unit_text:
        raise UnitError(
            f"{what}: {value!r} has no unit; add one, e.g. '{number_text}B' for bytes "
            f"or '{number_text}MiB'"
        )
    factor = _unit_factor(unit_text, number_text, value, what)
    number = Decimal(number_text)
    if number < 0:
        raise UnitError(f"{what} must not be negative, got {value!r}")
    with localcontext() as context:
        context.prec = 2 * _MAX_DIGITS  # exact: no rounding of the product
        size = number * factor
    if size >= MAX_SIZE:
        raise UnitError(_too_large(what, value))
    if size != size.to_integral_value():
        raise UnitError(
            f"{what}: {value!r} is not a whole number of bytes ({size} B); "
            f"use a smaller unit or fewer decimals"
        )
    return int(size)


def _too_large(what: str, value: object) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:30] + "..."
    return f"{what}: {shown} is larger than 16 EiB (2**64 bytes); check for a typo"


def _unit_factor(unit_text: str, number_text: str, value: str, what: str) -> int:
    unit = unit_text.lower()
    if unit in UNITS:
        return UNITS[unit]
    if unit in _AMBIGUOUS:
        letter = _AMBIGUOUS[unit]
        raise UnitError(
            f"{what}: {value!r} is ambiguous; write '{number_text}{letter}iB' "
            f"(powers of 1024) or '{number_text}{letter}B' (powers of 1000)"
        )
    raise UnitError(f"{what}: unknown unit {unit_text!r} in {value!r}; use one of {_UNIT_HELP}")


def _bare_nonfinite(text: str) -> bool:
    # "nan", "inf GiB": the regex would call these "not a size", which hides the reason.
    head = text.split()[0].lower() if text.split() else ""
    return head in _NONFINITE or text.lower().rstrip("abceigkmt ") in _NONFINITE


def format_size(n: int) -> str:
    """Human-readable bytes, precise enough that a 1 MiB change shows on a 6 GiB figure.

    MiB with one decimal from 1 MiB up ("5947.3 MiB"), KiB with one decimal from 1 KiB up,
    bytes below. Negative values (deltas) keep their sign. Not meant to be parsed back:
    baselines store exact bytes.
    """
    sign = "-" if n < 0 else ""
    magnitude = abs(n)
    if magnitude >= MiB:
        return f"{sign}{magnitude / MiB:.1f} MiB"
    if magnitude >= KiB:
        return f"{sign}{magnitude / KiB:.1f} KiB"
    return f"{sign}{magnitude} B"


def format_delta(measured: int, baseline: int) -> str:
    """Signed change from ``baseline`` to ``measured``: ``"+12.0 MiB (+0.21%)"``.

    With a zero baseline a percentage means nothing, so the baseline is named instead:
    ``"+12.0 MiB (baseline 0 B)"``.
    """
    delta = measured - baseline
    size = format_size(delta)
    if delta >= 0:
        size = "+" + size
    if baseline == 0:
        return f"{size} (+0.00%)" if delta == 0 else f"{size} (baseline 0 B)"
    return f"{size} ({delta / baseline * 100:+.2f}%)"


def format_percent(fraction: float) -> str:
    """``0.005`` -> ``"0.5%"``: the shortest percentage that parses back to ``fraction``."""
    percent = _exact(fraction) * 100
    text = format(percent.normalize(), "f")
    return f"{text}%"


def _exact(fraction: float) -> Decimal:
    # repr() gives the shortest decimal that reads back as the same float, i.e. what the
    # user wrote ("0.005"), not the binary approximation (0.005000000000000000104...).
    # Multiplying that decimal keeps 0.5% of 6236118016 bytes exactly 31180590.08.
    return Decimal(repr(float(fraction)))


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a measurement may move from its baseline: ``relative`` share plus ``absolute`` bytes.

    ``relative`` is a fraction (``0.005`` for 0.5%), ``absolute`` a byte count; both apply
    together, so ``"0.5% + 4MiB"`` allows 0.5% of the baseline and 4 MiB more.
    """

    relative: float = 0.0
    absolute: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.relative, bool) or not isinstance(self.relative, (int, float)):
            raise UnitError(f"Tolerance.relative must be a number, got {self.relative!r}")
        if not (math.isfinite(self.relative) and 0 <= self.relative <= 1):
            raise UnitError(f"Tolerance.relative must be a fraction in 0..1, got {self.relative!r}")
        if isinstance(self.absolute, bool) or not isinstance(self.absolute, int):
            raise UnitError(f"Tolerance.absolute must be an int of bytes, got {self.absolute!r}")
        if self.absolute < 0:
            raise UnitError(f"Tolerance.absolute must not be negative, got {self.absolute}")

    def allowance(self, baseline: int) -> int:
        """Bytes a figure may move from ``baseline``: floor(relative * baseline) + absolute."""
        return math.floor(_exact(self.relative) * abs(baseline)) + self.absolute

    def __str__(self) -> str:
        parts = []
        if self.relative:
            parts.append(format_percent(self.relative))
        if self.absolute or not parts:
            parts.append(format_exact_size(self.absolute))
        return " + ".join(parts)


def format_exact_size(n: int) -> str:
    """Bytes in the largest unit that divides them exactly: ``"4MiB"``, ``"5MB"``, ``"1023B"``.

    Unlike :func:`format_size` this round-trips through :func:`parse_size`.
    """
    if n < 0:
        raise UnitError(f"format_exact_size needs a non-negative size, got {n}")
    if n:
        # Binary first: allocator figures are multiples of 512 bytes, rarely of 1000.
        for name, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
            if n % factor == 0:
                return f"{n // factor}{name}"
        for name, factor in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
            if n % factor == 0:
                return f"{n // factor}{name}"
    return f"{n}B"


def parse_tolerance(value: str | int | float | Tolerance, *, what: str = "tolerance") -> Tolerance:
    """Parse ``"0.5%"``, ``"4MiB"``, ``"0.5% + 4MiB"`` (either order) or ``0`` into a Tolerance.

    A bare number other than zero is rejected: ``0.5`` could mean 0.5% or half a byte.
    Percentages must lie in 0..100.
    """
    if isinstance(value, Tolerance):
        return value
    if isinstance(value, bool):
        raise UnitError(f"{what} must be like '0.5%', '4MiB' or '0.5% + 4MiB', got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnitError(
                f"{what} must be a finite tolerance such as '0.5%' or '4MiB', got {value!r}"
            )
        if value == 0:
            return Tolerance()
        if abs(value) >= MAX_SIZE:
            raise UnitError(_too_large(what, value))
        raise UnitError(_bare_number_message(what, repr(value)))
    if not isinstance(value, str):
        raise UnitError(
            f"{what} must be like '0.5%', '4MiB' or '0.5% + 4MiB', got {type(value).__name__}"
        )
    return _parse_tolerance_text(value, what)


def _parse_tolerance_text(value: str, what: str) -> Tolerance:
    text = value.strip()
    if not text:
        raise UnitError(f"{what} must not be empty: write e.g. '0.5%', '4MiB' or '0'")
    parts = [part.strip() for part in text.split("+")]
    if len(parts) > 2 or any(not part for part in parts):
        raise UnitError(
            f"{what}: {value!r} must be a percentage, a size, or one of each joined by '+', "
            f"e.g. '0.5% + 4MiB'"
        )
    relative: float | None = None
    absolute: int | None = None
    for part in parts:
        if part.endswith("%"):
            if relative is not None:
                raise UnitError(f"{what}: {value!r} has two percentages; give at most one")
            relative = _parse_percent(part, value, what)
        else:
            if absolute is not None:
                raise UnitError(f"{what}: {value!r} has two sizes; give at most one")
            absolute = _parse_tolerance_size(part, value, what)
    return Tolerance(relative=relative or 0.0, absolute=absolute or 0)


def _parse_percent(part: str, value: str, what: str) -> float:
    number_text = part[:-1].strip()
    if not _NUMBER_RE.match(number_text):
        raise UnitError(f"{what}: {part!r} in {value!r} is not a percentage such as '0.5%'")
    try:
        percent = Decimal(number_text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise UnitError(f"{what}: {part!r} is not a percentage such as '0.5%'") from exc
    if not 0 <= percent <= 100:
        raise UnitError(f"{what}: percentage must be between 0% and 100%, got {part!r}")
    return float(percent / 100)


def _parse_tolerance_size(part: str, value: str, what: str) -> int:
    if len(part) > _MAX_DIGITS + 8:
        raise UnitError(_too_large(what, value))
    if _NUMBER_RE.match(part):
        if Decimal(part) == 0:
            return 0  # "0" is unambiguous: no tolerance at all.
        raise UnitError(_bare_number_message(what, repr(value)))
    return parse_size(part, what=what)


def _bare_number_message(what: str, shown: str) -> str:
    number = shown.strip("'\"")
    # Only suggest bytes when that suggestion would itself parse ("0.5B" would not, nor a
    # size of 2**64 bytes or more). to_integral_value, not "% 1": a remainder needs the
    # quotient's digits, which a long number's exceed the context's precision.
    parsed = Decimal(number) if _NUMBER_RE.match(number) is not None else None
    whole = parsed is not None and parsed == parsed.to_integral_value() and parsed < MAX_SIZE
    as_size = f"'{number}B' for bytes" if whole else "a size such as '4MiB'"
    return (
        f"{what}: {shown} is ambiguous without a unit; write '{number}%' for a share of the "
        f"baseline or {as_size}"
    )
