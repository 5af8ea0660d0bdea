"""How close the ``estimate`` backend comes to the real CUDA allocator, per model and workload.

For each (preset, phase) pair of the model zoo and each workload

* ``inference``  -- ``model_zoo.inference``, 512 tokens (the report's protocol)
* ``long``       -- ``model_zoo.inference``, 8192 tokens
* ``train``      -- ``model_zoo.train_step``, 512 tokens, FP16 model

it measures model and peak bytes with the ``cuda`` backend (real GPU) and the ``estimate``
backend (fake tensors), each through :class:`pytest_vram.measure.meter.Meter` exactly as the
plugin does, and writes ``estimate_accuracy.json`` and ``estimate_accuracy.md`` to
``--out`` (default ``$OUT``, else the current directory).

Robust and resumable: every measurement is written to the JSON as soon as it is done, a
failure (e.g. out of memory) is recorded and the next one runs, measurements already in the
JSON are skipped unless ``--force``, and ``--budget-s`` stops starting new ones in time.

    # on the GPU machine: real and estimate, everything
    python benchmarks/estimate_accuracy.py --out "$OUT"
    # on a CPU-only machine: estimates only, optionally next to a GPU run's real figures
    python benchmarks/estimate_accuracy.py --estimate-only --out cpu \
        --real-from gpu/estimate_accuracy.json

docs/results/estimator-accuracy.md compares the same pairs from the memory suite's own runs
on both backends (``--vram-json``); this script measures them outside pytest, with timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS: dict[str, tuple[str, int]] = {
    "inference": ("inference", 512),
    "long": ("inference", 8192),
    "train": ("train_step", 512),
}
JSON_NAME = "estimate_accuracy.json"
MD_NAME = "estimate_accuracy.md"


def measure(backend_name: str, preset: str, phase: str, workload: str) -> dict[str, Any]:
    """One measurement through the plugin's Meter; returns its figures and timings."""
    import model_zoo
    from pytest_vram.measure.meter import Meter

    backend = _backend(backend_name)
    fn_name, seq_len = WORKLOADS[workload]
    meter = Meter(backend)
    started = time.perf_counter()
    meter.start()
    model = meter.build(model_zoo.build_model, preset, phase, device=backend.device)
    built = time.perf_counter()
    result = meter.run(getattr(model_zoo, fn_name), model, seq_len=seq_len, name=workload)
    ran = time.perf_counter()
    del model, result
    leaked = meter.finish()
    record = meter.measurements[0]
    return {
        "params": record.params,
        "model_bytes": record.model_bytes,
        "peak_bytes": record.peak_bytes,
        "activation_bytes": record.activation_bytes,
        "reserved_bytes": record.reserved_bytes,
        "leaked_bytes": leaked,
        "context": record.context,
        "build_s": round(built - started, 3),
        "run_s": round(ran - built, 3),
    }


_BACKENDS: dict[str, Any] = {}


def _backend(name: str) -> Any:
    """One backend object per name, warmed up once (as the plugin does per process)."""
    if name not in _BACKENDS:
        from pytest_vram.backends import create

        backend = create(name)
        backend.warmup()
        _BACKENDS[name] = backend
    return _BACKENDS[name]


def _cleanup() -> None:
    """After a failure (out of memory): drop what the failed measurement left."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - cleanup must never raise
        pass


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"results": {}}


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _environment() -> dict[str, str]:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _pct(est: int, real: int) -> str:
    return f"{(est - real) / real * 100:+.3f}%" if real else "n/a"


def render(data: dict[str, Any], real_from: dict[str, Any] | None) -> str:
    """Markdown table: real vs estimated model and peak bytes, difference in bytes and %."""
    env = data.get("environment", {})
    lines = [
        "# Estimate accuracy",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(env.items())),
    ]
    if real_from is not None:
        renv = real_from.get("environment", {})
        lines.append("Real figures from: " + ", ".join(f"{k} {v}" for k, v in sorted(renv.items())))
    lines += [
        "",
        "| pair | workload | real model | est. model | real peak | est. peak "
        "| peak diff (B) | peak diff | real reserved | est. reserved | est. time |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in sorted(data["results"]):
        entry = data["results"][key]
        preset, phase, workload = key.split("/")
        real = entry.get("real")
        if real is None and real_from is not None:
            real = real_from.get("results", {}).get(key, {}).get("real")
        est = entry.get("estimate")
        cells = [f"{preset}-{phase}", workload]
        failed = entry.get("errors", {})
        for src, name in ((real, "cuda"), (est, "estimate")):
            missing = "FAILED" if name in failed else "-"
            cells.append(f"{src['model_bytes']:,}" if src else missing)
        for src in (real, est):
            cells.append(f"{src['peak_bytes']:,}" if src else "-")
        if real and est:
            diff = est["peak_bytes"] - real["peak_bytes"]
            cells += [f"{diff:+,}", _pct(est["peak_bytes"], real["peak_bytes"])]
        else:
            cells += ["-", "-"]
        for src in (real, est):
            reserved = src.get("reserved_bytes") if src else None
            cells.append(f"{reserved:,}" if reserved is not None else "-")
        cells.append(f"{est['build_s'] + est['run_s']:.2f} s" if est else "-")
        lines.append("| " + " | ".join(cells) + " |")
    errors = {k: v["errors"] for k, v in data["results"].items() if v.get("errors")}
    if errors:
        lines += ["", "## Errors", ""]
        for key, errs in sorted(errors.items()):
            for backend, msg in sorted(errs.items()):
                lines.append(f"- `{key}` ({backend}): {msg.splitlines()[-1][:300]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="output directory")
    parser.add_argument("--estimate-only", action="store_true", help="no GPU: estimates only")
    parser.add_argument("--real-from", help="JSON of a GPU run whose real figures to show")
    parser.add_argument("--presets", default="standard,deep,large,maximum")
    parser.add_argument("--phases", default="phase7,phase8")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--force", action="store_true", help="redo measurements already saved")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start nothing after this")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_NAME
    data = _load(json_path)
    data["environment"] = _environment()
    real_from = json.loads(Path(args.real_from).read_text()) if args.real_from else None
    backends = ["estimate"] if args.estimate_only else ["cuda", "estimate"]
    started = time.perf_counter()
    for workload in args.workloads.split(","):
        for preset in args.presets.split(","):
            for phase in args.phases.split(","):
                key = f"{preset}/{phase}/{workload}"
                entry = data["results"].setdefault(key, {})
                for backend in backends:
                    slot = "real" if backend == "cuda" else "estimate"
                    if slot in entry and not args.force:
                        continue
                    if time.perf_counter() - started > args.budget_s:
                        print(f"budget spent; not starting {key} ({backend})", flush=True)
                        continue
                    try:
                        entry[slot] = measure(backend, preset, phase, workload)
                        entry.get("errors", {}).pop(backend, None)
                        peak = entry[slot]["peak_bytes"]
                        print(f"{key:32s} {backend:8s} peak {peak:>14,}", flush=True)
                    except Exception:  # noqa: BLE001 - record and go on with the next one
                        msg = traceback.format_exc()
                        entry.setdefault("errors", {})[backend] = msg
                        print(f"{key:32s} {backend:8s} FAILED: {msg.splitlines()[-1]}", flush=True)
                        _cleanup()
                    _save(json_path, data)
    (out / MD_NAME).write_text(render(data, real_from))
    print((out / MD_NAME).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
