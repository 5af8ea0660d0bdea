"""A measurement's verdicts in words: the table's one-line summary, the long detail of
``--vram-json``, and the failure text pytest shows (figures first, then what to do)."""

from __future__ import annotations

import shlex

from pytest_vram.core.figures import MemoryFigures
from pytest_vram.core.records import Record
from pytest_vram.core.units import format_delta, format_size
from pytest_vram.core.verdicts import COMPARED, LARGEST, RESERVED, Cause, Kind, OffDevice, Verdict
from pytest_vram.measure.meter import OutOfMemory

_LABELS = {"peak_bytes": "peak", "model_bytes": "model"}

NOTHING_MEASURED = (
    "{nodeid}: is a vram test but measured nothing (--vram-strict): call "
    "vram.run(workload, ...) and let the workload's exceptions propagate, or drop the "
    "marker and the `vram` fixture"
)


def update_command(nodeid: str) -> str:
    """The command that records ``nodeid``'s figures as its baseline."""
    # Quoted: parametrised ids contain [] that a shell would glob.
    return f"pytest --vram-update {shlex.quote(nodeid)}"


def nothing_measured(nodeid: str) -> str:
    """The failure of a vram test that measured nothing, in strict mode."""
    return NOTHING_MEASURED.format(nodeid=nodeid)


def _baseline(record: Record) -> MemoryFigures | None:
    if record.baseline_model_bytes is None or record.baseline_peak_bytes is None:
        return None
    return MemoryFigures(record.baseline_model_bytes, record.baseline_peak_bytes)


def _path(record: Record) -> str:
    return record.baseline_path or "the baseline file"


# --------------------------------------------------------------------------- summary


def summary(record: Record, verdict: Verdict) -> str:
    """One short line for the terminal table and the notes, e.g. ``"+12.0 MiB (+0.21%)"``."""
    measured, baseline = record.figures, _baseline(record)
    kind = verdict.kind
    if kind is Kind.NOT_ON_DEVICE and record.off_device is not None:
        return _off_device_headline(record.off_device)
    if kind is Kind.OVER_BUDGET and verdict.fields == (RESERVED,):
        budget = record.reserved_budget or 0
        if record.reserved_bytes is None:
            return "reserved unknown"
        return f"reserved {format_delta(record.reserved_bytes, budget)} over {format_size(budget)}"
    if kind is Kind.OVER_BUDGET:
        budget = record.budget or 0
        return f"{format_delta(measured.peak_bytes, budget)} over budget {format_size(budget)}"
    if verdict.fields == (LARGEST,):
        return _largest_summary(record, kind)
    if kind is Kind.NEW:
        return "recorded" if verdict.updating else "new, no baseline"
    if kind is Kind.MISSING:
        return "no baseline"
    assert baseline is not None  # the other kinds compare with a baseline
    if kind is Kind.UPDATED:
        if record.largest is not None and record.largest.value != record.baseline_largest:
            return f"largest {_shown(record.baseline_largest)} -> {record.largest.value} (updated)"
        return format_delta(measured.peak_bytes, baseline.peak_bytes) + " (updated)"
    if kind in (Kind.REGRESSION, Kind.IMPROVEMENT):
        parts = []
        for field in verdict.fields:
            text = format_delta(getattr(measured, field), getattr(baseline, field))
            parts.append(text if field == "peak_bytes" else f"model {text}")
        return "; ".join(parts)
    text = format_delta(measured.peak_bytes, baseline.peak_bytes)
    return f"{text} (unchanged, nothing to update)" if verdict.updating else text


def _shown(value: int | None) -> str:
    return "none" if value is None else str(value)


def _largest_summary(record: Record, kind: Kind) -> str:
    """The summary of a verdict about ``largest`` (the answer of ``vram.largest``)."""
    largest = record.largest
    assert largest is not None
    if kind in (Kind.MISSING, Kind.NEW):
        return f"no recorded largest on {largest.card}"
    return f"largest {largest.value}, baseline {_shown(record.baseline_largest)}"


