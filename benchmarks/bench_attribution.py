"""The cost of attribution (``--vram-attribution``): wall time with and without it, and
that the figures are the same either way.

For each (preset, phase, workload) it runs, in one process as the plugin would,
``Meter.start/build/run/finish`` ``--repeat`` times with attribution off and on, alternating,
and records the median wall time of each, the figures (model, peak; they must be equal),
and what the breakdown names at the peak. Writes ``attribution.json`` and prints a table.

    python benchmarks/bench_attribution.py --backend estimate --out /tmp/attr
    python benchmarks/bench_attribution.py --backend cuda --out $OUT/attribution   # H200

Never used as a timed test: wall time depends on the machine. Figures:
docs/results/attribution-cost.md (raw: docs/data/attribution-cost/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="estimate", choices=("estimate", "cuda"))
    parser.add_argument("--presets", default="tiny,standard")
    parser.add_argument("--phases", default="phase7,phase8")
    parser.add_argument("--workloads", default="inference,train_step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", required=True, help="directory for attribution.json")
    args = parser.parse_args(argv)

    import torch

    import model_zoo
    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter
    from pytest_vram.render import breakdowns as attribution

    backend = create(args.backend)
    backend.warmup()
    dtype = torch.float16
    rows = []
    for preset in args.presets.split(","):
        for phase in args.phases.split(","):
            for workload in args.workloads.split(","):
                work = getattr(model_zoo, workload)
                times: dict[bool, list[float]] = {False: [], True: []}
                figures: dict[bool, tuple[int, int]] = {}
                top: list[str] = []
                for _ in range(args.repeat):
                    for on in (False, True):
                        meter = Meter(backend, attribution=on)
                        t0 = time.perf_counter()
                        meter.start()
                        model = meter.build(
                            model_zoo.build_model,
                            preset,
                            phase,
                            device=backend.device,
                            dtype=dtype,
                            seed=0,
                        )
                        meter.run(work, model, batch=1, seq_len=args.seq_len)
                        del model
                        meter.finish()
                        times[on].append(time.perf_counter() - t0)
                        m = meter.measurements[0]
                        figures[on] = (m.model_bytes, m.peak_bytes)
                        if on and m.breakdown:
                            top = attribution.top_lines(m.breakdown, limit=3)
                off, on_ = statistics.median(times[False]), statistics.median(times[True])
                row = {
                    "preset": preset,
                    "phase": phase,
                    "workload": workload,
                    "seconds_off": round(off, 4),
                    "seconds_on": round(on_, 4),
                    "overhead": round(on_ / off - 1, 4) if off else None,
                    "figures_off": figures[False],
                    "figures_on": figures[True],
                    "same_figures": figures[False] == figures[True],
                    "top_at_peak": [line.strip() for line in top],
                }
                rows.append(row)
                print(
                    f"{preset:>9} {phase} {workload:<10} off {off:8.3f}s  on {on_:8.3f}s  "
                    f"{(row['overhead'] or 0) * 100:+6.1f}%  same figures: {row['same_figures']}",
                    flush=True,
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "backend": args.backend,
        "context": backend.context(),
        "repeat": args.repeat,
        "seq_len": args.seq_len,
        "rows": rows,
    }
    (out / "attribution.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: {out / 'attribution.json'}")
    return 0 if all(r["same_figures"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
