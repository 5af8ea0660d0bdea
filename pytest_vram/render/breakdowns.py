"""A breakdown in words: the top groups at the peak, what grew against the stored
breakdown, and the full text of ``breakdown.txt``."""

from __future__ import annotations

from typing import Any

from pytest_vram.core.breakdown import by_category, collapse, growth
from pytest_vram.core.units import format_size


def top_lines(breakdown: dict[str, Any], limit: int = 5) -> list[str]:
    """Short lines: the largest groups at the peak (collapsed over layers), then the sites."""
    total = breakdown.get("peak_bytes") or 0
    rows = sorted(collapse(breakdown).items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    lines = []
    for label, nbytes in rows:
        share = f"{nbytes / total * 100:4.1f}%" if total else ""
        lines.append(f"  {format_size(nbytes):>10} {share:>6}  {label}")
    for site in breakdown.get("sites", [])[:3]:
        lines.append(
            f"  {format_size(site['bytes']):>10} {'':>6}  {site['op']} at {site['source']} "
            f"({site['module']}, {site['count']}x)"
        )
    return lines


def explain(
    current: dict[str, Any] | None,
    stored: dict[str, int] | None,
    stored_path: str,
    head: str = "at the peak:",
    unreadable: str | None = None,
) -> str:
    """The lines a failure message gets: top contributors (under ``head``), and what grew
    against the store (``unreadable``: why the store could not be read, said instead)."""
    if not current:
        return ""
    lines = [head, *top_lines(current)]
    if unreadable is not None:
        lines.append(f"  (not compared with the stored breakdowns: {unreadable})")
        return "\n".join(lines)
    if stored is None:
        lines.append(f"  (no stored breakdown in {stored_path} to compare with)")
        return "\n".join(lines)
    grown = growth(current, stored)
    if not grown:
        lines.append(f"no module grew against {stored_path}")
    else:
        lines.append(f"grew against {stored_path}:")
        for label, old, new in grown[:5]:
            was = "new" if old == 0 else f"was {format_size(old)}"
            lines.append(f"  {'+' + format_size(new - old):>10}  {label} ({was})")
    return "\n".join(lines)


def text_report(key: str, breakdown: dict[str, Any]) -> str:
    """The full text breakdown of one measurement (the artefact ``breakdown.txt``)."""
    lines = [f"{key}", f"live at the peak: {format_size(breakdown['peak_bytes'])}", ""]
    lines.append("by category:")
    for cat, n in sorted(by_category(breakdown).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {format_size(n):>10}  {cat}")
    lines += ["", "by module (every layer's copy together):"]
    for label, n in sorted(collapse(breakdown).items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {format_size(n):>10}  {label}")
    lines += ["", "by module:"]
    for module, cat, n in breakdown["groups"]:
        lines.append(f"  {format_size(n):>10}  {module} ({cat})")
    lines += ["", "largest allocation sites (operator, source line):"]
    for s in breakdown["sites"]:
        lines.append(
            f"  {format_size(s['bytes']):>10}  {s['op']} at {s['source']} in {s['module']}, "
            f"{s['count']} tensor(s)"
        )
    return "\n".join(lines) + "\n"