def _largest_detail(record: Record, kind: Kind, fails: bool) -> str:
    """The long description of a verdict about ``largest``."""
    largest = record.largest
    assert largest is not None
    key, path = record.key, _path(record)
    command = update_command(record.nodeid or key)
    card, value, recorded = largest.card, largest.value, record.baseline_largest
    if kind in (Kind.MISSING, Kind.NEW):
        was = (
            "none"
            if recorded is None
            else f"{recorded} on card {record.baseline_card}, another card"
        )
        strict = " (strict mode: every measurement needs one)" if fails else ""
        return (
            f"{key}: {path} records no largest value on card {card} (recorded: {was})"
            f"{strict}; this run found {value}. Record it with `{command}` and commit {path}."
        )
    if kind is Kind.REGRESSION:
        return (
            f"{key}: the largest value that fits card {card} fell from {recorded} ({path}) to "
            f"{value}: {recorded} now runs out of memory. Reduce the memory use, or if the "
            f"change is intended record it with `{command}` and commit {path} with the reason."
        )
    text = (
        f"{key}: {value} fits card {card} where {path} records {recorded} as the largest. "
        f"Lock the improvement in with `{command}` so that a later regression back to "
        f"{recorded} is caught."
    )
    if fails:
        text += " (--vram-fail-improvements: an unrecorded improvement fails the test.)"
    return text


# --------------------------------------------------------------------------- detail


def _figure(n: int) -> str:
    return f"{n} B ({format_size(n)})"


def _delta(measured: int, reference: int) -> str:
    """``"+12582912 B (+12.0 MiB, +0.20%)"``: exact bytes for the record, units to read."""
    delta = measured - reference
    readable = ("+" if delta >= 0 else "") + format_size(delta)
    percent = f"{delta / reference * 100:+.2f}%" if reference else "reference is 0 B"
    return f"{delta:+d} B ({readable}, {percent})"


def detail(record: Record, verdict: Verdict) -> str:
    """The long description: both figures, the delta in bytes and percent, the limit, the
    fix (``--vram-json``'s ``detail``, and the failure text of the kinds without lines of
    their own)."""
    key, path = record.key, _path(record)
    command = update_command(record.nodeid or key)
    measured, baseline = record.figures, _baseline(record)
    kind = verdict.kind
    if kind is Kind.NOT_ON_DEVICE and record.off_device is not None:
        return f"{key}: " + " ".join(line.strip() for line in off_device_lines(record))
    if kind is Kind.OVER_BUDGET and verdict.fields == (RESERVED,):
        return _reserved_detail(key, record.reserved_bytes, record.reserved_budget or 0)
    if kind is Kind.OVER_BUDGET:
        peak, budget = measured.peak_bytes, record.budget or 0
        return (
            f"{key}: peak {_figure(peak)} is over the budget {_figure(budget)} by "
            f"{_delta(peak, budget)}. A budget is a hard limit that no baseline or tolerance "
            f"relaxes: reduce the workload's memory, or raise budget= on the vram marker if "
            f"the limit itself was wrong."
        )
    if verdict.fields == (LARGEST,):
        return _largest_detail(record, kind, verdict.fails)
    if kind is Kind.NEW and verdict.updating:
        return (
            f"{key}: recorded peak {_figure(measured.peak_bytes)}, model "
            f"{_figure(measured.model_bytes)} as a new entry in {path}; "
            f"review and commit the file."
        )
    figures = f"peak {_figure(measured.peak_bytes)}, model {_figure(measured.model_bytes)}"
    if kind is Kind.MISSING:
        return (
            f"{key}: no baseline in {path} (strict mode: every measurement "
            f"needs one). Measured {figures}. Record it with `{command}` and "
            f"commit {path}."
        )
    if kind is Kind.NEW:
        return f"{key}: no baseline yet in {path}; measured {figures}. Record it with `{command}`."
    assert baseline is not None  # the other kinds compare with a baseline
    if kind is Kind.UPDATED:
        changes = "; ".join(
            f"{_LABELS[field]} {_figure(getattr(baseline, field))} -> "
            f"{_figure(getattr(measured, field))}, "
            f"{_delta(getattr(measured, field), getattr(baseline, field))}"
            for field in COMPARED
        )
        return f"{key}: updated in {path}: {changes}; review and commit the file."
    reports = ". ".join(
        _field_report(field, measured, baseline, record) for field in verdict.fields
    )
    if kind is Kind.REGRESSION:
        return (
            f"{key}: memory regression against {path}. {reports}. "
            f"Reduce the memory use, or if the increase is intended record it with "
            f"`{command}` and commit {path} with the reason."
        )
    if kind is Kind.IMPROVEMENT:
        text = (
            f"{key}: uses less memory than {path} records. {reports}. "
            f"Lock the improvement in with `{command}` so that a later regression "
            f"back to the old figure is caught."
        )
        if verdict.fails:
            text += " (--vram-fail-improvements: an unrecorded improvement fails the test.)"
        return text
    return _pass_detail(record, verdict, measured, baseline)


