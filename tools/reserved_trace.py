"""Record the caching allocator's trace of the zoo's measurements on a GPU, and replay it
through the estimator's allocator model: which reserved bytes the rules explain.

On the GPU (one process, expandable segments, the cuda backend's warm-up first):

    python tools/reserved_trace.py record --out "$OUT"        # writes reserved_trace.json.gz

It runs ``pytest -m vram tests/vram/test_zoo.py --vram-backend=cuda`` in this process with
``torch.cuda.memory._record_memory_history(context=None)`` (no stacks: small), and stores
the segments and blocks live after the warm-up (the persistent workspaces: the start
layout every test shares), and per test its allocator events (alloc, free, map, unmap:
action, address, size) and the figures it reported. Anywhere (no GPU needed):

    python tools/reserved_trace.py replay reserved_trace.json.gz

feeds each test's own request sequence through ``CachingAllocatorModel`` from an empty
pool and prints, per test, the GPU's reserved growth, the model's, and the model's when
it starts from the recorded layout's free mapped bytes. docs/architecture.md, "The
gated figure", says what the figure is and why this decides it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: trace actions kept, as stored (torch's names)
ACTIONS = ("alloc", "free_completed", "segment_map", "segment_unmap", "segment_alloc")


class _Marks:
    """A pytest plugin that records where each test's events start and end in the trace."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.tests: list[dict[str, Any]] = []

    def _count(self) -> int:
        return len(self.torch.cuda.memory._snapshot()["device_traces"][0])

    def pytest_runtest_setup(self, item: Any) -> None:
        self.tests.append({"nodeid": item.nodeid, "start": self._count()})

    def pytest_runtest_teardown(self, item: Any) -> None:
        self.tests[-1]["end"] = self._count()


def record(out: Path) -> int:
    import pytest
    import torch

    from pytest_vram.backends import create

    backend = create("cuda")
    backend.warmup()  # the persistent workspaces, before any test: the start layout
    torch.cuda.empty_cache()
    layout = [
        {
            "address": s["address"],
            "total_size": s["total_size"],
            "segment_type": s["segment_type"],
            "blocks": [(b["size"], b["state"]) for b in s["blocks"]],
        }
        for s in torch.cuda.memory._snapshot()["segments"]
    ]
    torch.cuda.memory._record_memory_history("all", context=None, max_entries=20_000_000)
    marks = _Marks(torch)
    figures = out / "zoo.json"
    code = pytest.main(
        [
            "-m",
            "vram",
            "-p",
            "no:randomly",
            "-q",
            "--vram-backend=cuda",
            f"--vram-json={figures}",
            "tests/vram/test_zoo.py",
        ],
        plugins=[marks],
    )
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    torch.cuda.memory._record_memory_history(None)
    tests = []
    for test in marks.tests:
        events = [
            (e["action"], e["addr"], e["size"])
            for e in trace[test["start"] : test.get("end", len(trace))]
            if e["action"] in ACTIONS
        ]
        tests.append({"nodeid": test["nodeid"], "events": events})
    data = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "layout_after_warmup": layout,
        "figures": json.loads(figures.read_text())["measurements"],
        "tests": tests,
    }
    path = out / "reserved_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"{path}: {len(tests)} tests, {path.stat().st_size} B")
    return int(code)


def _replay(events: list[list[Any]], layout: list[dict[str, Any]]) -> tuple[int, int]:
    """The model's peak reserved growth for one test's requests, and the GPU's.

    ``layout``: the blocks live after the warm-up, replayed first in address order (the
    persistent ones kept, the free ones released), so the model starts with the
    workspaces' pages and their free remainder (holes between mapped ranges are not
    reproduced)."""
    from pytest_vram.backends.estimate.allocator import CachingAllocatorModel

    model = CachingAllocatorModel()
    released = []
    for segment in sorted(layout, key=lambda s: s["address"]):
        for size, state in segment["blocks"]:
            block = model.malloc(size)
            if state != "active_allocated":
                released.append(block)
    for block in released:
        model.free(block)
    model.reset_peak()
    start = model.reserved
    live: dict[int, Any] = {}
    gpu = peak_gpu = 0
    for action, addr, size in events:
        if action == "alloc":
            live[addr] = model.malloc(size)
        elif action == "free_completed" and addr in live:
            model.free(live.pop(addr))
        elif action in ("segment_map", "segment_alloc"):
            gpu += size
            peak_gpu = max(peak_gpu, gpu)
        elif action == "segment_unmap":
            gpu -= size
    return model.peak_reserved - start, peak_gpu


def replay(path: Path) -> int:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    layout = data["layout_after_warmup"]
    free = sum(size for s in layout for size, state in s["blocks"] if state == "inactive")
    print(f"{data['device']}, torch {data['torch']}; free in the workspaces' pages: {free:,d}")
    print(f"{'test':70s} {'gpu':>14s} {'model':>14s} {'model+layout':>14s}")
    for test in data["tests"]:
        empty, gpu = _replay(test["events"], [])
        seeded, _ = _replay(test["events"], layout)
        print(f"{test['nodeid'][-70:]:70s} {gpu:14,d} {empty:14,d} {seeded:14,d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--out", default=os.environ.get("OUT", "."))
    rep = sub.add_parser("replay")
    rep.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "record":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return record(out)
    return replay(Path(args.path))


if __name__ == "__main__":
    raise SystemExit(main())
