"""World size 1: the estimator's per-rank figures of sharded training against a real GPU.

For each case, one rank's build and training step (``model_zoo.train_step``, 512 tokens)
is measured twice through :class:`pytest_vram.measure.meter.Meter`, as the plugin does for a
test marked ``@pytest.mark.vram(world_size=1)``:

* ``real``: the ``cuda`` backend in a real one-rank NCCL process group (file store);
* ``estimate``: the ``estimate`` backend in a simulated (fake) one-rank world.

Cases: FSDP2 ``fully_shard`` of every block and the root (``tests/vram/test_sharded.py``'s
``build_sharded``) for ``standard`` (1.19B) and ``maximum`` (3.08B), both phases; DDP of
``standard``, both phases. Figures are written to ``sharded_accuracy.json`` under ``--out``
(default ``$OUT``) after every case, so a timeout keeps what was done.

    python benchmarks/sharded_accuracy.py --out "$OUT"

The CUDA allocator runs with ``expandable_segments:True`` unless ``PYTORCH_CUDA_ALLOC_CONF``
is set (the suite's measured figure), and ``NCCL_NVLS_ENABLE=0``. No figures of it are
published yet; ``tests/cuda/test_sharded_cuda.py`` asserts the same comparison on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "vram")]

JSON_NAME = "sharded_accuracy.json"
PHASES = ("phase7", "phase8")
CASES = [
    *((preset, phase, "fsdp2") for preset in ("standard", "maximum") for phase in PHASES),
    *(("standard", phase, "ddp") for phase in PHASES),
]


def build(preset: str, phase: str, wrap: str, device: str) -> Any:
    from test_sharded import build_sharded

    import model_zoo

    if wrap == "fsdp2":
        return build_sharded(preset, phase, device=device)
    from torch.nn.parallel import DistributedDataParallel

    model = model_zoo.build_model(preset, phase, device=device)
    ddp = DistributedDataParallel(model)
    ddp.config = model.config  # what train_step reads (vocabulary size)
    return ddp


def measure(backend: Any, preset: str, phase: str, wrap: str) -> dict[str, Any]:
    import model_zoo
    from pytest_vram.measure.meter import Meter
    from pytest_vram.pytest_plugin import world

    if backend.name == "estimate":
        scope = world.simulated(1, "sharded_accuracy")
    else:
        scope = world.world_of_one("sharded_accuracy")
    started = time.perf_counter()
    with scope:
        meter = Meter(backend)
        meter.start()
        model = meter.build(build, preset, phase, wrap, backend.device)
        meter.run(model_zoo.train_step, model, batch=1, seq_len=512)
        del model
    leaked = meter.finish()
    record = meter.measurements[0]
    return {
        "params": record.params,
        "model_bytes": record.model_bytes,
        "peak_bytes": record.peak_bytes,
        "leaked_bytes": leaked,
        "context": record.context,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--budget-s", type=float, default=170.0, help="start no case after")
    parser.add_argument("--backends", default="cuda,estimate", help="e.g. 'estimate' on a CPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from pytest_vram.backends import create

    backends = {}
    for name in args.backends.split(","):
        backends[name] = create(name)
        backends[name].warmup()
    data: dict[str, Any] = {
        "environment": {
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "PYTORCH_CUDA_ALLOC_CONF": os.environ["PYTORCH_CUDA_ALLOC_CONF"],
        },
        "results": {},
    }
    start = time.perf_counter()
    for preset, phase, wrap in CASES:
        if time.perf_counter() - start > args.budget_s:
            break
        case = f"{wrap}/{preset}/{phase}"
        result: dict[str, Any] = {}
        for name, backend in backends.items():
            try:
                result[name] = measure(backend, preset, phase, wrap)
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        real, est = result.get("cuda", {}), result.get("estimate", {})
        for field in ("model_bytes", "peak_bytes"):
            if field in real and field in est:
                result[f"{field}_diff"] = est[field] - real[field]
        data["results"][case] = result
        (out / JSON_NAME).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(case, {k: v for k, v in result.items() if k.endswith("_diff")}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