def _reserved_detail(key: str, reserved: int | None, budget: int) -> str:
    if reserved is None:
        return (
            f"{key}: reserved_budget {_figure(budget)} cannot be checked: this backend "
            f"does not report reserved memory; use the cuda or estimate backend, or drop "
            f"reserved_budget= from the vram marker."
        )
    return (
        f"{key}: reserved {_figure(reserved)} (what the allocator held from the device, "
        f"fragmentation included) is over the reserved_budget {_figure(budget)} by "
        f"{_delta(reserved, budget)}. Reduce the workload's memory or its fragmentation, or "
        f"raise reserved_budget= on the vram marker if the limit itself was wrong."
    )


def _field_report(
    field: str, measured: MemoryFigures, baseline: MemoryFigures, record: Record
) -> str:
    tolerance = record.tolerance
    value, reference = getattr(measured, field), getattr(baseline, field)
    allowance = tolerance.allowance(reference)
    figures = (
        f"{_LABELS[field]} {_figure(value)} vs baseline {_figure(reference)}: "
        f"{_delta(value, reference)}"
    )
    if allowance == 0:
        return f"{figures}; tolerance {tolerance}: the figure must equal the baseline exactly"
    return (
        f"{figures}; tolerance {tolerance} allows +/-{allowance} B ({format_size(allowance)}), "
        f"i.e. {reference - allowance}..{reference + allowance} B"
    )


def _pass_detail(
    record: Record, verdict: Verdict, measured: MemoryFigures, baseline: MemoryFigures
) -> str:
    peak, reference = measured.peak_bytes, baseline.peak_bytes
    allowance = record.tolerance.allowance(reference)
    text = (
        f"{record.key}: peak {_figure(peak)} vs baseline {_figure(reference)}: "
        f"{_delta(peak, reference)}, within tolerance {record.tolerance} "
        f"(+/-{allowance} B, {format_size(allowance)})"
    )
    return f"{text}; unchanged, nothing to update" if verdict.updating else text


# --------------------------------------------------------------------------- failure text


def failure_text(record: Record) -> str:
    """A failing record's message: short lines, the figures first, then what to do.

    The first line is what pytest's short summary shows after the node id, so it carries
    the verdict and the change and does not repeat the node id.
    """
    parts = []
    for verdict in record.verdicts:
        if not verdict.fails:
            continue
        lines = _failure_lines(record, verdict)
        if record.name:
            lines[0] = f"{record.name}: {lines[0]}"
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _bytes(n: int) -> str:
    return f"{format_size(n):>10}  {n:>14,d} B"


def _failure_lines(r: Record, verdict: Verdict) -> list[str]:
    fix = f"`{update_command(r.nodeid)}`\n  and commit {r.baseline_path}"
    peak, base = r.peak_bytes, r.baseline_peak_bytes
    kind = verdict.kind
    if kind is Kind.NOT_ON_DEVICE and r.off_device is not None:
        return off_device_lines(r)
    if kind is Kind.OVER_BUDGET and verdict.fields != (RESERVED,) and r.budget is not None:
        return [
            f"peak {format_delta(peak, r.budget)} over the budget {format_size(r.budget)}",
            f"  peak      {_bytes(peak)}",
            f"  budget    {_bytes(r.budget)}",
            "  a budget is a hard limit, whatever the baseline says: reduce the workload's",
            "  memory, or raise budget= on the vram marker if the limit itself was wrong",
        ]
    if verdict.fields == (LARGEST,) and r.largest is not None:
        return _largest_failure(r, fix) if kind is Kind.REGRESSION else [detail(r, verdict)]
    if kind is Kind.REGRESSION and base is not None and r.baseline_model_bytes is not None:
        lines = [f"peak {format_delta(peak, base)}: memory regression against {r.baseline_path}"]
        for label, value, ref in (
            ("peak", peak, base),
            ("model", r.model_bytes, r.baseline_model_bytes),
        ):
            allowance = r.tolerance.allowance(ref)
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
    if kind is Kind.MISSING:
        return [
            f"no baseline (strict mode): peak {format_size(peak)}, "
            f"model {format_size(r.model_bytes)}",
            f"  peak      {_bytes(peak)}",
            f"  model     {_bytes(r.model_bytes)}",
            f"  record it with {fix}",
        ]
    return [detail(r, verdict)]


