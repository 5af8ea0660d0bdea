"""How long it takes to put each real model on the GPU: ours against the report's way.

Ours: ``model_zoo.build_model(preset, phase, device=..., dtype=float16)``, i.e. the module
tree on the meta device, ``to_empty`` on the target device, seeded init there. Timed until
the device is idle, one warm-up and then the median of ``--repeats`` runs.

The report's way: build in FP32 on the CPU (PyTorch's init on the host), then
``.half().to(device)``. Timed once per preset and phase, since it is slow (tens of seconds
and ~12 GB of host memory for the 3.08B model).

Usage on the GPU machine (writes bench_build.json and bench_build.md to --out)::

    python benchmarks/bench_build.py                       # all real presets
    python benchmarks/bench_build.py --device cpu --presets tiny   # smoke check, no GPU

Figures: docs/results/model-build.md (raw: docs/data/model-build/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere: model_zoo lives at the repository root, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model_zoo  # noqa: E402
from model_zoo.model import LanguageModel  # noqa: E402

OURS = "meta + to_empty + init on device"
REPORTS = "FP32 on CPU, then .half().to(device)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drop everything the last build left, so each run starts from the same state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_bytes(device: torch.device) -> tuple[int | None, int | None]:
    """(allocated, peak allocated) on a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)


def host_max_rss_gib() -> float:
    """The process's host-memory high-water mark so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_ours(preset: str, phase: str, device: torch.device, dtype: torch.dtype) -> dict:
    free(device)
    start = time.perf_counter()
    model = model_zoo.build_model(preset, phase, device=device, dtype=dtype)
    synchronize(device)
    seconds = time.perf_counter() - start
    allocated, peak = device_bytes(device)
    del model
    free(device)
    return {"seconds": seconds, "model_bytes": allocated, "peak_bytes": peak}


def time_reports_way(preset: str, phase: str, device: torch.device, dtype: torch.dtype) -> dict:
    free(device)
    start = time.perf_counter()
    # Default dtype and device: FP32 on the CPU, initialised there, as the report's script.
    model = LanguageModel(model_zoo.get_config(preset), phase)
    model = model.to(dtype).to(device)  # .half() when dtype is float16
    synchronize(device)
    seconds = time.perf_counter() - start
    allocated, peak = device_bytes(device)
    del model
    free(device)
    return {
        "seconds": seconds,
        "model_bytes": allocated,
        "peak_bytes": peak,
        "host_max_rss_gib": host_max_rss_gib(),
    }


def bench(args: argparse.Namespace) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = []
    for preset in args.presets:
        for phase in args.phases:
            parameters = model_zoo.count_parameters(preset, phase)
            time_ours(preset, phase, device, dtype)  # warm-up: CUDA context, kernels, allocator
            runs = [time_ours(preset, phase, device, dtype) for _ in range(args.repeats)]
            seconds = [r["seconds"] for r in runs]
            results.append(
                {
                    "preset": preset,
                    "phase": phase,
                    "method": OURS,
                    "parameters": parameters,
                    "seconds_median": statistics.median(seconds),
                    "seconds_all": seconds,
                    "model_bytes": runs[-1]["model_bytes"],
                    "peak_bytes": runs[-1]["peak_bytes"],
                }
            )
            print(f"{preset:>9} {phase} ours: {statistics.median(seconds):.3f} s", flush=True)
            if phase in args.report_phases:
                run = time_reports_way(preset, phase, device, dtype)
                results.append(
                    {
                        "preset": preset,
                        "phase": phase,
                        "method": REPORTS,
                        "parameters": parameters,
                        "seconds_median": run["seconds"],
                        "seconds_all": [run["seconds"]],
                        "model_bytes": run["model_bytes"],
                        "peak_bytes": run["peak_bytes"],
                        "host_max_rss_gib": run["host_max_rss_gib"],
                    }
                )
                print(f"{preset:>9} {phase} report's way: {run['seconds']:.3f} s", flush=True)
    return results


def environment(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
        "cpu_count": os.cpu_count(),
        "dtype": args.dtype,
        "repeats": args.repeats,
    }


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.3f}"


def markdown(results: list[dict], env: dict) -> str:
    """One row per preset and phase: our median, the report's single run, the speed-up."""
    lines = [
        f"torch {env['torch']}, {env['device']}, {env['dtype']}, "
        f"ours = median of {env['repeats']} after one warm-up, report's way = one run.",
        "",
        "| preset | phase | parameters | ours (s) | report's way (s) | speed-up "
        "| model GiB (ours) | peak GiB (ours) | host max RSS GiB (report's way) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["preset"], r["phase"], r["method"]): r for r in results}
    for r in results:
        if r["method"] != OURS:
            continue
        theirs = by_key.get((r["preset"], r["phase"], REPORTS))
        theirs_s = f"{theirs['seconds_median']:.3f}" if theirs else "-"
        speedup = f"{theirs['seconds_median'] / r['seconds_median']:.1f}x" if theirs else "-"
        rss = f"{theirs['host_max_rss_gib']:.1f}" if theirs else "-"
        lines.append(
            f"| {r['preset']} | {r['phase']} | {r['parameters']:,} | {r['seconds_median']:.3f} "
            f"| {theirs_s} | {speedup} | {_gib(r['model_bytes'])} | {_gib(r['peak_bytes'])} "
            f"| {rss} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(model_zoo.REAL_PRESETS),
        choices=list(model_zoo.PRESETS),
    )
    parser.add_argument(
        "--phases", nargs="+", default=list(model_zoo.PHASES), choices=model_zoo.PHASES
    )
    parser.add_argument(
        "--report-phases",
        nargs="*",
        default=["phase7"],
        choices=model_zoo.PHASES,
        help="phases also built the report's way (slow); none to skip",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = environment(args)
    results = bench(args)
    table = markdown(results, env)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_build.json").write_text(
        json.dumps({"environment": env, "results": results}, indent=2) + "\n"
    )
    (args.out / "bench_build.md").write_text(table)
    print(f"wrote {args.out / 'bench_build.json'} and {args.out / 'bench_build.md'}")


if __name__ == "__main__":
    main()
