"""Claim verdicts in words: the message that quotes the figures, the text of a claim's
report, the ``VRAM claims`` section and the Markdown table."""

from __future__ import annotations

from pytest_vram.core.claims import EXACT, AtMost, ClaimKind, ClaimVerdict, GrowsLike
from pytest_vram.core.units import format_delta, format_size


def message(verdict: ClaimVerdict) -> str:
    """What the claim found, with the measured figures (and the declaration's reason when
    it was declared broken)."""
    finding = verdict.finding
    if isinstance(finding, AtMost):
        text = _at_most(finding)
    elif isinstance(finding, GrowsLike):
        text = _grows_like(finding)
    else:
        lacking = "; ".join(f"{key} ({why})" for key, why in finding.absent)
        return f"not evaluated: no figures for {lacking}"
    if verdict.kind is ClaimKind.HOLDS_UNEXPECTEDLY:
        return (
            f"declared broken ({verdict.expect_broken}) but it holds: {text}; the claim is "
            f"true now: remove expect_broken= from its declaration"
        )
    if verdict.kind is ClaimKind.BROKEN_AS_EXPECTED:
        return f"{verdict.expect_broken}: {text}"
    return text


def _at_most(finding: AtMost) -> str:
    """Both values, the delta, the allowance."""
    value, limit, tolerance = finding.value, finding.limit, finding.tolerance
    side = "within" if finding.holds else "over"
    allowance = "" if tolerance == EXACT else f" ({format_size(finding.allowance)})"
    return (
        f"{finding.subject} {format_size(value)} ({value} B) vs {finding.reference} "
        f"{format_size(limit)} ({limit} B): {format_delta(value, limit)}, {side} the stated "
        f"tolerance {tolerance}{allowance}"
    )


def _grows_like(finding: GrowsLike) -> str:
    shown = ", ".join(f"x={x:g}: {format_size(v)} ({v} B)" for x, v in finding.points)
    if finding.slope is None:
        return f"{finding.field} is not positive at every point ({shown})"
    return (
        f"{finding.field} grows like x^{finding.slope:.3f} (claimed x^{finding.exponent:g} "
        f"+/- {finding.within:g}): {shown}"
    )


def report_text(nodeid: str, verdict: ClaimVerdict, *, strict: bool) -> str:
    """The text of a claim's reported call: the failure, the skip or the xfail reason."""
    text = message(verdict)
    if verdict.kind is ClaimKind.HOLDS_UNEXPECTEDLY:
        return f"[XPASS(strict)] {nodeid}: {text}"
    if verdict.kind is ClaimKind.BROKEN:
        return f"{nodeid}: {text}"
    if verdict.kind is ClaimKind.INCOMPLETE and strict:
        return f"{nodeid}: {text} (strict mode: every claim must be decided)"
    if verdict.kind is ClaimKind.INCOMPLETE:
        return f"Skipped: {text}"
    return text


def summary_lines(
    judged: list[tuple[str, ClaimVerdict]], not_evaluated: list[tuple[str, str]]
) -> list[str]:
    """The ``VRAM claims`` section: one line per judged claim (its kind and figures), one
    per module for the others."""
    lines = [f"{v.kind.value}: {nodeid}: {message(v)}" for nodeid, v in judged]
    if len(not_evaluated) == 1:
        lines.append("not evaluated: {}: {}".format(*not_evaluated[0]))
    elif not_evaluated:
        modules: dict[str, int] = {}
        for nodeid, _ in not_evaluated:
            module = nodeid.rpartition("::")[0]
            modules[module] = modules.get(module, 0) + 1
        lines.extend(
            f"not evaluated: {n} claims of {module}: none of the tests they read ran"
            for module, n in sorted(modules.items())
        )
    return lines


def markdown_lines(judged: list[tuple[str, ClaimVerdict]]) -> list[str]:
    """The claims as a Markdown table (empty without claims)."""
    if not judged:
        return []
    lines = ["", "### Claims", "", "| claim | result | figures |", "| --- | --- | --- |"]
    for nodeid, verdict in judged:
        text = message(verdict).replace("|", "\\|")
        lines.append(f"| `{nodeid}` | {verdict.kind.value} | {text} |")
    return lines