def _largest_failure(r: Record, fix: str) -> list[str]:
    """A lower answer of ``vram.largest`` than the baseline's: both, and where each ran."""
    largest = r.largest
    assert largest is not None
    recorded = r.baseline_largest
    lines = [
        f"largest {largest.value} on card {largest.card}, baseline {recorded}: what fits the "
        f"card shrank ({r.baseline_path})"
    ]
    if largest.fits:
        lines.append(f"  largest   {largest.value:>8}  peak {_bytes(r.peak_bytes)}")
    else:
        lines.append(f"  largest   {'none':>8}  not even {largest.low} fits")
    lost = largest.lost
    if lost is not None:
        lines.append(
            f"  baseline  {recorded:>8}  ran out of memory at {_bytes(lost['peak_bytes'])}"
        )
    else:
        lines.append(f"  baseline  {recorded!s:>8}")
    lines.append("  reduce the memory use; if the change is intended, record it with")
    lines.append(f"  {fix} with the reason")
    return lines


# --------------------------------------------------------------------------- off device


def _params(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _elsewhere(off: OffDevice) -> str:
    """``"16.78M parameters on cpu"``, ``"2 tensors on cpu"``, or both."""
    parts = []
    if off.params:
        parts.append(f"{_params(off.params)} parameters")
    if off.tensors:
        parts.append(f"{off.tensors} tensor{'s' if off.tensors != 1 else ''}")
    return f"{' and '.join(parts)} on {', '.join(off.elsewhere) or 'another device'}"


def _off_device_headline(off: OffDevice) -> str:
    where = ", ".join(off.elsewhere)
    if off.in_build:
        place = "the CPU" if where == "cpu" else f"{where}, not {off.device}"
        what = "the model is" if off.params else "the built tensors are"
        return f"{what} on {place} ({_elsewhere(off)})"
    if off.params or off.tensors:
        return f"nothing counted on {off.device}: the workload's tensors are on {where}"
    return f"nothing counted on {off.device}: the workload used no device memory"


def off_device_lines(r: Record) -> list[str]:
    """The failure of figures that counted none of the test's device memory: what was
    found, the likely cause, the fix; such a figure is never recorded."""
    off = r.off_device
    assert off is not None
    figures = f"model {format_size(r.model_bytes)}, peak {format_size(r.peak_bytes)}"
    return [
        f"{_off_device_headline(off)}; the figures ({figures}) are not the test's "
        f"device memory and are not recorded",
        *off_device_explanation(off),
    ]


def off_device_explanation(off: OffDevice) -> list[str]:
    """What was found where, the likely cause and the fix, as indented lines."""
    if off.in_build:
        found = f"  {off.step} counted no bytes on {off.device}; its result holds {_elsewhere(off)}"
    elif off.params or off.tensors:
        found = (
            f"  {off.step} allocated nothing on {off.device}; what it uses holds "
            f"{_elsewhere(off)} and nothing on {off.device}"
        )
    else:
        found = (
            f"  {off.step} allocated nothing on {off.device}, and no model or tensor on "
            f"{off.device} is in its arguments, closure or result"
        )
    lines = [found]
    causes = [_cause(c, off) for c in off.causes]
    if not causes and off.in_build:
        causes = ["the model was made on the CPU and never moved to the device"]
    lines.extend(_likely(causes))
    lines.append(
        "  fix: make the model and its tensors on vram.device inside the test "
        "(model.to(vram.device), torch.randn(..., device=vram.device))"
    )
    if off.backend == "estimate" and any(c.kind == "import-time device" for c in off.causes):
        lines.append(
            "  or keep the module-level device and let the code run at import see the "
            "emulated GPU: --vram-emulate=session (ini vram_emulate = session), which makes "
            "torch.cuda.is_available() answer True for the whole session"
        )
    if not off.in_build and not (off.params or off.tensors or off.causes):
        lines.append(
            "  a test whose workload uses no device memory has nothing to measure: drop "
            "the `vram` fixture and marker"
        )
    return lines


def off_device_failure(off: OffDevice, error: str, where: str) -> str:
    """A test that failed after a build step left its model on another device: that is
    the likely reason, before the error it led to (e.g. tensors on two devices)."""
    at = f" at {where}" if where else ""
    return "\n".join(
        [
            f"{_off_device_headline(off)}; the test then failed{at}:",
            f"  {error}",
            *off_device_explanation(off),
        ]
    )


def mixed_devices_failure(
    off: OffDevice, error: str, where: str, *, session_emulated: bool = False
) -> str:
    """A test that failed on tensors of two devices while nothing was left off the device
    by a build step: what the failing code held elsewhere, the likely cause and the fix."""
    at = f" at {where}" if where else ""
    lines = [
        f"tensors on two devices: the test runs on {off.device} and its code holds "
        f"{_elsewhere(off)}; it failed{at}:",
        f"  {error}",
    ]
    lines.extend(_likely([_cause(c, off) for c in off.causes]))
    lines.append(
        "  fix: make the model and its tensors on vram.device inside the test or a "
        "function-scoped fixture (model.to(vram.device), torch.randn(..., device=vram.device))"
    )
    import_time = any(c.kind == "import-time device" for c in off.causes)
    if off.backend == "estimate" and import_time and session_emulated:
        lines.append(
            "  --vram-emulate=session is on, but pytest imports some conftest.py files "
            "before its configuration (the rootdir's, and those of test* directories beside "
            "it): a device chosen there sees the machine; choose it inside the fixture"
        )
    elif off.backend == "estimate" and import_time:
        lines.append(
            "  or keep the module-level device and let the code run at import see the "
            "emulated GPU: --vram-emulate=session (ini vram_emulate = session)"
        )
    return "\n".join(lines)


def _likely(causes: list[str]) -> list[str]:
    if len(causes) == 1:
        return [f"  likely cause: {causes[0]}"]
    return ["  likely causes:", *(f"  - {c}" for c in causes)] if causes else []


def _cause(cause: Cause, off: OffDevice) -> str:
    at = f" ({cause.where})" if cause.where else ""
    if cause.kind == "import-time device":
        before = (
            "before the estimator's emulated GPU existed"
            if off.backend == "estimate"
            else f"before {off.device} was visible"
        )
        return (
            f"{cause.name} = {cause.value!r}{at}: a device chosen with "
            f"torch.cuda.is_available() when the module was imported, {before}: use "
            f"vram.device inside the test"
        )
    if cause.kind == "device variable":
        return f"{cause.name} = {cause.value!r}{at}: use vram.device instead"
    if cause.kind == "device argument":
        return f"{cause.name} was given the device {cause.value!r}: pass vram.device instead"
    if cause.kind == "is_available in fixture":
        return (
            f"fixture {cause.name} chooses its device with torch.cuda.is_available(){at}, "
            f"and a test outside vram may have set it up, where no GPU answers: make it "
            f"function-scoped and use vram.device in it"
        )
    return f"{cause.kind}: {cause.name} {cause.value}{at}".strip()


def out_of_memory(oom: OutOfMemory, nodeid: str, device: str) -> str:
    """The failure text of a step that ran out of memory: the test, the step, the figures,
    the card it ran on where one was declared, and what to do about it."""
    if oom.card is not None:
        return (
            f"{nodeid}: does not fit card {oom.card}: out of memory on {device} in {oom.step}: "
            f"{format_size(oom.held_bytes)} ({oom.held_bytes} B) were allocated when it "
            f"started and it had reached {format_size(oom.peak_bytes)} ({oom.peak_bytes} B) "
            f"when an allocation failed.\n{oom.error}\n"
            f"Reduce the workload's memory (batch, sequence length, model size) until it fits "
            f"the card, or declare a larger card (@pytest.mark.vram(card=...), --vram-card); "
            f"vram.largest(...) finds the largest batch or length that fits. The memory the "
            f"step held has been released for the following tests."
        )
    return (
        f"{nodeid}: out of memory on {device} in {oom.step}: "
        f"{format_size(oom.held_bytes)} ({oom.held_bytes} B) were allocated when it "
        f"started and it had reached {format_size(oom.peak_bytes)} ({oom.peak_bytes} B) "
        f"when an allocation failed.\n{oom.error}\n"
        f"Measure a smaller workload (batch, sequence length, model size), run it on a "
        f"GPU with more free memory (CUDA_VISIBLE_DEVICES selects another one), or "
        f"estimate it without allocating with --vram-backend=estimate; "
        f"@pytest.mark.vram(budget=...) states the ceiling the workload has to fit. "
        f"The memory the step held has been released for the following tests."
    )
