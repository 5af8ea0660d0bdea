"""Claims between two figures: exactly on the allowed limit holds, one byte over breaks."""

from __future__ import annotations

import pytest

from pytest_vram.claims import at_most
from pytest_vram.units import MiB, Tolerance


@pytest.mark.parametrize(
    ("value", "limit", "tolerance", "holds"),
    [
        (1000, 1000, Tolerance(), True),
        (1001, 1000, Tolerance(), False),
        (999, 1000, Tolerance(), True),
        (1001, 1000, Tolerance(relative=0.001), True),  # 0.1% of 1000 is exactly 1 B
        (1002, 1000, Tolerance(relative=0.001), False),
        (1000 + MiB, 1000, Tolerance(absolute=MiB), True),
        (1001 + MiB, 1000, Tolerance(absolute=MiB), False),
    ],
)
def test_at_most_boundaries(value: int, limit: int, tolerance: Tolerance, holds: bool) -> None:
    result = at_most(value, limit, tolerance=tolerance)
    assert result.holds is holds
    assert result.excess == value - limit


def test_broken_claim_names_both_figures_the_excess_and_the_tolerance() -> None:
    result = at_most(
        6 * 2**30 + 5 * MiB,
        6 * 2**30,
        tolerance=Tolerance(relative=0.0005),
        subject="maximum/train: phase8 peak",
        reference="phase7 peak",
    )
    assert not result.holds
    assert "maximum/train: phase8 peak 6149.0 MiB (6447693824 B)" in result.message
    assert "phase7 peak 6144.0 MiB (6442450944 B)" in result.message
    assert "exceeds phase7 peak by 5.0 MiB (5242880 B)" in result.message
    assert "tolerance 0.05%" in result.message


def test_holding_claim_says_so_with_figures() -> None:
    result = at_most(10 * MiB, 12 * MiB, subject="a", reference="b")
    assert result.holds
    assert result.message.startswith("holds: a 10.0 MiB")
