"""Which allocations a corpus workload leaves behind on the GPU, with the Python stack that
made them (a process-lifetime cache made during a build counts as the model's memory and
as a leak in the first test that makes it, and in no later one).

    python benchmarks/diagnose_leak.py llama-gqa-train-checkpointing-fused-adamw --size small
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("--size", default="small")
    args = parser.parse_args()
    import torch
    from corpus_workloads import WORKLOADS

    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    backend = create("cuda")
    backend.warmup()
    workload = WORKLOADS[args.workload]
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    meter = Meter(backend)
    meter.start()
    before = {
        b["address"]
        for s in torch.cuda.memory._snapshot()["segments"]
        for b in s["blocks"]
        if b["state"] == "active_allocated"
    }
    model = meter.build(workload.build, args.size, backend.device)
    out = meter.run(workload.work, model, args.size, backend.device)
    del model, out
    leaked = meter.finish()
    gc.collect()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    print(
        f"{args.workload}: model {meter.measurements[0].model_bytes} peak "
        f"{meter.measurements[0].peak_bytes} leaked {leaked}"
    )
    for seg in snap["segments"]:
        for block in seg["blocks"]:
            if block["state"] != "active_allocated" or block["address"] in before:
                continue
            print(f"live block {block['size']} B (requested {block['requested_size']}):")
            frames = block.get("frames", [])
            python = [f for f in frames if f["filename"].endswith(".py")]
            for frame in (python or frames)[:25]:
                print(f"    {frame['filename']}:{frame['line']} {frame['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
