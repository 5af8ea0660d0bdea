"""What a run reports: the per-measurement :class:`Record` and its three renderings.

A Record is plain JSON-able data: it travels from an xdist worker to the controller inside
``report.user_properties`` (and so also lands in JUnit XML), and the controller builds the
terminal ``VRAM`` section, the ``--vram-json`` file and the ``--vram-markdown`` file from
the Records alone. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_vram.figures import CarriesFigures
from pytest_vram.units import format_delta, format_size
from pytest_vram.verdicts import Kind, update_command

#: Name of the ``report.user_properties`` entries that carry a Record.
PROPERTY = "vram"
#: Version of the ``--vram-json`` document layout.
JSON_VERSION = 1


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
    tolerance: str
    budget: int | None
    baseline_model_bytes: int | None
    baseline_peak_bytes: int | None
    #: ``{"kind", "summary", "detail", "fails"}`` per verdict, worst first.
    verdicts: list[dict[str, Any]]
    leaked_bytes: int | None = None
    #: peak memory reserved from the device (informational), None where unknown
    reserved_bytes: int | None = None
    #: pytest-benchmark's timing of the same workload (see ``benchmarking.timing``)
    time: dict[str, Any] | None = None
    #: what was live at the peak (``pytest_vram.attribution``), when attribution is on
    breakdown: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        """The worst verdict's kind, e.g. ``"regression"``."""
        return self.verdicts[0]["kind"] if self.verdicts else "pass"

    @property
    def kind(self) -> Kind:
        """The worst verdict's kind, read back from its serialised value."""
        return Kind(self.verdict)

    @property
    def fails(self) -> bool:
        return any(v["fails"] for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["context"] = data.pop("setup")  # the setup's key in --vram-json and JUnit
        data["activation_bytes"] = self.activation_bytes
        data["verdict"] = self.verdict
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {("setup" if k == "context" else k): v for k, v in data.items()}  # see to_dict
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_property(self) -> tuple[str, str]:
        """A ``user_properties`` entry; JSON text so that JUnit XML shows it readably."""
        return PROPERTY, json.dumps(self.to_dict(), sort_keys=True)


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
    #: verdicts of the declared claims (``claims.ClaimVerdict.to_dict()`` plus ``nodeid``)
    claims: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: where and when the run happened: commit, branch, time, machine (see run_metadata)
    run: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- terminal

COLUMNS = ("params", "model", "peak", "activation", "reserved", "baseline", "delta", "verdict")
#: shown after the others when a measurement of the run was also timed (pytest-benchmark)
TIME_COLUMN = "time"


def _columns(records: list[Record]) -> tuple[str, ...]:
    return (*COLUMNS, TIME_COLUMN) if any(r.time for r in records) else COLUMNS


def _time(record: Record) -> str:
    from pytest_vram.benchmarking import time_cell  # benchmarking imports this module

    return time_cell(record.time)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    for factor, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor:
            return f"{n / factor:.2f}{suffix}"
    return str(n)


def _cells(record: Record) -> list[str]:
    base = record.baseline_peak_bytes
    return [
        _params(record.params),
        format_size(record.model_bytes),
        format_size(record.peak_bytes),
        format_size(record.activation_bytes),
        "-" if record.reserved_bytes is None else format_size(record.reserved_bytes),
        "-" if base is None else format_size(base),
        "-" if base is None else format_delta(record.peak_bytes, base),
        record.verdict,
    ]


#: Columns dropped first when the terminal is narrow (the key, peak, delta and verdict stay).
DROP_ORDER = ("activation", "reserved", "params", "baseline", "model", TIME_COLUMN)
#: The narrowest key column worth showing; below it keys are shortened in the middle.
MIN_KEY = 24
#: Left-aligned columns (words); the others are figures, right-aligned.
_WORDS = ("verdict", TIME_COLUMN)


def _row(record: Record, columns: tuple[str, ...]) -> list[str]:
    cells = _cells(record)
    return [*cells, _time(record)] if TIME_COLUMN in columns else cells


def table_lines(records: list[Record], width: int = 80) -> list[str]:
    """The measurement table in at most ``width`` columns.

    Keys that share a test file are listed under the file's name; columns are dropped
    (``DROP_ORDER``) until the keys fit, and a key still too long is shortened in the
    middle, so that every row is one line.
    """
    every = _columns(records)
    rows = [_row(r, every) for r in records]
    columns = list(every)

    def widths() -> list[int]:
        return [max(len(h), *(len(row[every.index(h)]) for row in rows)) for h in columns]

    def key_room() -> int:
        return width - sum(widths()) - 2 * len(columns)

    files = {r.key.split("::", 1)[0] for r in records}
    keys = [r.key for r in records]
    prefix = ""
    if max(len(k) for k in keys) > key_room() and len(files) == 1 and "::" in keys[0]:
        prefix = next(iter(files)) + "::"  # named once, above the table
        keys = [k[len(prefix) :] for k in keys]
    longest = max(len("test"), *(len(k) for k in keys))

    for name in DROP_ORDER:
        if key_room() >= longest:
            break
        if name in columns:
            columns.remove(name)
    key_width = max(MIN_KEY, min(longest, key_room()))
    col_widths = widths()

    def line(key: str, cells: list[str]) -> str:
        numbers = "  ".join(
            c.ljust(w) if columns[i] in _WORDS else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, col_widths, strict=True))
        )
        return f"{_shorten(key, key_width).ljust(key_width)}  {numbers}".rstrip()

    lines = [f"{prefix[:-2]}:"] if prefix else []
    lines.append(line("test", columns))
    for key, cells in zip(keys, rows, strict=True):
        lines.append(line(key, [cells[every.index(h)] for h in columns]))
    return lines


