"""Compiled workloads at realistic size: estimate vs ``cuda``, on one GPU machine.

Runs every workload of ``tests/vram/compiled_workloads.py`` through
:class:`pytest_vram.measure.meter.Meter`, as the plugin does, on each backend, each
workload on each backend in a fresh process (the two backends of a workload side by side):

* ``cuda``: the real GPU, under ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, with
  a fresh Inductor cache directory (no FX graph, autotuning or ``pad_mm`` result from an
  earlier run);
* ``estimate``: fake tensors with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``), so the
  estimator emulates the card exactly as on CI's CPU-only machine.

Per workload, after ``torch._dynamo.reset()``: the build (model, compile), the first
call (which compiles: on the GPU it also allocates for the compiler), then the measured
call, the steady state (the figure; docs/usage.md, "Compiled code"). Also recorded: each
side's wrappers, summarised (how many ``empty_strided_cuda``, ``# reuse`` and ``del`` lines,
and a hash of those lines, paths and kernel names aside: equal hashes mean the same
allocation program), the GPU's ``pad_mm`` decisions (written as the estimator's table,
``pad_mm_sm<NN>.json.gz``, for ``pytest_vram/backends/estimate/kernels/data/``), and the
GPU's device and Triton driver properties (to check ``backends/cards.py``).

Prints the table and writes ``compile_accuracy.json`` (small: figures, hashes, versions,
errors, seconds) and ``compile_accuracy.md`` (the table) under ``--out`` after every
workload, and the ``pad_mm`` table where the GPU made decisions; ``--budget-s`` bounds the
whole run (about 200 s on an H200 for all of them);
``--dump-wrappers`` also writes every wrapper's source to ``--out``/wrappers.

    # on the H200 (torch with its bundled triton), everything:
    python benchmarks/compile_accuracy.py --out "$OUT"
    # a few workloads, and the wrappers to diff:
    python benchmarks/compile_accuracy.py --only gpt2-train-adamw --dump-wrappers --out "$OUT"
    # on a CPU-only machine, the estimates alone:
    python benchmarks/compile_accuracy.py --backends estimate --out cpu

``scripts/gpu_check.sh OUT compile`` runs the first. Figures: docs/estimator.md,
"Compiled models".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))

JSON_NAME = "compile_accuracy.json"
MARKDOWN_NAME = "compile_accuracy.md"
_ALLOCATION_LINE = re.compile(r"empty_strided_cuda\(|# reuse|^\s*del buf|alloc_from_pool\(")
_NAMES = re.compile(r"triton_\w+|/[\w/.-]+\.py|[0-9a-f]{16,}")


# -- one backend, in its own process ------------------------------------------------------
@contextlib.contextmanager
def _wrappers() -> Iterator[list[str]]:
    """The source of every module Inductor loads while compiling (its wrappers)."""
    from torch._inductor.codecache import PyCodeCache

    load = PyCodeCache.load_by_key_path.__func__
    found: list[str] = []

    def load_by_key_path(cls: Any, key: str, path: str, *args: Any, **kwargs: Any) -> Any:
        found.append(Path(path).read_text())
        return load(cls, key, path, *args, **kwargs)

    PyCodeCache.load_by_key_path = classmethod(load_by_key_path)
    try:
        yield found
    finally:
        PyCodeCache.load_by_key_path = classmethod(load)


def _summary(sources: list[str]) -> dict[str, Any]:
    """The allocation program of some wrappers, comparable across machines."""
    lines = [
        _NAMES.sub("_", line.strip())
        for source in sources
        for line in source.splitlines()
        if _ALLOCATION_LINE.search(line)
    ]
    return {
        "wrappers": len(sources),
        "empty_strided_cuda": sum("empty_strided_cuda(" in line for line in lines),
        "reuse": sum("# reuse" in line for line in lines),
        "del": sum(line.startswith("del buf") for line in lines),
        "hash": hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16],
    }


def _measure_one(backend: Any, name: str, size: str, dump: Path | None) -> dict[str, Any]:
    import torch
    from compiled_workloads import WORKLOADS

    from pytest_vram.measure.meter import Meter

    workload = WORKLOADS[name]
    torch._dynamo.reset()
    torch.manual_seed(0)
    meter = Meter(backend)
    started = time.perf_counter()
    with _wrappers() as sources, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter.start()
        state = meter.build(workload.build, size, backend.device)
        meter.run(workload.work, state, size, backend.device, name="first")
        compiled_s = time.perf_counter() - started
        meter.run(workload.work, state, size, backend.device, name="steady")
        del state
        leaked = meter.finish()
    first, steady = meter.measurements
    if dump is not None:
        for i, source in enumerate(sources):
            (dump / f"{name}.{backend.name}.{i}.py").write_text(source)
    ours = sorted(
        {
            f"{type(w.message).__name__}: {w.message}"[:300]
            for w in caught
            if type(w.message).__module__.startswith("pytest_vram")
        }
    )
    return {
        "model_bytes": steady.model_bytes,
        "peak_bytes": steady.peak_bytes,
        "first_model_bytes": first.model_bytes,
        "first_peak_bytes": first.peak_bytes,
        "leaked_bytes": leaked,
        "wrappers": _summary(sources),
        "warnings": ours,
        "seconds_to_first_result": round(compiled_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _device_properties() -> dict[str, Any]:
    """What the GPU reports that the estimator emulates (backends/cards.py)."""
    import torch

    props = torch.cuda.get_device_properties()
    found = {
        name: getattr(props, name)
        for name in dir(props)
        if not name.startswith("_") and isinstance(getattr(props, name), (int, str, float))
    }
    try:
        from triton.runtime.driver import driver

        found["triton_driver"] = dict(driver.active.utils.get_device_properties(0))
    except Exception as exc:  # noqa: BLE001 - a diagnostic
        found["triton_driver"] = f"{type(exc).__name__}: {exc}"
    return found


def measure_all(
    backend_name: str, names: list[str], size: str, budget_s: float, dump: Path | None
) -> dict[str, Any]:
    import torch

    from pytest_vram.backends import create
    from pytest_vram.backends.estimate.kernels import pad_mm

    backend = create(backend_name)
    backend.warmup()
    results: dict[str, Any] = {}
    decisions: dict[str, bool] = {}
    deadline = time.monotonic() + budget_s
    for name in names:
        if time.monotonic() > deadline:
            results[name] = {"error": "skipped: --budget-s reached"}
            continue
        recording = pad_mm.recording() if backend_name == "cuda" else contextlib.nullcontext({})
        try:
            with recording as found:
                results[name] = _measure_one(backend, name, size, dump)
            decisions.update(found)
        except Exception as exc:  # noqa: BLE001 - recorded, the next workload runs
            results[name] = {
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"{backend_name:8} {name:40} {results[name]}", file=sys.stderr, flush=True)
    data: dict[str, Any] = {
        "context": backend.context(),
        "torch": torch.__version__,
        "results": results,
    }
    for package in ("triton", "transformers"):
        try:
            data[package] = __import__(package).__version__
        except ImportError:
            data[package] = None
    if backend_name == "cuda":
        data["device_properties"] = _device_properties()
        data["pad_mm"] = decisions
    return data


# -- the driver ---------------------------------------------------------------------------
def _env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    if backend == "cuda":
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cache-")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _start(backend: str, name: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    """One workload on one backend, in a fresh process (no compiled code, cache, or
    allocator state of another workload)."""
    cmd = [sys.executable, __file__, "--child", backend, "--size", args.size, "--only", name]
    cmd += ["--budget-s", str(args.budget_s), "--out", args.out]
    if args.dump_wrappers:
        cmd.append("--dump-wrappers")
    return subprocess.Popen(
        cmd, env=_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def _collect(proc: subprocess.Popen[str], backend: str, timeout: float) -> dict[str, Any]:
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return {"error": "stopped: --budget-s reached", "stderr": stderr[-4000:], "results": {}}
    sys.stderr.write(stderr[-20000:])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr": stderr[-4000:], "results": {}}
    data = json.loads(stdout.strip().splitlines()[-1])
    data["alloc_conf"] = _env(backend).get("PYTORCH_CUDA_ALLOC_CONF", "")
    return data


def run_all(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """Workload by workload, each backend in a process of its own, the backends of one
    workload side by side (the estimate runs on the CPU, the GPU's figure is its own);
    the JSON and Markdown are rewritten after each workload, so a run cut short keeps what
    it measured."""
    out = Path(args.out)
    backends = [b for b in args.backends.split(",") if b]
    data: dict[str, Any] = {"names": names, "size": args.size, "runs": {}}
    for backend in backends:
        data["runs"][backend] = {"results": {}}
    deadline = time.monotonic() + args.budget_s
    for name in names:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for backend in backends:
                data["runs"][backend]["results"][name] = {"error": "skipped: --budget-s reached"}
            continue
        procs = {backend: _start(backend, name, args) for backend in backends}
        for backend, proc in procs.items():
            child = _collect(proc, backend, deadline - time.monotonic())
            run = data["runs"][backend]
            result = child.pop("results", {}).get(name)
            if result is None:
                result = {k: child[k] for k in ("error", "stderr") if k in child}
            run["results"][name] = result
            if "error" not in child:
                decisions = {**run.get("pad_mm", {}), **child.pop("pad_mm", {})}
                run.update(child)
                if backend == "cuda":
                    run["pad_mm"] = decisions
        (out / JSON_NAME).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        (out / MARKDOWN_NAME).write_text(render(data))
    return data


def _diff(est: Any, real: Any) -> str:
    if not isinstance(est, int) or not isinstance(real, int) or not real:
        return "n/a"
    return f"{est - real:+,} B ({(est - real) / real * 100:+.3f}%)"


def _cell(result: dict[str, Any], key: str) -> str:
    value = result.get(key)
    return f"{value:,}" if isinstance(value, int) else ""


def _seconds(result: dict[str, Any]) -> str:
    value = result.get("seconds")
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _row(name: str, real: dict[str, Any], est: dict[str, Any]) -> str:
    notes = []
    for side, result in (("cuda", real), ("estimate", est)):
        error = result.get("error")
        if error is None:
            continue
        mode = re.search(r"torch\.compile\([^)]*\)", error)
        if error.startswith("EstimateUnsupported") and mode:
            notes.append(f"{side} refuses {mode.group(0)}")
        else:
            notes.append(f"{side}: {error.split(': ', 1)[-1][:100]}".replace("|", "/"))
    if "wrappers" in real and "wrappers" in est:
        same = real["wrappers"]["hash"] == est["wrappers"]["hash"]
        notes.append("wrappers " + ("identical" if same else "differ"))
    notes += [w.split(":", 1)[0] for w in est.get("warnings", [])]
    return (
        f"| {name} | {_cell(real, 'model_bytes')} | {_cell(est, 'model_bytes')} | "
        f"{_cell(real, 'peak_bytes')} | {_cell(est, 'peak_bytes')} | "
        f"{_diff(est.get('peak_bytes'), real.get('peak_bytes'))} | "
        f"{_cell(real, 'first_peak_bytes')} | {_seconds(real)} / {_seconds(est)} | "
        f"{'; '.join(notes)} |"
    )


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    cuda, est = runs.get("cuda", {}), runs.get("estimate", {})
    lines = [
        "| workload | cuda model | estimate model | cuda peak | estimate peak | peak "
        "difference | cuda first call | seconds cuda / estimate | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in data["names"]:
        real = cuda.get("results", {}).get(name, {"error": cuda.get("error", "not run")})
        guess = est.get("results", {}).get(name, {"error": est.get("error", "not run")})
        lines.append(_row(name, real, guess))
    lines += [
        "",
        f"size {data['size']}; cuda: torch {cuda.get('torch')}, triton {cuda.get('triton')}, "
        f"transformers {cuda.get('transformers')}, {cuda.get('context', {}).get('device')}, "
        f"PYTORCH_CUDA_ALLOC_CONF={cuda.get('alloc_conf')!r}; estimate: torch "
        f"{est.get('torch')}, triton {est.get('triton')}, transformers "
        f"{est.get('transformers')}, {est.get('context', {}).get('device')}. Peaks: the "
        "steady-state call (the second); first call: the one that compiles.",
    ]
    return "\n".join(lines) + "\n"


def _write_pad_mm_table(out: Path, data: dict[str, Any]) -> None:
    cuda = data["runs"].get("cuda", {})
    decisions = cuda.get("pad_mm")
    properties = cuda.get("device_properties") or {}
    if not decisions or "major" not in properties:
        return
    from pytest_vram.backends.estimate.kernels import pad_mm

    capability = (properties["major"], properties["minor"])
    source = (
        f"benchmarks/compile_accuracy.py on {properties.get('name')}, torch "
        f"{cuda.get('torch')}, triton {cuda.get('triton')}, size {data['size']}"
    )
    pad_mm.write_table(out / pad_mm.table_name(capability), decisions, source)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--backends", default="cuda,estimate")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--size", default="realistic", choices=("small", "realistic"))
    parser.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        help="the whole run: workloads not started by then are listed as skipped, a "
        "process still running then is stopped",
    )
    parser.add_argument("--dump-wrappers", action="store_true")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from compiled_workloads import WORKLOADS

    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        dump = out / "wrappers" if args.dump_wrappers else None
        if dump is not None:
            dump.mkdir(exist_ok=True)
        print(json.dumps(measure_all(args.child, names, args.size, args.budget_s, dump)))
        return 0
    data = run_all(args, names)
    _write_pad_mm_table(out, data)
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
