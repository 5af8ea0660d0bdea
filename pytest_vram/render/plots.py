"""What images show, drawn with matplotlib (an optional extra: ``pip install
'pytest-vram[plot]'``): memory over one test's run (``--vram-artifacts``' ``memory.png``)
and the peak per test of several runs (``python -m pytest_vram chart``)."""

from __future__ import annotations

import heapq
import io
from pathlib import Path
from typing import Any

from pytest_vram.core.runs import Run
from pytest_vram.core.units import format_size
from pytest_vram.measure.attribution import Collector

#: Points drawn at most; longer runs are sampled (the peak is always kept).
MAX_POINTS = 4000
#: Modules coloured in the image; the rest is drawn as one grey band.
COLOURED = 8


class PlotError(ValueError):
    """An image that cannot be drawn; the message says why and the fix."""


def _pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive backend, None where it is not installed."""
    try:
        import matplotlib  # matplotlib on use: an optional extra, slow to import

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


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
    plt = _pyplot()
    if plt is None:
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


#: Tests a chart draws at most: thousands of bars are neither readable nor cheap to draw
#: (20,000 took minutes and gigabytes); the others are counted in the title.
MAX_TESTS = 60
#: The tallest image (at 100 dpi): Agg draws at most 65,536 pixels a side.
MAX_HEIGHT_INCHES = 600


def image_formats() -> dict[str, str] | None:
    """File suffix (``"png"``) -> description of the formats matplotlib writes; None
    without matplotlib."""
    if _pyplot() is None:
        return None
    from matplotlib.backend_bases import FigureCanvasBase  # matplotlib on use

    return dict(FigureCanvasBase.get_supported_filetypes())


def chart_keys(series: list[Run], max_tests: int = MAX_TESTS) -> tuple[list[str], int]:
    """The keys a chart of ``series`` shows (sorted) and how many there are in all: every
    key, or the ``max_tests`` whose peak changed most between the first and the last
    series (a key in only one of them by its whole peak), then the largest peaks."""
    keys: set[str] = set()
    for run in series:
        keys.update(run.measurements)
    if len(keys) <= max_tests:
        return sorted(keys), len(keys)
    first, last = series[0].measurements, series[-1].measurements

    def rank(key: str) -> tuple[int, int, str]:
        old, new = _peak(first.get(key)), _peak(last.get(key))
        change = abs(new - old) if old is not None and new is not None else (old or new or 0)
        return -change, -max(old or 0, new or 0), key

    return sorted(heapq.nsmallest(max_tests, keys, key=rank)), len(keys)


def _peak(measurement: dict[str, Any] | None) -> int | None:
    return None if measurement is None else int(measurement.get("peak_bytes", 0))


def chart(
    runs: list[Run], fmt: str, baseline: Run | None = None, max_tests: int = MAX_TESTS
) -> bytes:
    """Horizontal bars of peak per test, one bar per run (and the baseline), as an image
    in ``fmt`` (a suffix of :func:`image_formats`)."""
    plt = _pyplot()
    if plt is None:
        raise PlotError("the chart needs matplotlib: pip install 'pytest-vram[plot]'")
    if baseline is None:  # a --vram-json file carries the baselines it was judged against
        recorded = {
            k: {"peak_bytes": m["baseline_peak_bytes"]}
            for k, m in runs[0].measurements.items()
            if m.get("baseline_peak_bytes") is not None
        }
        baseline = Run("baseline", recorded) if recorded else None
    series = ([baseline] if baseline else []) + runs
    keys, total = chart_keys(series, max_tests)
    height = 0.8 / len(series)
    inches = min(1.2 + 0.35 * max(1, len(keys)) * len(series), MAX_HEIGHT_INCHES)
    fig, ax = plt.subplots(figsize=(10, inches), dpi=100)
    mib = 1024**2
    for i, run in enumerate(series):
        values = [(_peak(run.measurements.get(k)) or 0) / mib for k in keys]
        ys = [y + i * height for y in range(len(keys))]
        ax.barh(ys, values, height=height, label=_legend(run.label))
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(keys))])
    ax.set_yticklabels([_legend(k.split("::", 1)[-1]) for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak allocated (MiB)")
    if total > len(keys):
        ax.set_title(
            f"{len(keys)} of {total} tests: the largest peak changes "
            f"({_legend(series[0].label)} to {_legend(series[-1].label)})",
            fontsize=9,
        )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    try:
        fig.savefig(out, format=fmt)
    finally:
        plt.close(fig)
    return out.getvalue()


def _legend(text: str, limit: int = 60) -> str:
    # matplotlib reads "$...$" as mathtext, which raises on unbalanced or unknown commands.
    text = text.replace("$", r"\$")
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
