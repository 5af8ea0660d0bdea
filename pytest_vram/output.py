"""What the user sees: the header line, the ``VRAM`` section, ``-v`` peaks, what a failure
says about where the memory went, the stored breakdowns and the ``--vram-artifacts``.

:class:`OutputHooks` and :class:`MeasuredOutputHooks` are registered next to the plugin's
other hook classes and read the settings and outcome of the
:class:`~pytest_vram.session.VramSession`; they decide nothing about verdicts.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vram.longrepr import Failure, failure, text_of
from pytest_vram.units import format_delta, format_size, parse_tolerance

if TYPE_CHECKING:  # report and verdicts are imported where a test measured
    from pytest_vram import report
    from pytest_vram.backends import Backend
    from pytest_vram.plugin import Settings
    from pytest_vram.session import VramSession

#: What every figure is: the caching allocator's allocated bytes (not reserved, not nvidia-smi).
METRIC = "peak allocated bytes (torch.cuda.max_memory_allocated)"

_stores: weakref.WeakKeyDictionary[Any, dict[Path, dict[str, dict[str, int]]]] = (
    weakref.WeakKeyDictionary()
)


def attribution_on(settings: Settings, backend: Backend) -> bool:
    """``--vram-attribution``: auto is on for the estimator (it costs little there) and off
    for a real GPU, where the dispatch mode that follows storages slows kernels' launch."""
    if settings.attribution == "auto":
        return backend.name == "estimate"
    return settings.attribution == "on"


