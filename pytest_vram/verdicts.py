"""Verdicts: measurement + baseline + policy -> what the report says and whether a test fails.

Pure functions over plain records, no pytest: the decision stays separate from pytest
plumbing, and every rule is testable with a table. A verdict carries its own long
description, so the report hook only has to print it.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
from collections.abc import Iterable

from pytest_vram.figures import MemoryFigures
from pytest_vram.units import Tolerance, format_delta, format_size


class Kind(enum.Enum):
    """What happened to one measurement, judged against its baseline and budget."""

    PASS = "pass"
    NEW = "new"
    MISSING = "missing"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    OVER_BUDGET = "over budget"
    UPDATED = "updated"


#: Most severe first; :func:`worst` picks by this order.
SEVERITY: tuple[Kind, ...] = (
    Kind.OVER_BUDGET,
    Kind.REGRESSION,
    Kind.MISSING,
    Kind.IMPROVEMENT,
    Kind.NEW,
    Kind.UPDATED,
    Kind.PASS,
)

# Compared fields, headline first. The peak is what runs out of memory; the model figure
# is compared too because a model growing inside an unchanged peak is still news.
_FIELDS = (("peak_bytes", "peak"), ("model_bytes", "model"))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judgement about one measurement."""

    kind: Kind
    key: str
    #: One short line for the terminal table, e.g. ``"+12.0 MiB (+0.21%)"``.
    summary: str
    #: Long description: both figures, the delta in bytes and percent, the limit, the fix.
    detail: str
    fails: bool


def judge(
    key: str,
    measured: MemoryFigures,
    baseline: MemoryFigures | None,
    *,
    tolerance: Tolerance,
    budget: int | None = None,
    reserved: int | None = None,
    reserved_budget: int | None = None,
    strict: bool = False,
    update: bool = False,
    fail_improvements: bool = False,
    baseline_path: str = "",
    nodeid: str | None = None,
) -> list[Verdict]:
    """Judge one measurement; return every applicable verdict, or a single PASS.

    * ``budget`` (bytes): a peak above it is OVER_BUDGET and fails, whatever the baseline
      says and even while updating. Exactly on the budget passes.
    * ``reserved_budget`` (bytes): the same for ``reserved`` (the memory the allocator held
      from the device); a backend that cannot tell (``reserved`` None) fails it, since the
      limit cannot be checked.
    * ``update``: the baseline is being rewritten, so baseline differences never fail:
      NEW without a baseline, UPDATED when the figures changed, PASS when they did not.
    * no baseline: MISSING (fails) when ``strict``, else NEW.
    * otherwise ``peak_bytes`` and ``model_bytes`` are each compared with the baseline
      plus/minus ``tolerance.allowance(baseline)``: above is a REGRESSION (fails), below an
      IMPROVEMENT (reported so it can be locked in; it fails with ``fail_improvements``).
      Exactly on the limit passes.

    ``nodeid`` is the test's node id for the suggested ``pytest --vram-update`` command
    (defaults to ``key``; pass it when the key carries a ``::<measurement name>`` suffix).
    """
    ctx = _Context(key, nodeid or key, baseline_path or "the baseline file")
    verdicts: list[Verdict] = []
    if budget is not None and measured.peak_bytes > budget:
        verdicts.append(_over_budget(ctx, measured, budget))
    if reserved_budget is not None and (reserved is None or reserved > reserved_budget):
        verdicts.append(_over_reserved_budget(ctx, reserved, reserved_budget))
    note = ""
    if update:
        if baseline is not None and _same_figures(measured, baseline):
            note = "unchanged, nothing to update"
        else:
            verdicts.append(_updated(ctx, measured, baseline))
    elif baseline is None:
        verdicts.append(_missing(ctx, measured, strict))
    else:
        verdicts.extend(_compare(ctx, measured, baseline, tolerance, fail_improvements))
    if verdicts:
        return verdicts
    assert baseline is not None  # every path without a baseline added a verdict above
    return [_pass(ctx, measured, baseline, tolerance, note)]


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (failing ones first, see ``SEVERITY``); ties keep the first."""
    items = list(verdicts)
    if not items:
        raise ValueError("worst() needs at least one verdict")
    return min(items, key=lambda v: SEVERITY.index(v.kind))


def failed(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The verdicts that fail the test, in order."""
    return [v for v in verdicts if v.fails]


