"""What a run reports: the per-measurement :class:`Record`, everything the controller learned
(:class:`Outcome`), and the session's measured figures by key (:class:`Figures`).

A Record is plain data: it travels from an xdist worker to the controller inside
``report.user_properties`` (and so also lands in JUnit XML; the renderer writes it there,
:mod:`pytest_vram.render.json_report`), and the controller builds the terminal ``VRAM``
section, the ``--vram-json`` file and the ``--vram-markdown`` file from the Records alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pytest_vram.core.claims import ClaimVerdict
from pytest_vram.core.figures import CarriesFigures
from pytest_vram.core.fit import Largest
from pytest_vram.core.units import Tolerance, parse_tolerance
from pytest_vram.core.verdicts import Kind, OffDevice, Verdict

#: Name of the ``report.user_properties`` entries that carry a Record.
PROPERTY = "vram"


@dataclasses.dataclass(frozen=True)
class Record(CarriesFigures):
    """One measurement with its verdicts, as sent from where it ran to where it is reported."""

    key: str
    nodeid: str
    name: str | None
    profile: str
    baseline_path: str
    params: int | None
    model_bytes: int
    peak_bytes: int
    #: what the figures were measured on; the JSON key is ``context`` (see to_dict)
    setup: dict[str, str]
    tolerance: Tolerance
    budget: int | None
    baseline_model_bytes: int | None
    baseline_peak_bytes: int | None
    #: worst first
    verdicts: tuple[Verdict, ...]
    leaked_bytes: int | None = None
    #: peak memory reserved from the device (informational), None where unknown
    reserved_bytes: int | None = None
    #: pytest-benchmark's timing of the same workload (see ``pytest_plugin.benchmarking``)
    time: dict[str, Any] | None = None
    #: what was live at the peak (``pytest_vram.core.breakdown``), when attribution is on
    breakdown: dict[str, Any] | None = None
    #: the marker's ceiling on ``reserved_bytes``
    reserved_budget: int | None = None
    #: why the figures cannot be the test's device memory (verdict NOT_ON_DEVICE)
    off_device: OffDevice | None = None
    #: the declared card whose capacity was enforced (its key), None where none was
    card: str | None = None
    #: why that card's usable capacity is an upper bound (not measured), None where known
    card_note: str | None = None
    #: the answer of ``vram.largest`` (the figures are those of its largest fitting value)
    largest: Largest | None = None
    #: the baseline entry's answer and the card it was found on
    baseline_largest: int | None = None
    baseline_card: str | None = None

    @property
    def recordable(self) -> bool:
        """Whether ``--vram-update`` may write these figures (not a NOT_ON_DEVICE one)."""
        return self.off_device is None

    @property
    def kind(self) -> Kind:
        """The worst verdict's kind."""
        return self.verdicts[0].kind if self.verdicts else Kind.PASS

    @property
    def fails(self) -> bool:
        return any(v.fails for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: the fields, the derived figures, the worst kind."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["context"] = data.pop("setup")  # the setup's key in --vram-json and JUnit
        data["tolerance"] = str(self.tolerance)
        data["verdicts"] = [v.to_dict() for v in self.verdicts]
        data["off_device"] = self.off_device.to_dict() if self.off_device else None
        data["largest"] = self.largest.to_dict() if self.largest else None
        data["activation_bytes"] = self.activation_bytes
        data["verdict"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {("setup" if k == "context" else k): v for k, v in data.items()}  # see to_dict
        data["tolerance"] = parse_tolerance(data["tolerance"])
        data["verdicts"] = tuple(Verdict.from_dict(v) for v in data["verdicts"])
        if data.get("off_device"):
            data["off_device"] = OffDevice.from_dict(data["off_device"])
        if data.get("largest"):
            data["largest"] = Largest.from_dict(data["largest"])
        return cls(**{k: v for k, v in data.items() if k in names})


def records_from(user_properties: Iterable[tuple[str, object]]) -> list[Record]:
    """The Records carried by one test report."""
    return [
        Record.from_dict(json.loads(str(value)))
        for name, value in user_properties
        if name == PROPERTY
    ]


@dataclasses.dataclass
class Outcome:
    """Everything the controller learned in one session, ready to be rendered."""

    records: list[Record] = dataclasses.field(default_factory=list)
    #: baseline path -> stale keys still in the file
    stale: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: baseline path -> keys removed by --vram-prune
    pruned: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: (key, old peak, new peak) of entries rewritten by --vram-update
    updated: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    #: baseline paths written by --vram-update
    written: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    #: same-entry conflicts between concurrent updates (last writer won), one line each
    conflicts: list[str] = dataclasses.field(default_factory=list)
    #: baseline path -> what differs between the setup it was recorded on and this run's
    setup_changes: dict[str, str] = dataclasses.field(default_factory=dict)
    update: bool = False
    #: (node id, verdict) of the declared claims that were judged
    claims: list[tuple[str, ClaimVerdict]] = dataclasses.field(default_factory=list)
    #: where and when the run happened: commit, branch, time, machine
    run: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_summary(self) -> bool:
        """Whether there is anything for the ``VRAM`` section."""
        return bool(self.records or self.stale or self.pruned or self.errors)


class FiguresMissing(KeyError):
    """No measurement with this key has completed in this process."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class Figures(Mapping[str, Record]):
    """Measured figures by baseline key (``nodeid`` or ``nodeid::name``), in completion order.

    Every measurement travels on its test's report, so the figures of a whole session are
    known wherever the reports arrive: in the single process, and on the xdist controller.
    Within a test this holds what this process has measured so far (on an xdist worker,
    only that worker's tests): comparisons that must see every test's figures, whatever the
    order and the worker, belong in a claim (``vram_claims``), which the plugin evaluates
    once all figures are in. Nothing is ever measured again to fill a gap.
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
