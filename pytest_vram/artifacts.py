"""``--vram-artifacts DIR``: files to open after a failure, one directory per test.

* ``breakdown.txt``: what was live at each peak, by category, module and allocation site;
* ``memory.png``: allocated memory over the test's run (x: allocations and releases in
  order), the largest modules coloured, the peak marked; drawn with matplotlib, an optional
  extra (``pip install 'pytest-vram[plot]'``), offline;
* ``snapshot.pickle`` on the ``cuda`` backend: torch's memory snapshot, which opens in the
  PyTorch memory viewer (https://pytorch.org/memory_viz).

Written in the process that ran the test (an xdist worker too), while its collector lives.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pytest_vram import attribution
from pytest_vram.attribution import Collector, pattern
from pytest_vram.units import format_size

#: Points drawn at most; longer runs are sampled (the peak is always kept).
MAX_POINTS = 4000
#: Modules coloured in the image; the rest is drawn as one grey band.
COLOURED = 8


def write(root: Path, nodeid: str, probe: Any, records: list[Any]) -> list[Path]:
    """Write the artefacts of one test; return the files written."""
    from pytest_vram.output import safe_name

    folder = root / safe_name(nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    meter = getattr(probe, "_meter", None)
    attrib = getattr(meter, "attribution", None)
    collector: Collector | None = getattr(attrib, "collector", None)
    written: list[Path] = []
    text = _text(nodeid, probe, records, collector)
    (folder / "breakdown.txt").write_text(text, encoding="utf-8")
    written.append(folder / "breakdown.txt")
    if collector is not None and collector.events:
        png = folder / "memory.png"
        if plot_timeline(collector, nodeid, png):
            written.append(png)
    snapshot = _dump_snapshot(folder / "snapshot.pickle")
    if snapshot is not None:
        written.append(snapshot)
    return written


def _text(nodeid: str, probe: Any, records: list[Any], collector: Collector | None) -> str:
    parts = []
    for r in records:
        if r.breakdown:
            parts.append(attribution.text_report(r.key, r.breakdown))
    oom = getattr(probe, "out_of_memory", None)
    if oom is not None and oom.breakdown:
        title = f"{nodeid}: out of memory in {oom.step}"
        parts.append(attribution.text_report(title, oom.breakdown))
    if not parts:
        parts.append(
            f"{nodeid}: no breakdown was collected; run with --vram-attribution=on "
            f"(on the cuda backend it is off by default)\n"
        )
    if collector is not None and "matplotlib" not in sys.modules:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parts.append("memory.png needs matplotlib: pip install 'pytest-vram[plot]'\n")
    return "\n".join(parts)


def timeline(collector: Collector) -> tuple[list[int], dict[str, list[int]], int]:
    """(event positions, bytes live per module label at each, position of the peak)."""
    labels = collector.labels()
    live: dict[int, tuple[int, str]] = {}
    totals: dict[str, int] = {}
    total, peak, peak_at = 0, -1, 0
    series: list[tuple[int, dict[str, int]]] = []
    step = max(1, len(collector.events) // MAX_POINTS)
    for i, (key, nbytes, _ctx) in enumerate(collector.events):
        if nbytes >= 0:
            if key not in live:
                label = labels[i]
                live[key] = (nbytes, label)
                totals[label] = totals.get(label, 0) + nbytes
                total += nbytes
        elif key in live:
            n, label = live.pop(key)
            totals[label] -= n
            total -= n
        if total > peak:
            peak, peak_at = total, i
            series.append((i, dict(totals)))
        elif i % step == 0:
            series.append((i, dict(totals)))
    series.sort(key=lambda p: p[0])
    xs = [x for x, _ in series]
    names = sorted({k for _, t in series for k in t})
    return xs, {k: [t.get(k, 0) for _, t in series] for k in names}, peak_at


def plot_timeline(collector: Collector, title: str, path: Path) -> bool:
    """Draw the timeline to ``path`` (PNG or SVG by suffix); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs, by_label, peak_at = timeline(collector)
    at_peak = {k: v[xs.index(peak_at)] for k, v in by_label.items()} if peak_at in xs else {}
    # What the peak is made of first, then what holds the most memory over the run.
    by_peak = sorted(by_label, key=lambda k: (-at_peak.get(k, 0), k))[: COLOURED // 2]
    by_area = sorted(by_label, key=lambda k: (-sum(by_label[k]), k))
    ranked = by_peak + [k for k in by_area if k not in by_peak]
    top = ranked[:COLOURED]
    rest = [sum(by_label[k][i] for k in ranked[COLOURED:]) for i in range(len(xs))]
    mib = 1024**2
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    stacks = [[v / mib for v in by_label[k]] for k in top] + [[v / mib for v in rest]]
    colours = [plt.get_cmap("tab10")(i) for i in range(len(top))] + ["#bbbbbb"]
    ax.stackplot(xs, *stacks, labels=[*top, "other"], colors=colours, step="post")
    peak = sum(by_label[k][xs.index(peak_at)] for k in by_label) if peak_at in xs else 0
    ax.axvline(peak_at, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"peak {format_size(peak)}",
        (peak_at, peak / mib),
        textcoords="offset points",
        xytext=(6, -12),
        fontsize=9,
    )
    ax.set_xlabel("allocations and releases, in order")
    ax.set_ylabel("allocated (MiB)")
    ax.set_title(title if len(title) < 90 else "..." + title[-87:], fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.margins(x=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _dump_snapshot(path: Path) -> Path | None:
    """torch's memory snapshot, when the cuda backend recorded history for this test."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not getattr(_recording, "on", False):
        return None
    torch.cuda.memory._dump_snapshot(str(path))
    return path


class _Recording:
    on = False


_recording = _Recording()


def start_recording() -> None:
    """Record the CUDA allocator's history (stacks included) for a snapshot."""
    import torch

    torch.cuda.memory._record_memory_history(max_entries=200_000)
    _recording.on = True


def stop_recording() -> None:
    import torch

    if _recording.on:
        torch.cuda.memory._record_memory_history(enabled=None)
        _recording.on = False


__all__ = ["pattern", "plot_timeline", "timeline", "write"]
