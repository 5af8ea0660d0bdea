"""Where the time of ``pytest -m vram`` goes, per session phase and per test phase.

Runs the memory suite once in a fresh process with ``benchmarks/phase_timer.py`` loaded,
and writes ``phase_profile.json`` (every figure) and ``phase_profile.md`` (the tables for
docs/suite.md) under ``--out``. Extra arguments go to pytest.

    python benchmarks/phase_profile.py --out docs/data/cpu            # this machine
    CI=true python benchmarks/phase_profile.py --out "$OUT" -- -rx     # a GPU runner
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "pytest setup",
    "setup: vram start (gc, empty cache)",
    "build",
    "run",
    "benchmark rounds",
    "pytest call",
    "pytest teardown",
    "teardown: vram finish (gc, leak check)",
    "gc (inside the above)",
    "total",
)


def _group(nodeid: str) -> str:
    return nodeid.split("::")[0].rsplit("/", 1)[-1]


def render(data: dict) -> str:
    lines = [f"`{data['command']}`: {data['wall_s']:.1f} s wall; {data['where']}", ""]
    lines += ["| session phase | seconds |", "|---|---:|"]
    for name, seconds in data["session"].items():
        lines.append(f"| {name} | {seconds:.2f} |")
    lines += ["", "Per test phase, summed over the tests of each file (seconds):", ""]
    groups: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    counts: collections.Counter[str] = collections.Counter()
    for nodeid, phases in data["tests"].items():
        g = _group(nodeid)
        counts[g] += 1
        for phase, seconds in phases.items():
            groups[g][phase] += seconds
    header = "| file | tests | " + " | ".join(PHASES) + " |"
    lines += [header, "|---|---:|" + "---:|" * len(PHASES)]
    for g in sorted(groups, key=lambda g: -groups[g].get("total", 0.0)):
        cells = " | ".join(f"{groups[g].get(p, 0.0):.2f}" for p in PHASES)
        lines.append(f"| {g} | {counts[g]} | {cells} |")
    lines += [
        "",
        "`pytest setup`/`call`/`teardown` are pytest's own phase durations; the `vram` rows "
        "are inside them (start in setup; build, run and benchmark rounds in call; finish "
        "in teardown); `gc` is the garbage collection inside start and finish; `total` is "
        "each test's whole run protocol.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        phases = Path(tmp) / "phases.json"
        env = dict(os.environ, VRAM_PHASES_OUT=str(phases))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")) if p
        )
        command = [sys.executable, "-m", "pytest", "-m", "vram", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "phase_timer", *args.pytest_args]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if not phases.exists():
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            return done.returncode or 1
        data = json.loads(phases.read_text())
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        version = torch.__version__
    except ImportError:
        gpu, version = None, None
    data.update(
        command="pytest " + " ".join(command[3:]),
        wall_s=wall,
        exit=done.returncode,
        summary=done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "",
        where=f"torch {version}, {gpu or f'CPU only, {os.cpu_count()} cores'}, "
        f"Python {platform.python_version()}",
    )
    (args.out / "phase_profile.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "phase_profile.md").write_text(render(data))
    print(render(data))
    print(data["summary"])
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
