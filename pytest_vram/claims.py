"""Relations between measurements: "B uses no more memory than A, within a tolerance".

A claim compares two figures (two measurements' peaks, or a peak and a budget) and returns
a :class:`ClaimResult` that carries its own explanation, so a test can simply
``assert result.holds, result.message``. Pure functions: no pytest, no torch.
"""

from __future__ import annotations

import dataclasses

from pytest_vram.units import Tolerance, format_delta, format_size

EXACT = Tolerance()


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """The outcome of one claim, with the figures that decided it."""

    holds: bool
    value: int
    limit: int
    allowance: int
    message: str

    @property
    def excess(self) -> int:
        """Bytes by which ``value`` exceeds ``limit`` (negative: headroom)."""
        return self.value - self.limit


def at_most(
    value: int,
    limit: int,
    *,
    tolerance: Tolerance = EXACT,
    subject: str = "value",
    reference: str = "limit",
) -> ClaimResult:
    """Claim that ``value`` is no larger than ``limit`` plus ``tolerance`` of ``limit``.

    ``subject`` and ``reference`` name the two figures in the message, e.g.
    ``subject="train: fused attention peak"``, ``reference="eager attention peak"``.
    Exactly on the allowed limit holds.
    """
    allowance = tolerance.allowance(limit)
    holds = value <= limit + allowance
    figures = (
        f"{subject} {format_size(value)} ({value} B) vs {reference} {format_size(limit)} "
        f"({limit} B): {format_delta(value, limit)}"
    )
    if holds:
        message = f"holds: {figures}, within the stated tolerance {tolerance}"
    else:
        message = (
            f"claim broken: {figures}; {subject} exceeds {reference} by "
            f"{format_size(value - limit)} ({value - limit} B), more than the stated "
            f"tolerance {tolerance} ({format_size(allowance)})"
        )
    return ClaimResult(holds=holds, value=value, limit=limit, allowance=allowance, message=message)
