"""pytest-benchmark beside memory on the estimator: the workload measured once, the same
figures as without timing rounds, and a time column that says no GPU time was measured."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

REPO = Path(__file__).resolve().parents[2]

TESTS = """
    import model_zoo

    def test_timed(vram, benchmark):
        model = vram.build(model_zoo.build_model, "tiny", "phase8", device=vram.device)
        benchmark.pedantic(vram.run, args=(model_zoo.inference, model), kwargs={"seq_len": 64},
                           rounds=2, warmup_rounds=1)

    def test_alone(vram):
        model = vram.build(model_zoo.build_model, "tiny", "phase8", device=vram.device)
        vram.run(model_zoo.inference, model, seq_len=64)
"""


def test_benchmark_and_vram_on_the_estimator(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_bm=TESTS)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:xdist",
        "--vram-json=vram.json", "--benchmark-json=bench.json",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    records = {
        m["key"]: m for m in json.loads((pytester.path / "vram.json").read_text())["measurements"]
    }
    timed, alone = records["test_bm.py::test_timed"], records["test_bm.py::test_alone"]
    figures = ("params", "model_bytes", "peak_bytes")
    assert [timed[f] for f in figures] == [alone[f] for f in figures]
    assert timed["time"]["rounds"] == 2 and timed["time"]["gpu"] is False
    result.stdout.fnmatch_lines(["test * verdict  time", "* new * no GPU time (estimate)"])
    (bench,) = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert (
        bench["extra_info"]["vram"]["test_bm.py::test_timed"]["peak_bytes"] == timed["peak_bytes"]
    )
