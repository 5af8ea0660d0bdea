"""``--vram-artifacts DIR``: files to open after a failure, one directory per test.

* ``breakdown.txt``: what was live at each peak, by category, module and allocation site;
* ``memory.png``: allocated memory over the test's run (x: allocations and releases in
  order), the largest modules coloured, the peak marked; drawn with matplotlib, an optional
  extra (``pip install 'pytest-vram[plot]'``), offline;
* ``snapshot.pickle`` on the ``cuda`` backend: torch's memory snapshot, which opens in the
  PyTorch memory viewer (https://pytorch.org/memory_viz).

Made in the process that ran the test (an xdist worker too), while its collector lives;
:func:`contents` gives each file's bytes and :mod:`pytest_vram.store.artifacts` writes them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pytest_vram.core.records import Record
from pytest_vram.measure.attribution import Collector
from pytest_vram.measure.vram import Vram
from pytest_vram.render.breakdowns import text_report
from pytest_vram.render.plots import plot_timeline


def contents(nodeid: str, probe: Vram, records: list[Record]) -> dict[str, bytes]:
    """The artefacts of one test: file name -> bytes."""
    meter = getattr(probe, "_meter", None)
    attrib = getattr(meter, "attribution", None)
    collector: Collector | None = getattr(attrib, "collector", None)
    text = _text(nodeid, probe, records, collector)
    made = {"breakdown.txt": text.encode("utf-8", "backslashreplace")}
    # matplotlib and torch write to a path: they draw into a private temporary directory,
    # and the bytes go to the artefacts directory the way every other file is written.
    with tempfile.TemporaryDirectory(prefix="pytest-vram-") as scratch:
        if collector is not None and collector.events:
            png = Path(scratch) / "memory.png"
            if plot_timeline(collector, nodeid, png):
                made["memory.png"] = png.read_bytes()
        snapshot = _dump_snapshot(Path(scratch) / "snapshot.pickle")
        if snapshot is not None:
            made["snapshot.pickle"] = snapshot.read_bytes()
    return made


def _text(nodeid: str, probe: Vram, records: list[Record], collector: Collector | None) -> str:
    parts = []
    for r in records:
        if r.breakdown:
            parts.append(text_report(r.key, r.breakdown))
    oom = getattr(probe, "out_of_memory", None)
    if oom is not None and oom.breakdown:
        title = f"{nodeid}: out of memory in {oom.step}"
        parts.append(text_report(title, oom.breakdown))
    if not parts:
        parts.append(
            f"{nodeid}: no breakdown was collected; run with --vram-attribution=on "
            f"(on the cuda backend it is off by default)\n"
        )
    if collector is not None and "matplotlib" not in sys.modules:
        try:
            import matplotlib  # noqa: F401  # only to say whether memory.png can be drawn
        except ImportError:
            parts.append("memory.png needs matplotlib: pip install 'pytest-vram[plot]'\n")
    return "\n".join(parts)


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
    import torch  # only on the cuda backend, which imported it already

    torch.cuda.memory._record_memory_history(max_entries=200_000)
    _recording.on = True


def stop_recording() -> None:
    if _recording.on:
        import torch  # only after start_recording, on the cuda backend, which imported it

        torch.cuda.memory._record_memory_history(enabled=None)
        _recording.on = False