def _shorten(text: str, width: int) -> str:
    """``test_inference[maximum-phase8]`` in 20 columns -> ``test_infe...m-phase8]``."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]


def note_lines(outcome: Outcome) -> list[str]:
    """Lines after the table: what to act on (lock in, record, review, delete)."""
    lines: list[str] = []
    for r in outcome.records:
        if r.kind is Kind.IMPROVEMENT:
            lines.append(
                f"improvement: {r.key}: {r.verdicts[0]['summary']}; lock it in with "
                f"`{update_command(r.nodeid)}`"
            )
    for r in outcome.records:
        if r.kind is Kind.NEW and not outcome.update:
            lines.append(
                f"new: {r.key}: peak {format_size(r.peak_bytes)}, no baseline in "
                f"{r.baseline_path}; record it with `{update_command(r.nodeid)}`"
            )
        elif r.kind is Kind.NEW:
            lines.append(f"new: {r.key}: peak {format_size(r.peak_bytes)} recorded")
    for key, old, new in outcome.updated:
        lines.append(
            f"updated: {key}: peak {format_size(old)} -> {format_size(new)} "
            f"({format_delta(new, old)})"
        )
    for path in outcome.written:
        lines.append(f"written: {path}")
    lines.extend(f"conflict: {c}" for c in outcome.conflicts)
    for path, keys in sorted(outcome.stale.items()):
        for key in keys:
            lines.append(
                f"stale: {key} in {path}: no collected test produces it; delete with "
                f"`pytest --vram-update --vram-prune`"
            )
    for path, keys in sorted(outcome.pruned.items()):
        lines.extend(f"pruned: {key} from {path}" for key in keys)
    for r in outcome.records:
        if r.leaked_bytes:
            leaked = format_size(r.leaked_bytes)
            lines.append(f"leak: {r.key}: {leaked} still allocated after the test")
    for path, change in sorted(outcome.setup_changes.items()):
        lines.append(
            f"setup: {path} was recorded with {change}; figures may differ for that reason "
            f"alone (re-record with `pytest -m vram --vram-update` once that is understood)"
        )
    lines.extend(f"error: {e}" for e in outcome.errors)
    return lines


# --------------------------------------------------------------------------- files


def to_json(outcome: Outcome) -> str:
    """The ``--vram-json`` document: every record with its figures and verdicts."""
    document = {
        "version": JSON_VERSION,
        "measurements": [r.to_dict() for r in outcome.records],
        "stale": outcome.stale,
        "pruned": outcome.pruned,
        "updated": [
            {"key": key, "old_peak_bytes": old, "new_peak_bytes": new}
            for key, old, new in outcome.updated
        ],
        "errors": outcome.errors,
        "setup_changes": outcome.setup_changes,
        "claims": outcome.claims,
        "run": outcome.run,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def run_metadata(root: Path) -> dict[str, Any]:
    """Commit, branch, UTC time and machine of this run, for comparing runs over time.

    On GitHub Actions the pull request's branch and commit come from its variables (a
    checkout there is a detached merge commit); elsewhere from ``git`` in ``root``.
    """
    import datetime
    import os
    import platform
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None

    branch = os.environ.get("GITHUB_HEAD_REF") or os.environ.get("GITHUB_REF_NAME")
    return {
        "commit": os.environ.get("GITHUB_SHA") or git("rev-parse", "HEAD"),
        "branch": branch or git("rev-parse", "--abbrev-ref", "HEAD"),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(outcome: Outcome) -> str:
    """The ``--vram-markdown`` document: a PR comment (one-line verdict, failures first with
    their top modules, every measurement collapsed, then the claims), see
    ``pytest_vram.compare.comment``."""
    from pytest_vram.claiming import markdown_lines  # claiming imports this module
    from pytest_vram.compare import comment

    text = comment([r.to_dict() for r in outcome.records], notes=note_lines(outcome))
    claims = markdown_lines(outcome.claims)
    return text + ("\n".join(claims) + "\n" if claims else "")


def write_text(path: Path, text: str) -> None:
    """Write a report file whole or not at all (temporary file, then rename); OSError on
    failure, with the old file (if any) intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
