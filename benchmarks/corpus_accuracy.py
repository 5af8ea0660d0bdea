"""The ecosystem corpus at realistic size (100M to 1B parameters): estimate vs ``cuda``.

Runs every workload of ``tests/vram/corpus_workloads.py`` at size ``realistic`` through
:class:`pytest_vram.measure.meter.Meter`, as the plugin does, once per backend, each backend in a
subprocess of its own (so one backend's allocations and imports cannot touch the other's):

* ``cuda``: the real GPU, under ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (the
  history-independent figure; set here unless the variable is already set);
* ``estimate``: fake tensors with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``), so the
  estimator emulates the CUDA runtime exactly as on CI's CPU-only machine.

Writes ``corpus_accuracy.json`` (every figure, the torch versions, failures with their
traceback) and ``corpus_accuracy.md`` (the table) under ``--out``,
and, on a GPU, ``conv_bn_trace.json``: every allocation and free of a conv + batch-norm
forward and backward (``torch.cuda.memory._record_memory_history``), to model cuDNN's
workspaces.

    # on the H200, everything (about 3 minutes):
    python benchmarks/corpus_accuracy.py --out "$OUT"
    # on a CPU-only machine, the estimates alone:
    python benchmarks/corpus_accuracy.py --backends estimate --out cpu

Figures: docs/results/estimator-accuracy.md (raw: docs/data/estimator-accuracy/corpus.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))

JSON_NAME = "corpus_accuracy.json"
MD_NAME = "corpus_accuracy.md"
TRACE_NAME = "conv_bn_trace.json"


# -- one backend, in its own process --------------------------------------------------------
def measure_all(backend_name: str, names: list[str], budget_s: float) -> dict[str, Any]:
    import torch
    from corpus_workloads import EXTRA_WORKLOADS, WORKLOADS

    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    backend = create(backend_name)
    backend.warmup()
    results: dict[str, Any] = {}
    deadline = time.monotonic() + budget_s
    for name in names:
        if time.monotonic() > deadline:
            results[name] = {"error": "skipped: --budget-s reached"}
            continue
        workload = {**WORKLOADS, **EXTRA_WORKLOADS}[name]
        meter = Meter(backend)
        started = time.perf_counter()
        try:
            torch.manual_seed(0)
            meter.start()
            model = meter.build(workload.build, "realistic", backend.device)
            out = meter.run(workload.work, model, "realistic", backend.device)
            del model, out
            leaked = meter.finish()
            record = meter.measurements[0]
            results[name] = {
                "params": record.params,
                "model_bytes": record.model_bytes,
                "peak_bytes": record.peak_bytes,
                "leaked_bytes": leaked,
                "seconds": round(time.perf_counter() - started, 2),
            }
        except Exception as exc:  # noqa: BLE001 - recorded, the next workload runs
            results[name] = {
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"{backend_name:8} {name:45} {results[name]}", file=sys.stderr, flush=True)
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "context": backend.context(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "results": results,
    }


def conv_bn_trace(path: Path) -> None:
    """Record every allocation of a conv + batch-norm forward/backward on the GPU."""
    import torch
    import torch.nn as nn

    if not torch.cuda.is_available():
        return
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
    ).cuda()
    x = torch.randn(32, 64, 56, 56, device="cuda", requires_grad=True)
    model(x).sum().backward()  # warm up cuDNN's algorithm choice and the cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    for dtype in (torch.float32, torch.float16):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            model(x).sum().backward()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = []
    for trace in snapshot["device_traces"]:
        for e in trace:
            frames = [
                f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']}:{f['name']}"
                for f in e.get("frames", [])[:6]
            ]
            events.append({"action": e["action"], "size": e["size"], "frames": frames})
    path.write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "cudnn": torch.backends.cudnn.version(),
                "input": [32, 64, 56, 56],
                "events": events,
            },
            indent=1,
        )
        + "\n"
    )


# -- the driver --------------------------------------------------------------------------------
def _child(
    backend: str, names: list[str], budget_s: float, estimate_sees_gpu: bool = False
) -> dict[str, Any]:
    env = dict(os.environ)
    if backend == "cuda":
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    elif not estimate_sees_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        backend,
        "--budget-s",
        str(budget_s),
        "--only",
        ",".join(names),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    sys.stderr.write(proc.stderr[-20000:])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-4000:], "results": {}}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["alloc_conf"] = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return data


def _diff(est: Any, real: Any) -> str:
    if not isinstance(est, int) or not isinstance(real, int) or not real:
        return "n/a"
    return f"{est - real:+,} B ({(est - real) / real * 100:+.4f}%)"


def _result(run: dict[str, Any], name: str, backend: str) -> dict[str, Any]:
    """One workload's figures; a backend whose whole run failed reports that per row."""
    if "error" in run:
        return {"error": f"{backend} run: {run['error']}"}
    return run.get("results", {}).get(name, {})


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    cuda = runs.get("cuda", {})
    est = runs.get("estimate", {})
    lines = [
        "| workload | params | cuda model | estimate model | model difference | cuda peak | "
        "estimate peak | peak difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in data["names"]:
        r = _result(cuda, name, "cuda")
        e = _result(est, name, "estimate")
        if "error" in r or "error" in e:
            why = (r.get("error") or e.get("error") or "")[:120].replace("|", "/")
            lines.append(f"| {name} | | | | | | | failed: {why} |")
            continue
        lines.append(
            f"| {name} | {e.get('params') or r.get('params') or ''} | "
            f"{r.get('model_bytes', '')} | {e.get('model_bytes', '')} | "
            f"{_diff(e.get('model_bytes'), r.get('model_bytes'))} | "
            f"{r.get('peak_bytes', '')} | {e.get('peak_bytes', '')} | "
            f"{_diff(e.get('peak_bytes'), r.get('peak_bytes'))} |"
        )
    lines += [
        "",
        f"cuda: torch {cuda.get('torch')}, transformers {cuda.get('transformers')}, "
        f"{cuda.get('context', {}).get('device')}, "
        f"PYTORCH_CUDA_ALLOC_CONF={cuda.get('alloc_conf')!r}; estimate: torch "
        f"{est.get('torch')}, transformers {est.get('transformers')}, "
        f"{est.get('context', {}).get('device')}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--backends", default="cuda,estimate")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workload names (also those of EXTRA_WORKLOADS, e.g. "
        "gpt2-generate, llama-generate, which the default run leaves out)",
    )
    parser.add_argument("--budget-s", type=float, default=150.0, help="per backend")
    parser.add_argument(
        "--estimate-sees-gpu",
        action="store_true",
        help="run the estimate side with the GPU visible (fake tensors, no CUDA emulation: "
        "torch's own kernel choices), instead of hidden as on a CPU-only machine",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from corpus_workloads import WORKLOADS

    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    if args.child:
        print(json.dumps(measure_all(args.child, names, args.budget_s)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"names": names, "runs": {}}
    for backend in args.backends.split(","):
        data["runs"][backend] = _child(backend, names, args.budget_s, args.estimate_sees_gpu)
        (out / JSON_NAME).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    (out / MD_NAME).write_text(render(data))
    if "cuda" in args.backends:
        try:
            conv_bn_trace(out / TRACE_NAME)
        except Exception:  # noqa: BLE001 - a diagnostic; the table is written already
            (out / TRACE_NAME).write_text(json.dumps({"error": traceback.format_exc()}))
    print((out / MD_NAME).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
