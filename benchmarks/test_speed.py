"""The project's speed figures as pytest-benchmark runs (see conftest.py for how to run).

* model build: ``model_zoo.build_model`` (meta device, ``to_empty``, seeded init on the
  device) per preset and phase, until the device is idle;
* the estimator per pair: one measured inference (``Meter.start/build/run/finish`` on the
  ``estimate`` backend) of each real (preset, phase) pair, as a vram test does it;
* plugin overhead: a fresh ``pytest`` process running 1,000 trivial tests, with the plugin
  loaded and with ``-p no:vram``; the difference is what installing pytest-vram costs a
  project's ordinary test run (``bench_overhead.py`` measures it paired, with its noise).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import model_zoo

PHASES = model_zoo.PHASES
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("phase", PHASES)
def test_build(benchmark, build_preset: str, phase: str) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def build() -> None:
        model = model_zoo.build_model(build_preset, phase, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        del model

    benchmark.group = "model build"
    benchmark.extra_info.update(device=device, torch=torch.__version__)
    benchmark.pedantic(build, rounds=3, warmup_rounds=1)


@pytest.fixture(scope="module")
def estimator():
    from pytest_vram.backends import create

    backend = create("estimate")
    backend.warmup()
    return backend


@pytest.mark.parametrize(
    ("preset", "phase"), [(p, ph) for p in model_zoo.REAL_PRESETS for ph in PHASES]
)
def test_estimate_pair(benchmark, estimator, preset: str, phase: str) -> None:
    from pytest_vram.measure.meter import Meter

    def measure() -> int:
        meter = Meter(estimator)
        meter.start()
        model = meter.build(model_zoo.build_model, preset, phase, device=estimator.device)
        meter.run(model_zoo.inference, model, seq_len=512)
        del model
        meter.finish()
        return meter.measurements[0].peak_bytes

    benchmark.group = "estimator per pair (inference, 512 tokens)"
    peak = benchmark.pedantic(measure, rounds=2)
    benchmark.extra_info["peak_bytes"] = peak


@pytest.mark.parametrize("plugin", ["with pytest-vram", "without (-p no:vram)"])
def test_plugin_overhead(benchmark, tmp_path: Path, plugin: str) -> None:
    """Unpaired rounds for the speed table; ``python benchmarks/bench_overhead.py`` gives
    the paired figure (median of per-pair differences, with the noise) that the docs cite."""
    import bench_overhead

    suite = bench_overhead.Suite(tmp_path)
    bench_overhead.write_suite(suite.directory, suite.tests)
    with_plugin = plugin.startswith("with ")

    benchmark.group = "1,000 non-vram tests in a fresh process"
    benchmark.extra_info["tests"] = suite.tests
    benchmark.pedantic(
        bench_overhead.run_once, args=(suite, with_plugin), rounds=5, warmup_rounds=1
    )
