"""Runs over time: compare two runs, write a PR comment, feed github-action-benchmark, chart.

A *run* is a ``--vram-json`` file, or a baseline file (``baselines/estimate.yaml``), or a
baseline file as committed on a branch (``git:main:baselines/estimate.yaml``, read with
``git show``). Everything here works on plain dicts; only :func:`chart` needs matplotlib.
Used by ``python -m pytest_vram`` (see :mod:`pytest_vram.__main__`) and, for
``--vram-markdown``, by the plugin.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pytest_vram import attribution
from pytest_vram.units import format_delta, format_size


class RunError(ValueError):
    """A run file that cannot be read; the message names it and the fix."""


@dataclasses.dataclass
class Run:
    """The measurements of one run: key -> {peak_bytes, model_bytes, ...}."""

    label: str
    measurements: dict[str, dict[str, Any]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_run(spec: str) -> Run:
    """A ``--vram-json`` file, a baseline YAML file, or ``git:REF:PATH``."""
    if spec.startswith("git:"):
        ref, _, path = spec[4:].partition(":")
        if not ref or not path:
            raise RunError(f"{spec}: expected git:REF:PATH, e.g. git:main:baselines/estimate.yaml")
        try:
            text = subprocess.run(
                ["git", "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RunError(f"{spec}: git show {ref}:{path} failed: {detail.strip()}") from None
        return _parse(spec, text, yaml_file=not path.endswith(".json"))
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise RunError(f"{spec}: cannot read it ({exc.strerror})") from None
    return _parse(spec, text, yaml_file=not spec.endswith(".json"))


def _parse(label: str, text: str, yaml_file: bool) -> Run:
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RunError(f"{label}: not valid {'YAML' if yaml_file else 'JSON'}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("measurements"), list):
        measurements = {m["key"]: m for m in data["measurements"] if "key" in m}
        return Run(label, measurements, data.get("run") or {})
    if isinstance(data, dict) and isinstance(data.get("entries"), dict):
        entries = {k: {"key": k, **v} for k, v in data["entries"].items() if isinstance(v, dict)}
        return Run(label, entries, {"recorded_with": data.get("recorded_with", {})})
    raise RunError(
        f"{label}: neither a --vram-json file (with 'measurements') nor a baseline file "
        f"(with 'entries')"
    )


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: int | None
    new: int | None

    @property
    def status(self) -> str:
        if self.old is None:
            return "new"
        if self.new is None:
            return "gone"
        return "grew" if self.new > self.old else "shrank" if self.new < self.old else "same"

    @property
    def delta(self) -> str:
        if self.old is None or self.new is None:
            return "-"
        return format_delta(self.new, self.old)


def compare(old: Run, new: Run) -> list[Change]:
    """Peak changes per key: grown first (most first), then shrunk, new, gone, unchanged."""
    keys = sorted(set(old.measurements) | set(new.measurements))
    changes = [
        Change(k, _peak(old.measurements.get(k)), _peak(new.measurements.get(k))) for k in keys
    ]
    order = {"grew": 0, "shrank": 1, "new": 2, "gone": 3, "same": 4}

    def rank(c: Change) -> tuple[int, int, str]:
        size = abs((c.new or 0) - (c.old or 0)) if c.old is not None and c.new is not None else 0
        return order[c.status], -size, c.key

    return sorted(changes, key=rank)


def _peak(m: dict[str, Any] | None) -> int | None:
    return None if m is None else int(m["peak_bytes"])


def table(changes: list[Change], width: int = 80) -> list[str]:
    """The comparison for a terminal, at most ``width`` columns (keys shortened)."""
    rows = [
        [
            "-" if c.old is None else format_size(c.old),
            "-" if c.new is None else format_size(c.new),
            c.delta,
            c.status,
        ]
        for c in changes
    ]
    head = ["old", "new", "delta", ""]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    from pytest_vram.report import _shorten

    keys = [c.key for c in changes]
    files = {k.split("::", 1)[0] for k in keys}
    prefix = ""
    if len(files) == 1 and all("::" in k for k in keys) and max(map(len, keys)) > width - 50:
        prefix = next(iter(files)) + "::"
    longest = max([4, *(len(k) - len(prefix) for k in keys)])
    key_width = max(20, min(longest, width - sum(widths) - 8))

    def line(key: str, cells: list[str]) -> str:
        figures = "  ".join(c.rjust(w) for c, w in zip(cells[:3], widths, strict=False))
        return f"{_shorten(key, key_width).ljust(key_width)}  {figures}  {cells[3]}".rstrip()

    lines = [f"{prefix[:-2]}:"] if prefix else []
    lines.append(line("test", head))
    lines.extend(line(c.key[len(prefix) :], r) for c, r in zip(changes, rows, strict=True))
    counts = {s: sum(c.status == s for c in changes) for s in ("grew", "shrank", "new", "gone")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f", of {len(changes)}")
    return lines


def markdown(changes: list[Change], old: Run, new: Run) -> str:
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


# --------------------------------------------------------------------------- PR comment


def comment(
    measurements: list[dict[str, Any]],
    stores: dict[str, dict[str, dict[str, int]]] | None = None,
    notes: list[str] | None = None,
) -> str:
    """A PR comment: a one-line verdict, failures first with their top modules (and, with a
    stored breakdown, what grew), every measurement collapsed in ``<details>``."""
    from pytest_vram.report import COLUMNS, Record, _cells

    records = [Record.from_dict(m) for m in measurements]
    failing = [r for r in records if r.fails]
    kinds = sorted({r.verdict for r in failing})
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
        improved = sum(r.verdict == "improvement" for r in records)
        extra = f", {improved} used less memory" if improved else ""
        head = (
            f"**:white_check_mark: VRAM: {len(records)} measurements within their "
            f"baselines{extra}** on {profiles}"
        )
    lines = [head]
    for r in failing:
        lines += ["", f"### `{_md(r.key)}`: {r.verdict}", ""]
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
                grown = attribution.growth(r.breakdown, stored)
            if grown:
                lines += ["", "| grew | module (category) | was |", "| ---: | --- | ---: |"]
                for label, old, new in grown[:5]:
                    was = "new" if old == 0 else format_size(old)
                    lines.append(f"| +{format_size(new - old)} | `{_md(label)}` | {was} |")
            lines += ["", "| at the peak | module (category) |", "| ---: | --- |"]
            top = sorted(attribution.collapse(r.breakdown).items(), key=lambda kv: -kv[1])[:5]
            lines.extend(f"| {format_size(n)} | `{_md(label)}` |" for label, n in top)
    header = ("test", *COLUMNS)
    lines += ["", f"<details><summary>All {len(records)} measurements</summary>", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(COLUMNS) - 1) + [" --- "]) + "|")
    for r in records:
        cells = [f"`{r.key}`", *_cells(r)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", "</details>"]
    if notes:
        lines += ["", *(f"- {_md(n)}" for n in notes)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- benchmarks


def benchmark_json(run: Run) -> str:
    """github-action-benchmark's ``customSmallerIsBetter`` input: one entry per peak."""
    entries = [
        {
            "name": key,
            "unit": "bytes",
            "value": int(m["peak_bytes"]),
            "extra": f"model {m.get('model_bytes')} B; profile {m.get('profile', '?')}",
        }
        for key, m in sorted(run.measurements.items())
    ]
    return json.dumps(entries, indent=2) + "\n"


def chart(runs: list[Run], path: Path, baseline: Run | None = None) -> None:
    """Horizontal bars of peak per test, one bar per run (and the baseline), to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RunError("the chart needs matplotlib: pip install 'pytest-vram[plot]'") from None
    if baseline is None:  # a --vram-json file carries the baselines it was judged against
        recorded = {
            k: {"peak_bytes": m["baseline_peak_bytes"]}
            for k, m in runs[0].measurements.items()
            if m.get("baseline_peak_bytes") is not None
        }
        baseline = Run("baseline", recorded) if recorded else None
    series = ([baseline] if baseline else []) + runs
    keys = sorted({k for r in series for k in r.measurements})
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * len(keys) * len(series)), dpi=100)
    mib = 1024**2
    for i, run in enumerate(series):
        values = [run.measurements.get(k, {}).get("peak_bytes", 0) / mib for k in keys]
        ys = [y + i * height for y in range(len(keys))]
        ax.barh(ys, values, height=height, label=run.label)
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(keys))])
    ax.set_yticklabels([k.split("::", 1)[-1] for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak allocated (MiB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
