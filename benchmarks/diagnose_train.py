"""Per-operator allocation log of one workload, real (``cuda``) or estimated, to diff them.

For each (preset, phase) pair it builds the model and runs the workload the way
:class:`pytest_vram.measure.Meter` does (fresh pool, model built, peak reset, workload), and
records for every operator the workload dispatches

* its name and the allocator's counters before and after it (allocated bytes, number of
  allocations and frees so far) and the peak during it;
* on ``cuda``: the allocator's own trace (``torch.cuda.memory._record_memory_history``):
  every segment allocation, block allocation and free with address and size, so that each
  allocation can be attributed to the operator during which it happened (by count), and
  the allocator's state (segments, blocks) can be rebuilt at any point, e.g. the peak;
* on ``estimate``: the same events from the allocator model (address, requested and block
  size).

Output: one gzipped JSON per pair and backend in ``--out`` (default ``$OUT``), e.g.
``diag-standard-phase7-train-cuda.json.gz``. Compare with ``--compare A B``, which prints
the first operators where the two logs disagree and the events around the peak.

    # GPU machine
    python benchmarks/diagnose_train.py --backend cuda --pairs standard/phase7 --out "$OUT"
    # here
    python benchmarks/diagnose_train.py --backend estimate --pairs standard/phase7 --out diag
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS = {"train": ("train_step", 512), "inference": ("inference", 512)}


# -- real GPU ---------------------------------------------------------------------------
def _cuda_counts(torch: Any) -> tuple[int, int, int, int]:
    s = torch.cuda.memory_stats()
    return (
        s["allocated_bytes.all.current"],
        s["allocation.all.allocated"],
        s["allocation.all.freed"],
        s["segment.all.allocated"],
    )


def run_cuda(preset: str, phase: str, workload: str) -> dict[str, Any]:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import model_zoo
    from pytest_vram.backends import create

    backend = create("cuda")
    backend.warmup()
    fn_name, seq_len = WORKLOADS[workload]
    ops: list[list[Any]] = []

    class OpLog(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            before = _cuda_counts(torch)
            torch.cuda.reset_peak_memory_stats()
            out = func(*args, **(kwargs or {}))
            peak = torch.cuda.max_memory_allocated()
            after = _cuda_counts(torch)
            ops.append([str(func), *before, *after, peak])
            return out

    def segments(snap: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "address": seg["address"],
                "total_size": seg["total_size"],
                "pool": seg["segment_type"],
                "stream": seg["stream"],
                "blocks": [[b["size"], b["requested_size"], b["state"]] for b in seg["blocks"]],
            }
            for seg in snap["segments"]
        ]

    gc.collect()
    backend.begin_test()
    start = backend.allocated()
    # The pool as the test finds it (persistent workspaces survive empty_cache), then the
    # allocator's trace from here on: the build and the workload.
    segments_start = segments(torch.cuda.memory._snapshot())
    counts_history = _cuda_counts(torch)
    torch.cuda.memory._record_memory_history(
        enabled="all", context=None, stacks="python", clear_history=True
    )
    model = model_zoo.build_model(preset, phase, device=backend.device)
    torch.cuda.synchronize()
    model_bytes = backend.allocated() - start
    counts_run = _cuda_counts(torch)
    backend.reset_peak()
    with OpLog():
        result = getattr(model_zoo, fn_name)(model, seq_len=seq_len)
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = [
        [e["action"], e["addr"], e["size"], e.get("stream", 0)]
        for e in snap["device_traces"][0]
        if e["action"] != "snapshot"
    ]
    segments_end = segments(snap)
    del model, result
    gc.collect()
    peak_ops = max((op[-1] for op in ops), default=0) - start
    return {
        "backend": "cuda",
        "torch": torch.__version__,
        "start": start,
        "model_bytes": model_bytes,
        "peak_bytes_oplog": peak_ops,
        "counts_history": counts_history,
        "counts_run": counts_run,
        "ops": ops,
        "trace": trace,
        "segments_start": segments_start,
        "segments_end": segments_end,
    }


# -- estimate ------------------------------------------------------------------------------
def run_estimate(preset: str, phase: str, workload: str) -> dict[str, Any]:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import model_zoo
    from pytest_vram.backends import create
    from pytest_vram.backends.estimate import allocator as _allocator
    from pytest_vram.measure import Meter

    backend = create("estimate")
    backend.warmup()
    fn_name, seq_len = WORKLOADS[workload]
    events: list[list[Any]] = []
    ops: list[list[Any]] = []
    stack: list[str] = []
    # The estimator allocates an operator's outputs just after the fake kernel returns:
    # events outside any kernel belong to the operator that finished last.
    state: dict[str, Any] = {"on": False, "last": "-"}

    model_cls = _allocator.CachingAllocatorModel
    orig_malloc, orig_free = model_cls.malloc, model_cls.free
    orig_dispatch = FakeTensorMode.__torch_dispatch__

    def malloc(self: Any, nbytes: int) -> Any:
        block = orig_malloc(self, nbytes)
        if state["on"] and block is not None:
            op = stack[-1] if stack else state["last"]
            events.append(["alloc", block.addr, nbytes, block.size, self.allocated, op])
        return block

    def free(self: Any, block: Any) -> None:
        if state["on"] and block is not None:
            op = stack[-1] if stack else state["last"]
            events.append(["free", block.addr, 0, block.size, self.allocated - block.size, op])
        orig_free(self, block)

    def dispatch(self: Any, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not state["on"]:
            return orig_dispatch(self, func, types, args, kwargs)
        alloc = backend._allocator
        before = (alloc.allocated, len(events))
        stack.append(str(func))
        try:
            return orig_dispatch(self, func, types, args, kwargs)
        finally:
            state["last"] = stack.pop()
            ops.append([str(func), before[0], before[1], alloc.allocated, len(events)])

    model_cls.malloc, model_cls.free = malloc, free  # type: ignore[method-assign]
    FakeTensorMode.__torch_dispatch__ = dispatch  # type: ignore[method-assign]
    try:
        meter = Meter(backend)
        meter.start()
        model = meter.build(model_zoo.build_model, preset, phase, device=backend.device)
        state["on"] = True
        result = meter.run(getattr(model_zoo, fn_name), model, seq_len=seq_len)
        state["on"] = False
        del model, result
        meter.finish()
    finally:
        model_cls.malloc, model_cls.free = orig_malloc, orig_free  # type: ignore[method-assign]
        FakeTensorMode.__torch_dispatch__ = orig_dispatch  # type: ignore[method-assign]
    record = meter.measurements[0]
    return {
        "backend": "estimate",
        "torch": torch.__version__,
        "model_bytes": record.model_bytes,
        "peak_bytes": record.peak_bytes,
        "ops": ops,
        "events": events,
    }


def _name(pair: str, workload: str, backend: str) -> str:
    return f"diag-{pair.replace('/', '-')}-{workload}-{backend}.json.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("cuda", "estimate"), default="cuda")
    parser.add_argument("--pairs", default="standard/phase7")
    parser.add_argument("--workload", default="train", choices=tuple(WORKLOADS))
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = run_cuda if args.backend == "cuda" else run_estimate
    for pair in args.pairs.split(","):
        preset, phase = pair.split("/")
        t0 = time.perf_counter()
        data = run(preset, phase, args.workload)
        data["pair"] = pair
        with gzip.open(out / _name(pair, args.workload, args.backend), "wt") as f:
            json.dump(data, f, separators=(",", ":"))
        peak = data.get("peak_bytes", data.get("peak_bytes_oplog"))
        print(
            f"{pair} {args.workload} {args.backend}: model {data['model_bytes']:,} "
            f"peak {peak:,} ops {len(data['ops'])} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
