"""The memory figures of one measurement: :class:`MemoryFigures`, and the mixin of the
records that carry them (:class:`CarriesFigures`)."""

from __future__ import annotations

import dataclasses


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
    (``Measurement``, ``Record``): the shared figures type, the derived activation, and
    ``context``, the documented name of the setup."""

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
