"""Wall time and peak host memory of the whole memory suite (``pytest -m vram``).

A benchmark, not a test: it runs the suite in a fresh subprocess, as a user would, and
prints one line per run plus a JSON summary. Extra arguments go to pytest.

    python benchmarks/bench_suite.py                  # this machine's default backend
    python benchmarks/bench_suite.py --runs 2 -- -n 2 # under xdist
    python benchmarks/bench_suite.py --out DIR        # also write DIR/bench_suite.json

Figures: docs/results/suite-speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pytest", "-m", "vram", "-q", "-p", "no:cacheprovider"]
    command += args.pytest_args
    runs = []
    for _ in range(args.runs):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        runs.append({"wall_s": round(wall, 1), "exit": done.returncode, "summary": summary})
        print(f"{wall:7.1f} s  exit {done.returncode}  {summary}", flush=True)
    # ru_maxrss of children: the largest resident set of any one pytest process (KiB).
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = {
        "command": " ".join(command[1:]),
        "runs": runs,
        "peak_rss_bytes": peak_rss,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        import torch

        result["torch"] = torch.__version__
        result["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_suite.json").write_text(json.dumps(result, indent=2) + "\n")
    return max(r["exit"] for r in runs)


if __name__ == "__main__":
    raise SystemExit(main())
