"""Other people's scripts (``tests/vram/test_ordinary.py``): estimate vs ``cuda``, per test.

Runs the scripts as the memory job runs them, through pytest, once per backend, each in a
pytest process of its own:

* ``cuda``: the real GPU (``--vram-backend=cuda``), recording into a scratch baselines
  directory under ``--out`` (``--vram-update --vram-baselines=OUT/cuda-baselines``), so
  that the cuDNN workspaces of the convolutions it sees are recorded there too
  (docs/estimator.md, "Recorded convolution workspaces") and the repository is untouched;
* ``estimate``: the estimator with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``), as on
  CI's CPU-only machine, reading the repository's baselines directory (its committed
  workspaces);
* ``estimate-recorded``: the estimator again, reading the workspaces the ``cuda`` run has
  just recorded: what the estimate is once that file is committed.

``tests/vram/module_device_scripts.py`` (the device chosen at import) runs with them: as
it is on ``cuda``, with ``--vram-emulate=session`` on the estimator.

Writes ``ordinary_accuracy.json`` (every figure, the versions, each run's command, exit
status and output tail) and ``ordinary_accuracy.md`` (the table: bytes, difference, %)
under ``--out``. ``--budget-s`` bounds the whole run; a run that would start past it is
left out, and one still running at it is stopped (its figures so far are lost: pytest
writes ``--vram-json`` at its end).

    # on the H200 (about a minute):
    python benchmarks/ordinary_accuracy.py --out "$OUT" --budget-s 150
    # on a CPU-only machine, the estimates alone:
    python benchmarks/ordinary_accuracy.py --backends estimate --out cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "tests/vram/test_ordinary.py"
AT_IMPORT = "tests/vram/module_device_scripts.py"
JSON_NAME = "ordinary_accuracy.json"
MD_NAME = "ordinary_accuracy.md"
#: a run is not started with less than this left of the budget
MIN_RUN_S = 20.0

VERSIONS = """
import importlib.metadata as m, json, torch
out = {"torch": torch.__version__}
for name in ("transformers", "accelerate", "diffusers"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
if torch.cuda.is_available():
    out["card"] = torch.cuda.get_device_name()
    out["cudnn"] = torch.backends.cudnn.version()
print(json.dumps(out))
"""


def _pytest(out: Path, name: str, backend: str, files: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *files,
        f"--vram-backend={backend}",
        "--vram-no-strict",
        f"--vram-json={out / f'{name}.json'}",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-n",
        "0",
        "-q",
        "-rfE",
        *extra,
    ]


def plan(out: Path, backends: list[str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """The pytest runs: (name, command, environment changes)."""
    scratch = out / "cuda-baselines"
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    runs: list[tuple[str, list[str], dict[str, str]]] = []
    if "cuda" in backends:
        cmd = _pytest(
            out, "cuda", "cuda", [CORPUS, AT_IMPORT], "--vram-update", f"--vram-baselines={scratch}"
        )
        runs.append(("cuda", cmd, {}))
    if "estimate" in backends:
        runs.append(("estimate", _pytest(out, "estimate", "estimate", [CORPUS]), hidden))
        cmd = _pytest(out, "estimate-at-import", "estimate", [AT_IMPORT], "--vram-emulate=session")
        runs.append(("estimate-at-import", cmd, hidden))
        if "cuda" in backends:
            cmd = _pytest(
                out, "estimate-recorded", "estimate", [CORPUS], f"--vram-baselines={scratch}"
            )
            runs.append(("estimate-recorded", cmd, hidden))
    return runs


def execute(out: Path, backends: list[str], budget_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + budget_s
    runs: dict[str, Any] = {}
    versions = subprocess.run(
        [sys.executable, "-c", VERSIONS], capture_output=True, text=True, cwd=ROOT
    )
    data: dict[str, Any] = {
        "versions": json.loads(versions.stdout) if versions.returncode == 0 else versions.stderr,
        "budget_s": budget_s,
        "runs": runs,
    }
    for name, cmd, env_changes in plan(out, backends):
        left = deadline - time.monotonic()
        run: dict[str, Any] = {"command": " ".join(cmd), "env": env_changes}
        runs[name] = run
        if left < MIN_RUN_S:
            run["error"] = f"not started: {left:.0f} s of --budget-s left"
            continue
        (out / f"{name}.json").unlink(missing_ok=True)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                env={**os.environ, **env_changes},
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=left,
            )
            run["exit"] = proc.returncode
            run["output_tail"] = (proc.stdout + proc.stderr)[-6000:]
        except subprocess.TimeoutExpired:
            run["error"] = f"stopped at --budget-s after {time.monotonic() - started:.0f} s"
        run["seconds"] = round(time.monotonic() - started, 1)
        report = out / f"{name}.json"
        if report.exists():
            run["figures"] = figures(json.loads(report.read_text()))
        elif "error" not in run:
            run["error"] = f"pytest exited {run['exit']} without writing {report.name}"
        status = run.get("error") or f"exit {run.get('exit')}"
        print(f"{name}: {status} in {run['seconds']} s", flush=True)
    return data


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Per measurement key: model and peak bytes, the verdict, the backend's context."""
    out: dict[str, Any] = {}
    for m in report.get("measurements", []):
        key = m["key"].split("/")[-1]
        out[key] = {
            "model_bytes": m.get("model_bytes"),
            "peak_bytes": m.get("peak_bytes"),
            "verdict": m.get("verdict"),
            "context": m.get("context", {}),
        }
    for e in report.get("errors", []):
        key = str(e.get("key") or e.get("nodeid") or "").split("/")[-1]
        if key:
            out.setdefault(key, {"error": str(e)[:500]})
    return out


def _diff(est: Any, real: Any) -> str:
    if not isinstance(est, int) or not isinstance(real, int) or not real:
        return "n/a"
    return f"{est - real:+,} B ({(est - real) / real * 100:+.4f}%)"


def _figure(run: dict[str, Any], key: str, field: str) -> Any:
    return run.get("figures", {}).get(key, {}).get(field)


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    cuda = runs.get("cuda", {})
    est = {**runs.get("estimate", {}).get("figures", {})}
    est.update(runs.get("estimate-at-import", {}).get("figures", {}))
    estimate = {"figures": est}
    recorded = runs.get("estimate-recorded", {})
    keys = sorted({*cuda.get("figures", {}), *est})
    lines = [
        "| test | cuda model | estimate model | model difference | cuda peak | estimate peak "
        "| peak difference | peak difference, recorded workspaces |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    exact = 0
    for key in keys:
        cells = [key.replace("|", "/")]
        for field in ("model_bytes", "peak_bytes"):
            real, guess = _figure(cuda, key, field), _figure(estimate, key, field)
            cells += [f"{real:,}" if real else "", f"{guess:,}" if guess else ""]
            cells.append(_diff(guess, real))
        cells.append(_diff(_figure(recorded, key, "peak_bytes"), _figure(cuda, key, "peak_bytes")))
        if all(
            _figure(cuda, key, f) is not None and _figure(cuda, key, f) == _figure(estimate, key, f)
            for f in ("model_bytes", "peak_bytes")
        ):
            exact += 1
        lines.append("| " + " | ".join(cells) + " |")
    v = data.get("versions", {})
    if isinstance(v, dict):
        lines += [
            "",
            f"{exact} of {len(keys)} measurements identical (model and peak bytes). "
            f"torch {v.get('torch')}, transformers {v.get('transformers')}, accelerate "
            f"{v.get('accelerate')}, diffusers {v.get('diffusers')}, card {v.get('card')}, "
            f"cuDNN {v.get('cudnn')}.",
        ]
    for name, run in runs.items():
        status = run.get("error") or f"exit {run.get('exit')}"
        lines.append(f"- `{name}`: {status}, {run.get('seconds', 0)} s: `{run['command']}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--backends", default="cuda,estimate")
    parser.add_argument("--budget-s", type=float, default=150.0, help="the whole run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = execute(out, args.backends.split(","), args.budget_s)
    (out / JSON_NAME).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    (out / MD_NAME).write_text(render(data))
    print((out / MD_NAME).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
