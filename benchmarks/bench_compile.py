"""Compile time is not memory: the estimate of a compiled step against the compile itself.

For each compiled workload of ``tests/vram/compiled_workloads.py`` (the Inductor ones, at
CI's ``small`` size unless ``--size`` says otherwise), in fresh processes on this machine:

* ``cpu``: the workload compiled for real on the CPU (Inductor's C++ backend, a fresh
  cache directory): the build, the first call (which compiles) and the second call; the
  compile is the first call less the second;
* ``estimate``: the same workload on the estimate backend, as the plugin runs it
  (:class:`pytest_vram.measure.meter.Meter`): the build and first call (which compiles for
  the emulated card: Dynamo, AOTAutograd, Inductor's code generation, its wrapper replayed
  on fake tensors), then the measured steady-state call.

The ratio that matters is the estimate's build and first call over the CPU's compile: what
a vram test of a compiled step costs beyond the compile a user's own run pays anyway.

    python benchmarks/bench_compile.py --out OUT           # all, small size
    python benchmarks/bench_compile.py --only gpt2-train-adamw --out OUT

Writes ``bench_compile.json`` and ``bench_compile.md`` under ``--out``. Figures:
docs/results/compile-time.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))

#: Inductor's workloads (the eager and aot_eager backends compile nothing; reduce-overhead
#: is refused by the estimate)
NAMES = (
    "mlp-train-inductor",
    "mlp-inference",
    "optimizer-step-adamw",
    "gpt2-inference",
    "gpt2-train-adamw",
    "gpt2-dynamic-lengths",
    "llama-block-sdpa-gqa-bf16-train",
    "resnet-train-sgd-momentum",
)


def _cpu(name: str, size: str) -> dict[str, Any]:
    import torch
    from compiled_workloads import WORKLOADS

    workload = WORKLOADS[name]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    state = workload.build(size, "cpu")
    t1 = time.perf_counter()
    workload.work(state, size, "cpu")
    t2 = time.perf_counter()
    workload.work(state, size, "cpu")
    t3 = time.perf_counter()
    return {
        "build_s": t1 - t0,
        "first_s": t2 - t1,
        "steady_s": t3 - t2,
        "compile_s": (t2 - t1) - (t3 - t2),
        "compile_threads": torch._inductor.config.compile_threads,
    }


def _estimate(name: str, size: str) -> dict[str, Any]:
    import torch
    from compiled_workloads import WORKLOADS

    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    workload = WORKLOADS[name]
    backend = create("estimate")
    backend.warmup()
    torch.manual_seed(0)
    meter = Meter(backend)
    meter.start()
    t0 = time.perf_counter()
    state = meter.build(workload.build, size, backend.device)
    t1 = time.perf_counter()
    meter.run(workload.work, state, size, backend.device, name="first")
    t2 = time.perf_counter()
    meter.run(workload.work, state, size, backend.device, name="steady")
    t3 = time.perf_counter()
    del state
    meter.finish()
    return {
        "build_s": t1 - t0,
        "first_s": t2 - t1,
        "steady_s": t3 - t2,
        "peak_bytes": meter.measurements[1].peak_bytes,
    }


def _child(side: str, name: str, size: str) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-cache-"))
    cmd = [sys.executable, __file__, "--child", side, "--only", name, "--size", size]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def render(data: dict[str, Any]) -> str:
    lines = [
        "| workload | cpu compile (s) | cpu step (s) | estimate build + first call (s) | "
        "estimate step (s) | estimate / compile |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, sides in data["results"].items():
        cpu, est = sides.get("cpu", {}), sides.get("estimate", {})
        if "error" in cpu or "error" in est:
            error = (cpu.get("error") or est.get("error") or "").strip().splitlines()[-1:]
            lines.append(f"| {name} | error: {' '.join(error)[:120]} | | | | |")
            continue
        first = est["build_s"] + est["first_s"]
        compile_s = cpu["build_s"] + cpu["compile_s"]
        lines.append(
            f"| {name} | {compile_s:.1f} | {cpu['steady_s']:.3f} | {first:.1f} | "
            f"{est['steady_s']:.3f} | {first / compile_s:.2f} |"
        )
    v = data["versions"]
    lines += [
        "",
        f"size {data['size']}; torch {v['torch']}, triton {v['triton']}, transformers "
        f"{v['transformers']}, Python {v['python']}, {v['machine']}. cpu compile: the build "
        "and the first call less the second (Inductor's C++ backend); estimate: the build "
        "and the first call on the estimate backend (which compiles for the emulated card).",
    ]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version()}
    for package in ("torch", "triton", "transformers"):
        try:
            found[package] = __import__(package).__version__
        except ImportError:
            found[package] = None
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    found["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {model}"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--size", default="small", choices=("small", "realistic"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(NAMES)
    if args.child:
        run = _cpu if args.child == "cpu" else _estimate
        print(json.dumps(run(names[0], args.size)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"size": args.size, "versions": _versions(), "results": {}}
    for name in names:
        sides = ("cpu", "estimate")
        data["results"][name] = {side: _child(side, name, args.size) for side in sides}
        print(name, data["results"][name], file=sys.stderr, flush=True)
        (out / "bench_compile.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "bench_compile.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
