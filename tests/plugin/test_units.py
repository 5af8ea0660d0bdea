"""Size and tolerance syntax: what users may write, what they get, and what they are told."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vram.core.units import (
    GiB,
    KiB,
    MiB,
    Tolerance,
    UnitError,
    format_delta,
    format_exact_size,
    format_percent,
    format_size,
    parse_size,
    parse_tolerance,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1, 1),
        (6236118016, 6236118016),
        ("0B", 0),
        ("1B", 1),
        ("1b", 1),
        ("8GiB", 8 * GiB),
        ("8gib", 8 * GiB),
        ("8 GiB", 8 * GiB),
        ("  8GiB  ", 8 * GiB),
        ("512 MiB", 512 * MiB),
        ("4mb", 4_000_000),
        ("4MB", 4_000_000),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2TB", 2 * 1000**4),
        ("2TiB", 2 * 1024**4),
        ("1.5 GiB", 1610612736),
        ("0.5KiB", 512),
        (".5KiB", 512),
        ("1.KiB", 1024),
        ("1.000B", 1),
        # Case-insensitive: "Gb" is gigabytes, not gigabits (documented in docs/baselines.md).
        ("8Gb", 8_000_000_000),
        ("+1MiB", MiB),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8G", "'8G' is ambiguous; write '8GiB' (powers of 1024) or '8GB' (powers of 1000)"),
        ("8M", "write '8MiB' (powers of 1024) or '8MB'"),
        ("8K", "write '8KiB' (powers of 1024) or '8KB'"),
        ("8k", "write '8KiB'"),
        ("8gig", "'8gig' is ambiguous; write '8GiB'"),
        ("1024", "'1024' has no unit; add one, e.g. '1024B' for bytes"),
        ("1.5", "'1.5' has no unit"),
        ("-1GiB", "must not be negative, got '-1GiB'"),
        (-1, "must not be negative, got -1"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (True, "got True"),
        (False, "got False"),
        ("nan", "must be a finite size, got 'nan'"),
        ("inf GiB", "must be a finite size"),
        ("-inf", "must be a finite size"),
        (float("inf"), "got the float inf"),
        (1.5, "got the float 1.5"),
        ("1.5B", "'1.5B' is not a whole number of bytes"),
        ("0.1KiB", "is not a whole number of bytes"),
        ("8 furlongs", "unknown unit 'furlongs' in '8 furlongs'; use one of B, KB"),
        ("8bit", "unknown unit 'bit'"),
        ("GiB", "'GiB' is not a size"),
        ("1e9B", "'1e9B' is not a size"),
        ("8 G iB", "is not a size"),
        (None, "got NoneType"),
    ],
)
def test_parse_size_rejects_with_a_message_naming_the_value_and_fix(
    value: object, message: str
) -> None:
    with pytest.raises(UnitError, match=re.escape(message)) as excinfo:
        parse_size(value, what="--vram-budget")  # type: ignore[arg-type]
    assert str(excinfo.value).startswith("--vram-budget")


def test_unit_error_is_a_value_error() -> None:
    # Callers that only know ValueError (argparse type= functions) still catch it.
    assert issubclass(UnitError, ValueError)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MiB - KiB, "1023.0 KiB"),
        (MiB, "1.0 MiB"),
        (6236118016, "5947.2 MiB"),
        (8 * GiB, "8192.0 MiB"),
        (-3072, "-3.0 KiB"),
        (-12 * MiB, "-12.0 MiB"),
        (-5, "-5 B"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


def test_format_size_shows_one_mib_on_six_gib() -> None:
    base = 6 * GiB + 123_456_789
    assert format_size(base) != format_size(base + MiB)


@pytest.mark.parametrize(
    ("measured", "baseline", "expected"),
    [
        (6236118016 + 12 * MiB, 6236118016, "+12.0 MiB (+0.20%)"),
        (6236118016 - 3 * KiB, 6236118016, "-3.0 KiB (-0.00%)"),
        (100, 100, "+0 B (+0.00%)"),
        (150, 100, "+50 B (+50.00%)"),
        (50, 100, "-50 B (-50.00%)"),
        (12 * MiB, 0, "+12.0 MiB (baseline 0 B)"),
        (0, 0, "+0 B (+0.00%)"),
    ],
)
def test_format_delta(measured: int, baseline: int, expected: str) -> None:
    assert format_delta(measured, baseline) == expected


@given(st.integers(min_value=0, max_value=2**60))
def test_format_exact_size_round_trips(n: int) -> None:
    assert parse_size(format_exact_size(n)) == n


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0B"), (4 * MiB, "4MiB"), (5_000_000, "5MB"), (1023, "1023B"), (3 * GiB, "3GiB")],
)
def test_format_exact_size(n: int, expected: str) -> None:
    assert format_exact_size(n) == expected


# Up to 2**34 GB: just below the 16 EiB ceiling that parse_size enforces.
@given(st.integers(min_value=0, max_value=2**34), st.sampled_from(["B", "KiB", "MiB", "GB"]))
def test_parse_size_scales_integers_by_the_unit(number: int, unit: str) -> None:
    factor = {"B": 1, "KiB": KiB, "MiB": MiB, "GB": 1000**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor
    assert parse_size(f"{number} {unit.lower()}") == number * factor


# ----------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5%", Tolerance(relative=0.005)),
        ("0.5 %", Tolerance(relative=0.005)),
        ("100%", Tolerance(relative=1.0)),
        ("0%", Tolerance()),
        ("4MiB", Tolerance(absolute=4 * MiB)),
        ("0.5% + 4MiB", Tolerance(relative=0.005, absolute=4 * MiB)),
        ("4MiB+0.5%", Tolerance(relative=0.005, absolute=4 * MiB)),
        ("0", Tolerance()),
        ("0.0", Tolerance()),
        (0, Tolerance()),
        (0.0, Tolerance()),
        ("0B", Tolerance()),
        (Tolerance(relative=0.01), Tolerance(relative=0.01)),
    ],
)
def test_parse_tolerance(text: str, expected: Tolerance) -> None:
    assert parse_tolerance(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.5", "'0.5' is ambiguous without a unit; write '0.5%' for a share of the baseline"),
        ("2", "write '2%' for a share of the baseline or '2B' for bytes"),
        (0.5, "0.5 is ambiguous without a unit"),
        (5, "write '5%' for a share of the baseline or '5B' for bytes"),
        ("101%", "percentage must be between 0% and 100%, got '101%'"),
        ("-1%", "percentage must be between 0% and 100%"),
        ("1% + 2%", "has two percentages"),
        ("1MiB + 2MiB", "has two sizes"),
        ("1% + 2MiB + 3B", "one of each joined by '+'"),
        ("1% +", "one of each joined by '+'"),
        ("", "must not be empty"),
        ("x%", "'x%' in 'x%' is not a percentage"),
        ("nan%", "is not a percentage"),
        ("4G", "'4G' is ambiguous; write '4GiB'"),
        ("1" + "0" * 29, "is ambiguous without a unit; write '1" + "0" * 29 + "%'"),
        ("1" + "0" * 20, "or a size such as '4MiB'"),  # 10**20 B is past 16 EiB
        (True, "got True"),
        (None, "got NoneType"),
    ],
)
def test_parse_tolerance_rejects(value: object, message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)) as excinfo:
        parse_tolerance(value, what="--vram-tolerance")  # type: ignore[arg-type]
    assert str(excinfo.value).startswith("--vram-tolerance")


@pytest.mark.parametrize(
    ("tolerance", "text"),
    [
        (Tolerance(), "0B"),
        (Tolerance(relative=0.005), "0.5%"),
        (Tolerance(absolute=4 * MiB), "4MiB"),
        (Tolerance(relative=0.005, absolute=4 * MiB), "0.5% + 4MiB"),
        (Tolerance(relative=1.0), "100%"),
        (Tolerance(absolute=1001), "1001B"),
    ],
)
def test_tolerance_str(tolerance: Tolerance, text: str) -> None:
    assert str(tolerance) == text
    assert parse_tolerance(text) == tolerance


@given(
    st.decimals(min_value=0, max_value=100, places=4, allow_nan=False),
    st.integers(min_value=0, max_value=2**40),
)
def test_tolerance_round_trips_through_its_string(percent: Decimal, absolute: int) -> None:
    tolerance = parse_tolerance(f"{percent}% + {absolute}B")
    assert parse_tolerance(str(tolerance)) == tolerance


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_any_relative_fraction_round_trips(fraction: float) -> None:
    tolerance = Tolerance(relative=fraction)
    assert parse_tolerance(str(tolerance)) == tolerance


@pytest.mark.parametrize(
    ("tolerance", "baseline", "allowance"),
    [
        (Tolerance(), 6236118016, 0),
        (Tolerance(absolute=4 * MiB), 6236118016, 4 * MiB),
        # 0.5% of 6236118016 is 31180590.08 exactly; a binary float product could land on
        # either side of the integer, the decimal one cannot.
        (Tolerance(relative=0.005), 6236118016, 31180590),
        (Tolerance(relative=0.005, absolute=10), 6236118016, 31180600),
        (Tolerance(relative=0.01), 100, 1),
        (Tolerance(relative=0.01), 199, 1),  # floored, never rounded up
        (Tolerance(relative=0.01), 200, 2),
        (Tolerance(relative=0.1), 0, 0),
        (Tolerance(relative=0.07), 100, 7),  # 0.07 * 100 == 7.000000000000001 in floats
        (Tolerance(relative=0.29), 100, 29),  # 0.29 * 100 == 28.999999999999996 in floats
    ],
)
def test_allowance(tolerance: Tolerance, baseline: int, allowance: int) -> None:
    assert tolerance.allowance(baseline) == allowance


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relative": -0.1}, "fraction in 0..1"),
        ({"relative": 1.5}, "fraction in 0..1"),
        ({"relative": float("nan")}, "fraction in 0..1"),
        ({"relative": "1%"}, "must be a number"),
        ({"absolute": -1}, "must not be negative"),
        ({"absolute": 1.5}, "must be an int of bytes"),
        ({"absolute": True}, "must be an int of bytes"),
    ],
)
def test_tolerance_rejects_invalid_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)):
        Tolerance(**kwargs)  # type: ignore[arg-type]


def test_format_percent() -> None:
    assert format_percent(0.005) == "0.5%"
    assert format_percent(0.0) == "0%"
    assert format_percent(1.0) == "100%"