def _store(plugin: VramSession, baseline: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    from pytest_vram import attribution  # on use: a run without vram tests never needs it

    cache = _stores.setdefault(plugin, {})
    path = attribution.store_path(baseline)
    if path not in cache:
        cache[path] = attribution.load_store(path)
    return path, cache[path]


def explain_failures(plugin: VramSession, records: list[report.Record]) -> str:
    """Top contributors at the peak and what grew, for each failing record with a breakdown."""
    from pytest_vram import attribution

    parts = []
    for record in records:
        if not record.fails or not record.breakdown:
            continue
        path, stored = _store(plugin, plugin.baseline_path(record.profile))
        shown = plugin.display(path)
        text = attribution.explain(record.breakdown, stored.get(record.key), shown)
        if record.key in stored:  # travels with the record: the PR comment shows it too
            record.breakdown["grown"] = attribution.growth(record.breakdown, stored[record.key])
            record.breakdown["compared_with"] = shown
        parts.append(text if len(records) == 1 else f"{record.key}:\n{text}")
    return "\n\n".join(parts)


def failure_text(record: report.Record) -> str:
    """A failing record's message: short lines, the figures first, then what to do.

    The first line is what pytest's short summary shows after the node id, so it carries
    the verdict and the change and does not repeat the node id.
    """
    parts = []
    for v in record.verdicts:
        if not v["fails"]:
            continue
        lines = _verdict_lines(record, v["kind"])
        if record.name:
            lines[0] = f"{record.name}: {lines[0]}"
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _bytes(n: int) -> str:
    return f"{format_size(n):>10}  {n:>14,d} B"


def _verdict_lines(r: report.Record, kind: str) -> list[str]:
    from pytest_vram.verdicts import update_command

    fix = f"`{update_command(r.nodeid)}`\n  and commit {r.baseline_path}"
    peak, base = r.peak_bytes, r.baseline_peak_bytes
    if kind == "over budget" and r.budget is not None:
        return [
            f"peak {format_delta(peak, r.budget)} over the budget {format_size(r.budget)}",
            f"  peak      {_bytes(peak)}",
            f"  budget    {_bytes(r.budget)}",
            "  a budget is a hard limit, whatever the baseline says: reduce the workload's",
            "  memory, or raise budget= on the vram marker if the limit itself was wrong",
        ]
    if kind == "regression" and base is not None and r.baseline_model_bytes is not None:
        tolerance = parse_tolerance(r.tolerance, what="tolerance")
        lines = [f"peak {format_delta(peak, base)}: memory regression against {r.baseline_path}"]
        for label, value, ref in (
            ("peak", peak, base),
            ("model", r.model_bytes, r.baseline_model_bytes),
        ):
            allowance = tolerance.allowance(ref)
            if label == "model" and abs(value - ref) <= allowance:
                lines.append(f"  model     {_bytes(value)}  within tolerance")
                continue
            lines.append(f"  {label:<9} {_bytes(value)}  ({value - ref:+,d} B)")
            lines.append(f"  baseline  {_bytes(ref)}")
            limit = "must equal it exactly" if allowance == 0 else f"allows +/-{allowance:,d} B"
            lines.append(f"  tolerance {r.tolerance}: {limit}")
        lines.append("  reduce the memory use; if the increase is intended, record it with")
        lines.append(f"  {fix} with the reason")
        return lines
    if kind == "missing":
        return [
            f"no baseline (strict mode): peak {format_size(peak)}, "
            f"model {format_size(r.model_bytes)}",
            f"  peak      {_bytes(peak)}",
            f"  model     {_bytes(r.model_bytes)}",
            f"  record it with {fix}",
        ]
    return [next(v["detail"] for v in r.verdicts if v["kind"] == kind)]


def in_force(records: list[report.Record], strict: bool, width: int = 80) -> list[str]:
    """First lines of the VRAM section: the setup the figures were measured and judged on,
    as few lines as ``width`` allows."""
    seen: dict[tuple[str, str, str, str, str], None] = {}
    for r in records:
        ctx = r.setup
        where = (ctx.get("backend", "?"), ctx.get("device", "?"), r.profile, r.baseline_path)
        seen[(*where, ctx.get("metric", METRIC))] = None
    lines: list[str] = []
    for backend, device, profile, path, metric in seen:
        parts = [
            f"backend {backend} on {device}",
            f"profile {profile}",
            f"baseline {path}",
            f"strict {'on' if strict else 'off'}",
            f"figures: {metric}",
        ]
        current = ""
        for part in parts:
            if current and len(current) + 2 + len(part) > width:
                lines.append(current)
                current = part
            else:
                current = f"{current}; {part}" if current else part
        lines.append(current)
    return lines


class OutputHooks:
    """Hooks for the terminal and the stored breakdowns (a measured test's own output is
    :class:`MeasuredOutputHooks`)."""

    def __init__(self, plugin: VramSession) -> None:
        self.plugin = plugin

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.plugin.worker and self.plugin.settings.json_path:
            from pytest_vram import report

            self.plugin.outcome.run = report.run_metadata(session.config.rootpath)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """With ``--vram-update``: store the measured breakdowns next to their baselines."""
        plugin = self.plugin
        if plugin.worker or not plugin.settings.update or plugin.outcome.errors:
            return
        from pytest_vram import attribution

        by_store: dict[Path, dict[str, dict[str, Any]]] = {}
        for r in plugin.outcome.records:
            if r.breakdown:
                path = attribution.store_path(plugin.baseline_path(r.profile))
                by_store.setdefault(path, {})[r.key] = r.breakdown
        pruned: dict[Path, list[str]] = {}
        for shown, keys in plugin.outcome.pruned.items():
            baseline = Path(shown) if Path(shown).is_absolute() else plugin.rootpath / shown
            pruned[attribution.store_path(baseline)] = keys
        for path in sorted({*by_store, *(p for p in pruned if p.exists())}):
            if attribution.write_store(path, by_store.get(path, {}), pruned.get(path, ())):
                plugin.outcome.written.append(plugin.display(path))


class MeasuredOutputHooks:
    """What a measured test adds to its report: the ``-v`` peak, the out-of-memory
    breakdown, the ``--vram-artifacts``. Registered with the plugin's measuring hooks
    (left out of a run without vram tests)."""

    def __init__(self, plugin: VramSession) -> None:
        self.plugin = plugin
        #: the terminal summary has begun: the short summary's FAILED lines must stay plain
        self._summarising = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self) -> None:
        self._summarising = True

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
    ) -> Generator[None, Any, Any]:
        result = yield
        peak = getattr(report, "vram_peak", None)
        if (
            peak
            and not self._summarising
            and report.when == "call"
            and isinstance(result, tuple)
            and len(result) == 3
        ):
            category, short, verbose = result
            if isinstance(verbose, str) and verbose:
                return category, short, f"{verbose} ({peak})"
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """With ``--vram-artifacts`` on the cuda backend: record the allocator's history."""
        backend = self.plugin.created_backend
        record = (
            self.plugin.settings.artifacts is not None
            and backend is not None
            and backend.name == "cuda"
            and item.stash.get(_probe_key(), None) is not None
        )
        if record:
            from pytest_vram import artifacts

            artifacts.start_recording()
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        if call.when != "call":
            return rep
        from pytest_vram.plugin import PROBE_KEY, RECORDS_KEY

        records = item.stash.get(RECORDS_KEY, [])
        if records:
            rep.vram_peak = ", ".join(f"peak {format_size(r.peak_bytes)}" for r in records)  # type: ignore[attr-defined]
        probe = item.stash.get(PROBE_KEY, None)
        settings = self.plugin.settings
        oom = getattr(probe, "out_of_memory", None)
        if rep.failed and oom is not None and oom.breakdown and isinstance(rep.longrepr, Failure):
            from pytest_vram import attribution

            lines = attribution.top_lines(oom.breakdown)
            text = "\n".join(["", "live at the highest allocation the step reached:", *lines])
            rep.longrepr = failure(item, f"{text_of(rep.longrepr)}\n{text}")
        if probe is not None and settings.artifacts and (rep.failed or settings.artifacts_all):
            from pytest_vram import artifacts

            try:
                written = artifacts.write(settings.artifacts, item.nodeid, probe, records)
            finally:
                artifacts.stop_recording()
            if written and rep.failed:
                shown = ", ".join(self.plugin.display(p) for p in written)
                rep.sections.append(("vram artifacts", shown))
        elif settings.artifacts:
            from pytest_vram import artifacts

            artifacts.stop_recording()
        return rep


def terminal_summary(plugin: VramSession, terminalreporter: Any) -> None:
    """The ``VRAM`` section: what was in force, the table at the terminal's width, notes."""
    from pytest_vram import report

    outcome = plugin.outcome
    terminalreporter.ensure_newline()  # else a blank line follows the header
    terminalreporter.section("VRAM")
    width = terminalreporter._tw.fullwidth
    if outcome.records:
        for line in in_force(outcome.records, plugin.settings.strict, width):
            terminalreporter.write_line(line)
        for line in report.table_lines(outcome.records, width):
            terminalreporter.write_line(line)
    for line in report.note_lines(outcome):
        terminalreporter.write_line(line)


def _probe_key() -> Any:
    from pytest_vram.plugin import PROBE_KEY

    return PROBE_KEY


def safe_name(nodeid: str) -> str:
    """A file name for a node id: ``tests/a.py::t[x-y]`` -> ``tests_a.py__t_x-y_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid)[:150]
