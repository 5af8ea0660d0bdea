"""Runs over time: one run's measurements by key (:class:`Run`), and the peak changes
between two runs (:func:`compare`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pytest_vram.core.units import format_delta


@dataclasses.dataclass
class Run:
    """The measurements of one run: key -> {peak_bytes, model_bytes, ...}."""

    label: str
    measurements: dict[str, dict[str, Any]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: int | None
    new: int | None

    @property
    def status(self) -> str:
        if self.old is None:
            return "new"
        if self.new is None:
            return "gone"
        return "grew" if self.new > self.old else "shrank" if self.new < self.old else "same"

    @property
    def delta(self) -> str:
        if self.old is None or self.new is None:
            return "-"
        return format_delta(self.new, self.old)


def compare(old: Run, new: Run) -> list[Change]:
    """Peak changes per key: grown first (most first), then shrunk, new, gone, unchanged."""
    keys = sorted(set(old.measurements) | set(new.measurements))
    changes = [
        Change(k, _peak(old.measurements.get(k)), _peak(new.measurements.get(k))) for k in keys
    ]
    order = {"grew": 0, "shrank": 1, "new": 2, "gone": 3, "same": 4}

    def rank(c: Change) -> tuple[int, int, str]:
        size = abs((c.new or 0) - (c.old or 0)) if c.old is not None and c.new is not None else 0
        return order[c.status], -size, c.key

    return sorted(changes, key=rank)


def _peak(m: dict[str, Any] | None) -> int | None:
    return None if m is None else int(m["peak_bytes"])
