"""pytest-benchmark beside memory: one measured round, timed rounds, figures in both reports."""

from __future__ import annotations

import json

import pytest
from vram_testing import MiB

from pytest_vram.cli.main import main

pytest.importorskip("pytest_benchmark")

BENCHMARKED = """
    MiB = 1024**2
    CALLS = []

    def work(vram, n):
        CALLS.append(n)
        vram.backend.spike(n * MiB)

    def test_call(vram, benchmark):
        model = vram.build(vram.backend.alloc, 1 * MiB)
        benchmark(vram.run, work, vram, 10)

    def test_pedantic(vram, benchmark):
        CALLS.clear()
        benchmark.pedantic(vram.run, args=(work, vram, 5), rounds=3, warmup_rounds=1)
        if not benchmark.disabled:  # 1 measured (the warm-up round) + 3 timed
            assert CALLS == [5, 5, 5, 5]

    def test_twice_without_benchmark_still_needs_names(vram):
        vram.run(work, vram, 1)
        vram.run(work, vram, 1)
"""


def test_benchmark_times_the_workload_that_vram_measures_once(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_bm=BENCHMARKED)
    result = run_vram("--benchmark-json=bench.json", "--vram-json=vram.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*vram.run() is called more than once in this test*"])
    measurements = json.loads((vram_pytester.path / "vram.json").read_text())["measurements"]
    by_key = {m["key"]: m for m in measurements}
    assert sorted(by_key) == ["test_bm.py::test_call", "test_bm.py::test_pedantic"]
    call = by_key["test_bm.py::test_call"]
    # the timed rounds changed nothing: one measurement, the workload's own figures
    assert (call["model_bytes"], call["peak_bytes"]) == (1 * MiB, 11 * MiB)
    assert call["time"]["rounds"] >= 1 and call["time"]["gpu"] is False
    assert by_key["test_bm.py::test_pedantic"]["time"]["rounds"] == 3
    benchmarks = json.loads((vram_pytester.path / "bench.json").read_text())["benchmarks"]
    extra = {b["name"]: b["extra_info"]["vram"] for b in benchmarks}
    assert extra["test_call"]["test_bm.py::test_call"]["peak_bytes"] == 11 * MiB
    assert extra["test_pedantic"]["test_bm.py::test_pedantic"]["activation_bytes"] == 5 * MiB
    assert extra["test_call"]["test_bm.py::test_call"]["gpu_time"] is False
    # the VRAM table's time column says that this backend measured no GPU time
    result.stdout.fnmatch_lines(
        ["test * verdict  time", "* 11.0 MiB * new * no GPU time (scripted)"]
    )
    # the command line reads the timed rounds back: the PR comment and the benchmark file
    for command in (["comment", "vram.json"], ["benchmark", "vram.json"]):
        assert main([*command, "-o", "out"]) == 0


def test_without_timing_the_time_column_stays_out(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_bm=BENCHMARKED)
    result = run_vram("--benchmark-disable", "-k", "not twice")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test * delta  verdict"])
    assert "no GPU time" not in result.stdout.str()


def test_without_pytest_benchmark_nothing_changes(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_plain="""
        def test_a(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    result = run_vram("-p", "no:benchmark")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test * delta  verdict"])