@dataclasses.dataclass(frozen=True)
class _Context:
    key: str
    nodeid: str
    baseline_path: str

    @property
    def update_command(self) -> str:
        return update_command(self.nodeid)


def update_command(nodeid: str) -> str:
    """The command that records ``nodeid``'s figures as its baseline."""
    # Quoted: parametrised ids contain [] that a shell would glob.
    return f"pytest --vram-update {shlex.quote(nodeid)}"


def _figure(n: int) -> str:
    return f"{n} B ({format_size(n)})"


def _delta(measured: int, reference: int) -> str:
    """``"+12582912 B (+12.0 MiB, +0.20%)"``: exact bytes for the record, units to read."""
    delta = measured - reference
    readable = ("+" if delta >= 0 else "") + format_size(delta)
    percent = f"{delta / reference * 100:+.2f}%" if reference else "reference is 0 B"
    return f"{delta:+d} B ({readable}, {percent})"


def _over_budget(ctx: _Context, measured: MemoryFigures, budget: int) -> Verdict:
    peak = measured.peak_bytes
    detail = (
        f"{ctx.key}: peak {_figure(peak)} is over the budget {_figure(budget)} by "
        f"{_delta(peak, budget)}. A budget is a hard limit that no baseline or tolerance "
        f"relaxes: reduce the workload's memory, or raise budget= on the vram marker if the "
        f"limit itself was wrong."
    )
    summary = f"{format_delta(peak, budget)} over budget {format_size(budget)}"
    return Verdict(Kind.OVER_BUDGET, ctx.key, summary, detail, fails=True)


def _over_reserved_budget(ctx: _Context, reserved: int | None, budget: int) -> Verdict:
    if reserved is None:
        detail = (
            f"{ctx.key}: reserved_budget {_figure(budget)} cannot be checked: this backend "
            f"does not report reserved memory; use the cuda or estimate backend, or drop "
            f"reserved_budget= from the vram marker."
        )
        return Verdict(Kind.OVER_BUDGET, ctx.key, "reserved unknown", detail, fails=True)
    detail = (
        f"{ctx.key}: reserved {_figure(reserved)} (what the allocator held from the device, "
        f"fragmentation included) is over the reserved_budget {_figure(budget)} by "
        f"{_delta(reserved, budget)}. Reduce the workload's memory or its fragmentation, or "
        f"raise reserved_budget= on the vram marker if the limit itself was wrong."
    )
    summary = f"reserved {format_delta(reserved, budget)} over {format_size(budget)}"
    return Verdict(Kind.OVER_BUDGET, ctx.key, summary, detail, fails=True)


def _updated(ctx: _Context, measured: MemoryFigures, baseline: MemoryFigures | None) -> Verdict:
    if baseline is None:
        detail = (
            f"{ctx.key}: recorded peak {_figure(measured.peak_bytes)}, model "
            f"{_figure(measured.model_bytes)} as a new entry in {ctx.baseline_path}; "
            f"review and commit the file."
        )
        return Verdict(Kind.NEW, ctx.key, "recorded", detail, fails=False)
    changes = "; ".join(
        f"{label} {_figure(getattr(baseline, field))} -> {_figure(getattr(measured, field))}, "
        f"{_delta(getattr(measured, field), getattr(baseline, field))}"
        for field, label in _FIELDS
    )
    detail = f"{ctx.key}: updated in {ctx.baseline_path}: {changes}; review and commit the file."
    summary = format_delta(measured.peak_bytes, baseline.peak_bytes) + " (updated)"
    return Verdict(Kind.UPDATED, ctx.key, summary, detail, fails=False)


def _same_figures(measured: MemoryFigures, baseline: MemoryFigures) -> bool:
    return all(getattr(measured, f) == getattr(baseline, f) for f, _ in _FIELDS)


def _missing(ctx: _Context, measured: MemoryFigures, strict: bool) -> Verdict:
    figures = f"peak {_figure(measured.peak_bytes)}, model {_figure(measured.model_bytes)}"
    if strict:
        detail = (
            f"{ctx.key}: no baseline in {ctx.baseline_path} (strict mode: every measurement "
            f"needs one). Measured {figures}. Record it with `{ctx.update_command}` and "
            f"commit {ctx.baseline_path}."
        )
        return Verdict(Kind.MISSING, ctx.key, "no baseline", detail, fails=True)
    detail = (
        f"{ctx.key}: no baseline yet in {ctx.baseline_path}; measured {figures}. "
        f"Record it with `{ctx.update_command}`."
    )
    return Verdict(Kind.NEW, ctx.key, "new, no baseline", detail, fails=False)


