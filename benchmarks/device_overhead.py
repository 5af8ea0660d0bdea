"""What a "fits on an N GiB GPU" budget must add to a test's figures, measured on a GPU.

A test's ``peak_bytes`` counts what its tensors occupy and ``reserved_bytes`` what the
caching allocator mapped for them; neither includes what the process holds before the
first test: the CUDA context (driver, kernels, cuBLAS/cuDNN handles) and the persistent
workspaces the warm-up allocates. This prints and saves (``--out DIR``,
``device_overhead.json``) those figures on this machine:

    python benchmarks/device_overhead.py --out "$OUT"

Figures: docs/results/device-overhead.md (raw: docs/data/device-overhead-h200.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    import torch

    from pytest_vram.backends import create

    free0, total = torch.cuda.mem_get_info()  # creates the context
    backend = create("cuda")
    free1, _ = torch.cuda.mem_get_info()
    backend.warmup()
    torch.cuda.synchronize()
    free2, _ = torch.cuda.mem_get_info()
    figures = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "total_bytes": total,
        # used by this process (and any other on the GPU) once the context exists
        "used_after_context_bytes": total - free0,
        "used_after_backend_bytes": total - free1,
        "used_after_warmup_bytes": total - free2,
        "allocated_after_warmup_bytes": torch.cuda.memory_allocated(),
        "reserved_after_warmup_bytes": torch.cuda.memory_reserved(),
        "context_and_libraries_bytes": (total - free2) - torch.cuda.memory_reserved(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_overhead.json").write_text(json.dumps(figures, indent=1) + "\n")
    for key, value in figures.items():
        shown = f"{value:,} B ({value / 2**20:.1f} MiB)" if isinstance(value, int) else value
        print(f"{key:32s} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
