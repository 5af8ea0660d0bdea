"""What the command line costs on large runs: ``compare``, ``comment`` and ``chart`` on a
synthetic ``--vram-json`` file of N measurements, each command in a fresh interpreter (so
its time includes Python's start, the imports and reading and validating the input), with
its wall time and peak resident memory (``wait4``'s ``ru_maxrss``).

    python benchmarks/bench_cli.py --sizes 1000 20000 --out OUT_DIR  # writes bench_cli.json/.md

The runs are written as the plugin writes them (``render.json_report.document``), every
measurement with a breakdown of a few groups, like a run with attribution on. Wall time
depends on the machine: these are figures for the docs, never a timed test.
Figures: docs/results/cli-cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vram.core.records import Outcome, Record  # noqa: E402
from pytest_vram.core.units import Tolerance  # noqa: E402
from pytest_vram.core.verdicts import Kind, Verdict  # noqa: E402
from pytest_vram.render import json_report  # noqa: E402

MiB = 1024**2


def run_file(path: Path, n: int, grow: int) -> None:
    """A --vram-json file of ``n`` measurements; every 97th peak grew by ``grow`` bytes."""
    records = []
    for i in range(n):
        key = f"tests/test_big.py::test_case[{i:06d}]"
        base = 64 * MiB + 4096 * i
        peak = base + (grow if i % 97 == 0 else 0)
        breakdown = {
            "peak_bytes": peak,
            "groups": [["blocks.0.attn", "activations", peak // 2], ["lm_head", "parameters", 1]],
            "patterns": [["blocks.*.attn", "activations", peak // 2]],
            "sites": [],
        }
        records.append(
            Record(
                key=key,
                nodeid=key,
                name=None,
                profile="estimate",
                baseline_path="baselines/estimate.yaml",
                params=1000,
                model_bytes=MiB,
                peak_bytes=peak,
                setup={"backend": "estimate"},
                tolerance=Tolerance(),
                budget=None,
                baseline_model_bytes=MiB,
                baseline_peak_bytes=base,
                verdicts=(Verdict(Kind.REGRESSION if peak > base else Kind.PASS, peak > base),),
                breakdown=breakdown,
            )  # fmt: skip
        )
    path.write_text(json_report.document(Outcome(records=records)))


def measure(command: list[str], cwd: Path) -> dict[str, float]:
    """Wall time and peak RSS of ``python -m pytest_vram COMMAND`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_vram", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed: {err}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--write", nargs=3, help=argparse.SUPPRESS)  # N PATH GROW
    args = parser.parse_args()
    if args.write:
        n, path, grow = args.write
        run_file(Path(path), int(n), int(grow))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.sizes:
            # Written by another process: a child forked from one holding the records
            # would count their pages in its peak RSS.
            for name, grow in (("old.json", 0), ("new.json", 3 * MiB)):
                write = [sys.executable, __file__, "--write", str(n), str(work / name), str(grow)]
                subprocess.run(write, check=True)
            size = (work / "new.json").stat().st_size / MiB
            for name, command in (
                ("compare", ["compare", "old.json", "new.json", "--markdown", "cmp.md"]),
                ("comment", ["comment", "new.json", "-o", "comment.md"]),
                ("chart", ["chart", "old.json", "new.json", "-o", "chart.png"]),
            ):
                row = {"measurements": n, "file_mib": round(size, 1), "command": name}
                row.update(measure(command, work))
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    (args.out / "bench_cli.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = ["| measurements | file | command | wall | peak RSS |", "|---:|---:|---|---:|---:|"]
    lines += [
        f"| {r['measurements']:,} | {r['file_mib']} MiB | `{r['command']}` | {r['wall_s']} s "
        f"| {r['peak_rss_mib']:,} MiB |"
        for r in rows
    ]
    (args.out / "bench_cli.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
