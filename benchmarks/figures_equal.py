"""Whether every measurement of a ``--vram-json`` report equals its baseline to the byte.

    python benchmarks/figures_equal.py report.json [report2.json ...]

Prints each measurement whose model or peak bytes differ from the baseline it was judged
against, and a count; exits 1 if any differs: the check that a change meant to leave the
figures alone (a faster estimator, a refactoring, ``-n 2``) did.
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    differ = 0
    for path in paths:
        compared = 0
        with open(path) as f:
            measurements = json.load(f)["measurements"]
        for m in measurements:
            base = (m.get("baseline_model_bytes"), m.get("baseline_peak_bytes"))
            if base[1] is None:
                continue
            compared += 1
            if base != (m["model_bytes"], m["peak_bytes"]):
                differ += 1
                print(
                    f"{path}: {m.get('nodeid')} {m.get('name') or ''}: baseline {base}, "
                    f"now {(m['model_bytes'], m['peak_bytes'])}"
                )
        print(f"{path}: {compared} measurements compared with their baselines")
    print(f"{differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
