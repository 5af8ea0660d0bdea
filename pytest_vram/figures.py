"""The session's measured figures by key: what claims read, and the ``vram_figures`` fixture.

Every measurement already travels on its test's report (``report.Record`` in
``user_properties``), so the figures of a whole session are known wherever the reports
arrive: in the single process, and on the xdist controller. Nothing is ever measured again
to fill a gap: a key without figures stays absent, and whoever asks is told why.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pytest_vram.report import Record


class FiguresMissing(KeyError):
    """No measurement with this key has completed in this process."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class Figures(Mapping[str, Record]):
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
