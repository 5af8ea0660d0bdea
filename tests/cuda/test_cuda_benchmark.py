"""pytest-benchmark beside memory on a real GPU: GPU time from the rounds, exact bytes from one.

Skipped where no GPU is visible (the repository conftest skips ``@pytest.mark.cuda``).
"""

from __future__ import annotations

import json

import pytest

MiB = 1024**2

pytestmark = pytest.mark.cuda

BENCHMARKED = """
    import torch

    FLOATS_PER_MIB = 1024**2 // 4

    def work(x):
        return (x * 2).sum()

    def test_bench(vram, benchmark):
        x = vram.build(torch.ones, 4 * FLOATS_PER_MIB, device=vram.device)
        benchmark(vram.run, work, x)

    def test_measured_alone(vram):
        x = vram.build(torch.ones, 4 * FLOATS_PER_MIB, device=vram.device)
        vram.run(work, x)
"""


def test_benchmark_and_vram_on_cuda(pytester, measure_cuda):
    pytest.importorskip("pytest_benchmark")
    pytester.makepyfile(test_bm=BENCHMARKED)
    records = measure_cuda("--benchmark-json=bench.json", outcomes={"passed": 2})
    bench, alone = records["test_bm.py::test_bench"], records["test_bm.py::test_measured_alone"]
    # the timing rounds leave the measurement as it is without them
    assert (bench["model_bytes"], bench["peak_bytes"]) == (
        alone["model_bytes"],
        alone["peak_bytes"],
    )
    assert bench["time"]["gpu"] is True and bench["time"]["rounds"] >= 1
    assert alone["time"] is None
    result = measure_cuda.last_result  # type: ignore[attr-defined]
    result.stdout.fnmatch_lines(["test * verdict  time", "test_bench * median of *"])
    benchmarks = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    (info,) = [b["extra_info"]["vram"]["test_bm.py::test_bench"] for b in benchmarks]
    assert info["peak_bytes"] == bench["peak_bytes"] and info["gpu_time"] is True