def _compare(
    ctx: _Context,
    measured: MemoryFigures,
    baseline: MemoryFigures,
    tolerance: Tolerance,
    fail_improvements: bool,
) -> list[Verdict]:
    over: list[str] = []
    under: list[str] = []
    for field, _label in _FIELDS:
        value, reference = getattr(measured, field), getattr(baseline, field)
        allowance = tolerance.allowance(reference)
        if value > reference + allowance:
            over.append(field)
        elif value < reference - allowance:
            under.append(field)
    verdicts = []
    if over:
        verdicts.append(_regression(ctx, measured, baseline, tolerance, over))
    if under:
        verdicts.append(_improvement(ctx, measured, baseline, tolerance, under, fail_improvements))
    return verdicts


def _field_report(
    field: str, measured: MemoryFigures, baseline: MemoryFigures, tolerance: Tolerance
) -> str:
    label = dict(_FIELDS)[field]
    value, reference = getattr(measured, field), getattr(baseline, field)
    allowance = tolerance.allowance(reference)
    figures = (
        f"{label} {_figure(value)} vs baseline {_figure(reference)}: {_delta(value, reference)}"
    )
    if allowance == 0:
        return f"{figures}; tolerance {tolerance}: the figure must equal the baseline exactly"
    return (
        f"{figures}; tolerance {tolerance} allows +/-{allowance} B ({format_size(allowance)}), "
        f"i.e. {reference - allowance}..{reference + allowance} B"
    )


def _summary(fields: list[str], measured: MemoryFigures, baseline: MemoryFigures) -> str:
    parts = []
    for field in fields:
        text = format_delta(getattr(measured, field), getattr(baseline, field))
        parts.append(text if field == "peak_bytes" else f"model {text}")
    return "; ".join(parts)


def _regression(
    ctx: _Context,
    measured: MemoryFigures,
    baseline: MemoryFigures,
    tolerance: Tolerance,
    fields: list[str],
) -> Verdict:
    reports = ". ".join(_field_report(f, measured, baseline, tolerance) for f in fields)
    detail = (
        f"{ctx.key}: memory regression against {ctx.baseline_path}. {reports}. "
        f"Reduce the memory use, or if the increase is intended record it with "
        f"`{ctx.update_command}` and commit {ctx.baseline_path} with the reason."
    )
    return Verdict(Kind.REGRESSION, ctx.key, _summary(fields, measured, baseline), detail, True)


def _improvement(
    ctx: _Context,
    measured: MemoryFigures,
    baseline: MemoryFigures,
    tolerance: Tolerance,
    fields: list[str],
    fails: bool = False,
) -> Verdict:
    reports = ". ".join(_field_report(f, measured, baseline, tolerance) for f in fields)
    detail = (
        f"{ctx.key}: uses less memory than {ctx.baseline_path} records. {reports}. "
        f"Lock the improvement in with `{ctx.update_command}` so that a later regression "
        f"back to the old figure is caught."
    )
    if fails:
        detail += " (--vram-fail-improvements: an unrecorded improvement fails the test.)"
    return Verdict(Kind.IMPROVEMENT, ctx.key, _summary(fields, measured, baseline), detail, fails)


def _pass(
    ctx: _Context, measured: MemoryFigures, baseline: MemoryFigures, tolerance: Tolerance, note: str
) -> Verdict:
    peak, reference = measured.peak_bytes, baseline.peak_bytes
    allowance = tolerance.allowance(reference)
    summary = format_delta(peak, reference)
    detail = (
        f"{ctx.key}: peak {_figure(peak)} vs baseline {_figure(reference)}: "
        f"{_delta(peak, reference)}, within tolerance {tolerance} "
        f"(+/-{allowance} B, {format_size(allowance)})"
    )
    if note:
        summary, detail = f"{summary} ({note})", f"{detail}; {note}"
    return Verdict(Kind.PASS, ctx.key, summary, detail, fails=False)
