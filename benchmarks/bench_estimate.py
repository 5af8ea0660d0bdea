"""Wall time and host memory of the ``estimate`` backend on the real model-zoo pairs.

Runs, in one process as the plugin would, ``Meter.start/build/run/finish`` with
``model_zoo.inference`` (batch 1, 512 tokens by default) for every (preset, phase) pair and
prints wall time per pair, the total, and the process's peak RSS after each pair.

    python benchmarks/bench_estimate.py                 # the 8 real pairs, inference
    python benchmarks/bench_estimate.py --workload train_step
    python benchmarks/bench_estimate.py --profile 20    # cProfile, top 20 by cumulative time

Never used as a timed test: wall time depends on the machine. Figures:
docs/results/estimator-speed.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="standard,deep,large,maximum")
    parser.add_argument("--phases", default="phase7,phase8")
    parser.add_argument("--workload", default="inference", choices=("inference", "train_step"))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    import torch

    import model_zoo
    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    backend = create("estimate")
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.warmup()
    t_warm = time.perf_counter() - t0
    print(f"torch {torch.__version__}; import {t_import:.2f} s, warmup {t_warm:.2f} s")
    print(
        f"{'pair':24s} {'build':>7s} {'run':>7s} {'total':>7s} {'peak bytes':>15s} {'RSS MiB':>8s}"
    )

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    workload = getattr(model_zoo, args.workload)
    total = 0.0
    for preset in args.presets.split(","):
        for phase in args.phases.split(","):
            meter = Meter(backend)
            t0 = time.perf_counter()
            meter.start()
            model = meter.build(model_zoo.build_model, preset, phase, device=backend.device)
            t1 = time.perf_counter()
            out = meter.run(workload, model, seq_len=args.seq_len)
            del model, out
            meter.finish()
            t2 = time.perf_counter()
            total += t2 - t0
            peak = meter.measurements[0].peak_bytes
            print(
                f"{preset + '-' + phase:24s} {t1 - t0:6.2f}s {t2 - t1:6.2f}s {t2 - t0:6.2f}s "
                f"{peak:>15,} {_rss_mib():8.0f}",
                flush=True,
            )
    print(
        f"total {total:.2f} s for the pairs (excluding import and warmup); "
        f"peak RSS {_rss_mib():.0f} MiB"
    )
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
