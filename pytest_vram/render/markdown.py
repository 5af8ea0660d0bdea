"""What Markdown shows: the PR comment (``--vram-markdown`` and ``python -m pytest_vram
comment``) and the comparison of two runs (``python -m pytest_vram compare --markdown``)."""

from __future__ import annotations

from pytest_vram.core.breakdown import collapse, growth
from pytest_vram.core.records import Outcome, Record
from pytest_vram.core.runs import Change, Run
from pytest_vram.core.units import format_delta, format_size
from pytest_vram.core.verdicts import Kind
from pytest_vram.render.claims import markdown_lines
from pytest_vram.render.terminal import TIME_COLUMN, columns, note_lines, row_cells


def report(outcome: Outcome) -> str:
    """The ``--vram-markdown`` document: a PR comment (one-line verdict, failures first with
    their top modules, every measurement collapsed, then the claims), see :func:`comment`."""
    text = comment(outcome.records, notes=note_lines(outcome))
    claims = markdown_lines(outcome.claims)
    return text + ("\n".join(claims) + "\n" if claims else "")


def comment(
    records: list[Record],
    stores: dict[str, dict[str, dict[str, int]]] | None = None,
    notes: list[str] | None = None,
) -> str:
    """A PR comment: a one-line verdict, failures first with their top modules (and, with a
    stored breakdown, what grew), every measurement collapsed in ``<details>``."""
    failing = [r for r in records if r.fails]
    kinds = sorted({r.kind.value for r in failing})
    profiles = ", ".join(sorted({r.profile for r in records})) or "no profile"
    if failing:
        worst = max(
            (r for r in failing if r.baseline_peak_bytes),
            key=lambda r: r.peak_bytes - (r.baseline_peak_bytes or 0),
            default=None,
        )
        tail = ""
        if worst is not None and worst.baseline_peak_bytes is not None:
            tail = f"; largest {format_delta(worst.peak_bytes, worst.baseline_peak_bytes)}"
        head = (
            f"**:x: VRAM: {len(failing)} of {len(records)} measurements failed "
            f"({', '.join(kinds)}){tail}** on {profiles}"
        )
    else:
        improved = sum(r.kind is Kind.IMPROVEMENT for r in records)
        extra = f", {improved} used less memory" if improved else ""
        head = (
            f"**:white_check_mark: VRAM: {len(records)} measurements within their "
            f"baselines{extra}** on {profiles}"
        )
    lines = [head]
    for r in failing:
        lines += ["", f"### `{_md(r.key)}`: {r.kind.value}", ""]
        base = r.baseline_peak_bytes
        figures = f"peak {format_size(r.peak_bytes)}"
        if base is not None:
            figures += f", baseline {format_size(base)}, {format_delta(r.peak_bytes, base)}"
        if r.budget is not None:
            figures += f", budget {format_size(r.budget)}"
        lines.append(figures)
        if r.breakdown:
            stored = (stores or {}).get(r.baseline_path, {}).get(r.key)
            grown = r.breakdown.get("grown") or []
            if stored is not None:
                grown = growth(r.breakdown, stored)
            if grown:
                lines += ["", "| grew | module (category) | was |", "| ---: | --- | ---: |"]
                for label, old, new in grown[:5]:
                    was = "new" if old == 0 else format_size(old)
                    lines.append(f"| +{format_size(new - old)} | `{_md(label)}` | {was} |")
            lines += ["", "| at the peak | module (category) |", "| ---: | --- |"]
            top = sorted(collapse(r.breakdown).items(), key=lambda kv: -kv[1])[:5]
            lines.extend(f"| {format_size(n)} | `{_md(label)}` |" for label, n in top)
    names = tuple(c for c in columns(records) if c != TIME_COLUMN)
    header = ("test", *names)
    lines += ["", f"<details><summary>All {len(records)} measurements</summary>", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(names) - 1) + [" --- "]) + "|")
    for r in records:
        cells = [f"`{r.key}`", *row_cells(r, names)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", "</details>"]
    if notes:
        lines += ["", *(f"- {_md(n)}" for n in notes)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- two runs


def comparison(changes: list[Change], old: Run, new: Run) -> str:
    """The comparison as Markdown: the changed keys in a table, the unchanged collapsed."""
    changed = [c for c in changes if c.status != "same"]
    same = [c for c in changes if c.status == "same"]
    lines = [f"## VRAM: {_label(new)} against {_label(old)}", ""]
    grew = [c for c in changed if c.status == "grew"]
    lines.append(
        f"**{len(grew)} grew**, {len(changed) - len(grew)} other changes, {len(same)} unchanged."
    )
    if changed:
        lines += ["", *_change_table(changed)]
    if same:
        lines += ["", f"<details><summary>{len(same)} unchanged</summary>", ""]
        lines += [*_change_table(same), "", "</details>"]
    return "\n".join(lines) + "\n"


def _label(run: Run) -> str:
    meta = run.meta or {}
    commit = str(meta.get("commit") or "")[:10]
    return f"`{run.label}`" + (
        f" ({meta.get('branch', '')} {commit})".replace("( ", "(") if commit else ""
    )


def _change_table(changes: list[Change]) -> list[str]:
    lines = ["| test | old | new | delta | |", "| --- | ---: | ---: | ---: | --- |"]
    for c in changes:
        old = "-" if c.old is None else format_size(c.old)
        new = "-" if c.new is None else format_size(c.new)
        lines.append(f"| `{_md(c.key)}` | {old} | {new} | {c.delta} | {c.status} |")
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|")
