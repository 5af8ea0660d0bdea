"""The memory figures of one measurement (``MemoryFigures``), and the session's measured
figures by key (``Figures``): what claims read, and the ``vram_figures`` fixture.

Every measurement already travels on its test's report (``report.Record`` in
``user_properties``), so the figures of a whole session are known wherever the reports
arrive: in the single process, and on the xdist controller. Nothing is ever measured again
to fill a gap: a key without figures stays absent, and whoever asks is told why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # report builds on MemoryFigures: no import of it here at run time
    from pytest_vram.report import Record


@dataclasses.dataclass(frozen=True)
class MemoryFigures:
    """The figures of one measurement, in bytes counted from the start of the test: what the
    model held (``model_bytes``), the highest allocation (``peak_bytes``) and the parameters
    counted (``params``, None where unknown). The same type for the measurement
    (``Measurement.figures``), the baseline entry (``baselines.Entry`` is one) and the report
    (``Record.figures``); ``verdicts.judge`` compares two of them."""

    model_bytes: int
    peak_bytes: int
    params: int | None = None

    @property
    def activation_bytes(self) -> int:
        return self.peak_bytes - self.model_bytes


class CarriesFigures:
    """Mixin for the records that carry one measurement's figures and setup
    (``measure.Measurement``, ``report.Record``): the shared figures type, the derived
    activation, and ``context``, the documented name of the setup."""

    model_bytes: int
    peak_bytes: int
    params: int | None
    setup: dict[str, str]

    @property
    def context(self) -> dict[str, str]:
        """The setup under its documented name (``vram.measurements``, ``vram_figures``)."""
        return self.setup

    @property
    def figures(self) -> MemoryFigures:
        return MemoryFigures(self.model_bytes, self.peak_bytes, self.params)

    @property
    def activation_bytes(self) -> int:
        return self.figures.activation_bytes


class FiguresMissing(KeyError):
    """No measurement with this key has completed in this process."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class Figures(Mapping[str, "Record"]):
    """Measured figures by baseline key (``nodeid`` or ``nodeid::name``), in completion order.

    Within a test this holds what this process has measured so far (on an xdist worker, only
    that worker's tests): comparisons that must see every test's figures, whatever the order
    and the worker, belong in a claim (``vram_claims``), which the plugin evaluates once all
    figures are in.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def add(self, record: Record) -> None:
        self._records[record.key] = record

    def __getitem__(self, key: str) -> Record:
        try:
            return self._records[key]
        except KeyError:
            raise FiguresMissing(
                f"no figures for {key!r} in this process: its test did not run (yet), did not "
                f"pass, or ran on another xdist worker; declare the comparison as a claim "
                f"(vram_claims) to evaluate it once every figure is in"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)
