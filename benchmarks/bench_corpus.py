"""Speed and host memory of the estimator on the ecosystem corpus, on this machine's CPU.

Each measurement runs in a fresh subprocess, so its peak resident set size (``ru_maxrss``)
is its own:

* ``small``: all corpus workloads at CI's size, as ``tests/vram/test_corpus.py`` runs them;
* ``realistic``: all corpus workloads at 100M-1B parameters (``corpus_workloads``);
* ``llama-7b-build``: ``LlamaForCausalLM(7B config).to("cuda")``, built on the CPU inside
  ``vram.build`` and moved, the way its docs write it (fake tensors: no weights in host
  memory).

    python benchmarks/bench_corpus.py            # prints a markdown table

Figures: docs/results/estimator-speed.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(what: str) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "vram"))
    from corpus_workloads import WORKLOADS, _tf

    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    started = time.perf_counter()
    backend = create("estimate")
    backend.warmup()
    ready = time.perf_counter()
    count = 0
    if what == "llama-7b-build":
        T = _tf()
        cfg = T.LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
        )
        meter = Meter(backend)
        meter.start()
        model = meter.build(lambda: T.LlamaForCausalLM(cfg).to("cuda"))
        count = meter.params or 0
        del model
        meter.finish()
    else:
        for workload in WORKLOADS.values():
            meter = Meter(backend)
            meter.start()
            model = meter.build(workload.build, what, backend.device)
            out = meter.run(workload.work, model, what, backend.device)
            del model, out
            meter.finish()
            count += 1
    done = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "what": what,
                "count": count,
                "startup_s": round(ready - started, 2),
                "run_s": round(done - ready, 2),
                "max_rss_bytes": rss,
            }
        )
    )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return 0
    rows = []
    for what in ("small", "realistic", "llama-7b-build"):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", what],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"CPU: {os.cpu_count()} cores; Python {sys.version.split()[0]}\n")
    print("| run | workloads / params | warm-up s | run s | max RSS |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['what']} | {r['count']:,} | {r['startup_s']} | {r['run_s']} | "
            f"{r['max_rss_bytes'] / 2**20:,.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
