"""pytest-benchmark beside memory: one workload, memory from one round, time from the rest.

In a test that uses both ``benchmark`` and ``vram``, ``benchmark(vram.run, fn, *args)`` (or
``benchmark.pedantic(vram.run, args=(fn, ...), rounds=...)``) measures the first call as the
test's measurement and runs every further call as a timing round in the backend's scope,
waiting for the device each time. After the test, the figures go into
``benchmark.extra_info["vram"]`` (and so into pytest-benchmark's JSON), and the timing into
the measurement's Record (the ``time`` column of the VRAM table). On a backend that does
not run on a GPU (``estimate``), the rounds time the fake-tensor dispatch: the column says
that no GPU time was measured.

Registered only when pytest-benchmark is active (``-p no:benchmark`` leaves it out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pytest_vram.core.records import Record
from pytest_vram.pytest_plugin.keys import RECORDS, VRAM

#: backends whose timing rounds run on a GPU
GPU_BACKENDS = ("cuda",)


class BenchmarkHooks:
    """Connects a test's ``benchmark`` fixture with its ``vram`` measurement."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        probe = item.stash.get(VRAM, None)
        if probe is not None and "benchmark" in getattr(item, "fixturenames", ()):
            probe.timing_rounds = True

    @pytest.hookimpl(tryfirst=True)  # before the fixtures (benchmark among them) are torn down
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        records = item.stash.get(RECORDS, None)
        bench = getattr(item, "funcargs", {}).get("benchmark")
        if not records or bench is None:
            return
        records[:] = [dataclasses.replace(r, time=timing(bench, r)) for r in records]
        bench.extra_info["vram"] = {r.key: extra_info(r) for r in records}


def timing(bench: Any, record: Record) -> dict[str, Any] | None:
    """pytest-benchmark's statistics of the rounds, or None when it did not time them
    (``--benchmark-disable``, or under xdist, where it disables itself)."""
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is None or not getattr(stats, "rounds", 0):
        return None
    return {
        "rounds": stats.rounds,
        "min_s": stats.min,
        "median_s": stats.median,
        "mean_s": stats.mean,
        "backend": record.setup.get("backend"),
        "gpu": record.setup.get("backend") in GPU_BACKENDS,
    }


def extra_info(record: Record) -> dict[str, Any]:
    """The figures that go into ``benchmark.extra_info["vram"][key]``."""
    return {
        "profile": record.profile,
        "backend": record.setup.get("backend"),
        "params": record.params,
        "model_bytes": record.model_bytes,
        "peak_bytes": record.peak_bytes,
        "activation_bytes": record.activation_bytes,
        "verdict": record.kind.value,
        "gpu_time": bool(record.time and record.time["gpu"]),
    }
