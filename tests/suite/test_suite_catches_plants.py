"""The memory suite tests itself: regressions planted in a copy of a model must fail it.

A pytester directory gets a copy of the suite (``zoo_copy.py``, written there as
``test_zoo_copy.py``): the ``tiny`` preset, both phases, ``inference`` and ``train_step``
measured through the ``vram`` fixture on the estimator backend (CPU, no GPU). Its build
wrapper plants a regression in every Phase 8 block when ``ZOO_PLANT`` says so; model_zoo
itself is never changed. The steps:

1. record baselines with ``--vram-update`` (clean model);
2. run clean with ``CI=true`` (strict): everything passes, figures equal the baselines;
3. plant A, an extra 1 MiB fp16 buffer per Phase 8 block: exactly the Phase 8 tests fail,
   and model and peak grow by exactly ``n_layers x 1 MiB``;
4. plant B, a Phase 7 attention also running in every Phase 8 block (the shape of the
   report's 17.29 GB bug): exactly the Phase 8 tests fail, model bytes grow by exactly the
   allocator-rounded sizes of the extra attention's parameters, and the peaks grow.

A failing run must leave the baseline file byte-identical. Expected figures are computed
here from the model's configuration and torch's own module, never copied from a run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import zoo_copy

import model_zoo
from pytest_vram.backends import create
from pytest_vram.core.units import format_delta, format_size
from pytest_vram.store import baselines

HERE = Path(__file__).resolve().parent
SUITE_FILE = "test_zoo_copy.py"
BASELINE = Path("baselines") / "estimate.yaml"
#: The per-module breakdowns --vram-update stores next to the baseline (docs/attribution.md).
BREAKDOWN = Path("baselines") / "breakdowns" / "estimate.yaml"
PRESET = zoo_copy.PRESET
CONFIG = model_zoo.get_config(PRESET)
WORKLOADS = ("inference", "train")
PHASE7_IDS = [f"{SUITE_FILE}::test_{w}[{PRESET}-phase7]" for w in WORKLOADS]
PHASE8_IDS = [f"{SUITE_FILE}::test_{w}[{PRESET}-phase8]" for w in WORKLOADS]
#: The CUDA caching allocator hands out blocks in multiples of 512 B (kMinBlockSize in
#: c10/cuda/CUDACachingAllocator.cpp), at least one block per non-empty allocation.
ALLOCATOR_BLOCK = 512


def plugin_args() -> list[str]:
    """Load the plugin in sub-sessions whether or not the package is installed."""
    installed = any(ep.name == "vram" for ep in entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []  # autoloaded; naming it again would register it twice
    return ["-p", "vram" if installed else "pytest_vram.pytest_plugin.entry"]


def allocator_bytes(nbytes: int) -> int:
    """What one allocation of ``nbytes`` occupies in the CUDA caching allocator."""
    return max(ALLOCATOR_BLOCK, -(-nbytes // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK)


@dataclasses.dataclass
class SuiteRun:
    """One sub-session of the copied suite: pytest's result and the ``--vram-json`` records."""

    result: pytest.RunResult
    measurements: dict[str, dict[str, Any]]

    @property
    def output(self) -> str:
        return self.result.stdout.str()

    def failed_ids(self) -> set[str]:
        """Node ids on the short summary's ``FAILED`` lines (what a CI log shows)."""
        return set(re.findall(r"^FAILED (\S+)", self.output, flags=re.MULTILINE))


class ZooSuite:
    """The copied suite in a pytester directory, run on the estimator backend."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.monkeypatch = monkeypatch
        self._runs = itertools.count()
        pytester.makepyfile(**{SUITE_FILE[:-3]: (HERE / "zoo_copy.py").read_text()})

    @property
    def baseline(self) -> Path:
        return self.pytester.path / BASELINE

    def run(self, *args: str, plant: str = "", ci: bool = False) -> SuiteRun:
        """Run the suite with ``ZOO_PLANT=plant``; ``ci`` sets ``CI=true`` (strict mode)."""
        self.monkeypatch.setenv("ZOO_PLANT", plant)
        if ci:
            self.monkeypatch.setenv("CI", "true")
        else:
            self.monkeypatch.delenv("CI", raising=False)
        out = self.pytester.path / f"vram-{next(self._runs)}.json"
        # In process: the estimator patches torch only inside a measurement's scope, and a
        # sub-session costs no torch import this way (a subprocess would add seconds each).
        result = self.pytester.runpytest(
            *plugin_args(),
            "--vram-backend=estimate",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:hypothesispytest",
            # under xdist it warns in every sub-session that benchmarks are disabled
            "-p",
            "no:benchmark",
            f"--vram-json={out}",
            *args,
        )
        document = json.loads(out.read_text())
        return SuiteRun(result, {m["key"]: m for m in document["measurements"]})


@pytest.fixture(scope="module")
def settled_imports() -> None:
    """Import everything a sub-session would import lazily, before the first one runs.

    In-process pytester runs drop the modules a sub-session imported. The estimator's
    warm-up imports hundreds of torch modules (dynamo, inductor, ...); re-importing them in
    the next sub-session fails (``Only a single TORCH_LIBRARY can be used to register the
    namespace _inductor_test``), and the estimator keeps torch's CUDA device guard alive
    in a module global. Warming up here puts all of them in the snapshot pytester keeps;
    measuring every plant afterwards imports nothing new (checked when this was written).
    """
    create("estimate").warmup()


@pytest.fixture(scope="module")
def recorded(settled_imports: None) -> dict[str, bytes]:
    """Baseline file of step 1, recorded once per module and copied into later tests."""
    return {}


@pytest.fixture
def suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, recorded: dict[str, bytes]
) -> Iterator[ZooSuite]:
    """The copied suite with its clean baselines in place (step 1, checked when it runs)."""
    monkeypatch.setenv("COLUMNS", "120")  # the width the VRAM table is laid out for
    zoo = ZooSuite(pytester, monkeypatch)
    if not recorded:
        recorded[str(BASELINE)] = record_baselines(zoo)
        recorded[str(BREAKDOWN)] = (pytester.path / BREAKDOWN).read_bytes()
    else:
        for name, data in recorded.items():
            (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
            (pytester.path / name).write_bytes(data)
    yield zoo


def record_baselines(zoo: ZooSuite) -> bytes:
    """Step 1: ``--vram-update`` on the clean model writes one entry per measurement."""
    run = zoo.run("--vram-update")
    run.result.assert_outcomes(passed=4)
    assert set(run.measurements) == {*PHASE7_IDS, *PHASE8_IDS}
    loaded = baselines.load(zoo.baseline)
    assert loaded is not None, f"--vram-update wrote no {BASELINE}"
    for key, m in run.measurements.items():
        assert m["verdict"] == "new", (key, m["verdicts"])
        entry = loaded.entries[key]
        assert (entry.model_bytes, entry.peak_bytes) == (m["model_bytes"], m["peak_bytes"])
    assert set(loaded.entries) == set(run.measurements)
    return zoo.baseline.read_bytes()


def baseline_figures(zoo: ZooSuite) -> dict[str, tuple[int, int]]:
    """``key -> (model_bytes, peak_bytes)`` as the baseline file records them."""
    loaded = baselines.load(zoo.baseline)
    assert loaded is not None
    return {k: (e.model_bytes, e.peak_bytes) for k, e in loaded.entries.items()}


def run_planted(zoo: ZooSuite, plant: str) -> tuple[SuiteRun, dict[str, tuple[int, int]]]:
    """Run ``plant`` strictly; check exactly Phase 8 fails and the baseline is untouched."""
    before = zoo.baseline.read_bytes()
    recorded = baseline_figures(zoo)
    run = zoo.run(plant=plant, ci=True)
    run.result.assert_outcomes(passed=2, failed=2)
    assert run.failed_ids() == set(PHASE8_IDS), run.output
    for key in PHASE7_IDS:  # untouched by the plant: byte-identical figures
        m = run.measurements[key]
        assert m["verdict"] == "pass", m["verdicts"]
        assert (m["model_bytes"], m["peak_bytes"]) == recorded[key]
    for key in PHASE8_IDS:
        assert run.measurements[key]["verdict"] == "regression"
    assert zoo.baseline.read_bytes() == before, "a failing run rewrote the baseline file"
    return run, recorded


def grown_modules(run: SuiteRun, key: str) -> dict[str, str]:
    """``module (category) -> growth`` from the "grew against" lines of ``key``'s failure."""
    section = run.output.split(f"_ {key.split('::')[1]} _", 1)[1].split("\n_", 1)[0]
    grew = section.split(f"grew against {BREAKDOWN}:\n", 1)
    assert len(grew) == 2, f"no 'grew against {BREAKDOWN}' in the failure of {key}:\n{section}"
    found = {}
    for line in grew[1].splitlines():
        match = re.match(r"^\s+(\+\S+ \S+)\s+(.+?) \((?:new|was .*)\)$", line)
        if not match:
            break
        found[match.group(2)] = match.group(1)
    return found


def regression_lines(key: str, measured: dict[str, Any], baseline: tuple[int, int]) -> list[str]:
    """The figures a regression message must show for ``key``, built from the bytes."""

    def line(label: str, value: int, reference: int) -> str:
        return f"{label:<9} {format_size(value):>10}  {value:>14,d} B  ({value - reference:+,d} B)"

    model, peak = baseline
    return [
        f"peak {format_delta(measured['peak_bytes'], peak)}: memory regression against {BASELINE}",
        line("peak", measured["peak_bytes"], peak),
        f"baseline  {format_size(peak):>10}  {peak:>14,d} B",
        line("model", measured["model_bytes"], model),
        format_delta(measured["peak_bytes"], peak),  # the VRAM table's delta column
    ]


def test_clean_suite_round_trips_its_baselines(suite: ZooSuite) -> None:
    """Step 2: strict and clean, every test passes on exactly the recorded figures."""
    before = suite.baseline.read_bytes()
    recorded = baseline_figures(suite)
    run = suite.run(ci=True)
    run.result.assert_outcomes(passed=4)
    for key, m in run.measurements.items():
        assert m["verdict"] == "pass", m["verdicts"]
        assert (m["model_bytes"], m["peak_bytes"]) == recorded[key]
    assert set(run.measurements) == set(recorded)
    assert suite.baseline.read_bytes() == before


def test_extra_buffer_per_layer_fails_exactly_phase8(suite: ZooSuite) -> None:
    """Plant A: n_layers x 1 MiB more, in model and peak, of both Phase 8 workloads."""
    run, recorded = run_planted(suite, "buffer")
    expected = CONFIG.n_layers * allocator_bytes(zoo_copy.PLANT_BUFFER_BYTES)
    for key in PHASE8_IDS:
        m, (model, peak) = run.measurements[key], recorded[key]
        # The buffer lives from the build to the end of the workload: both figures move by it.
        assert m["model_bytes"] - model == expected, key
        assert m["peak_bytes"] - peak == expected, key
        for text in regression_lines(key, m, recorded[key]):
            assert text in run.output, f"{text!r} not in the failure output"
        # The failure names the planted buffer as what grew, by exactly its bytes.
        grown = grown_modules(run, key)
        assert next(iter(grown)) == "blocks.*.planted (buffers)", grown
        assert grown["blocks.*.planted (buffers)"] == "+" + format_size(expected), grown
        # The same travels in --vram-json (and so reaches the PR comment).
        stored_growth = run.measurements[key]["breakdown"]["grown"][0]
        assert stored_growth[0] == "blocks.*.planted (buffers)"
        assert stored_growth[2] - stored_growth[1] == expected


def extra_attention_bytes() -> tuple[int, int, int]:
    """Parameters, raw bytes and allocated bytes of one Phase 7 attention, in fp16.

    Each parameter is its own allocation (``to_empty`` of the meta module materialises
    them one by one), rounded up by the allocator.
    """
    attention = nn.MultiheadAttention(
        CONFIG.d_model, CONFIG.n_heads, batch_first=True, device="meta", dtype=torch.float16
    )
    sizes = [p.numel() * p.element_size() for p in attention.parameters()]
    return (
        sum(p.numel() for p in attention.parameters()),
        sum(sizes),
        sum(allocator_bytes(n) for n in sizes),
    )


def test_second_attention_per_layer_fails_exactly_phase8(suite: ZooSuite) -> None:
    """Plant B: the extra attention's rounded parameter bytes per layer, and higher peaks."""
    run, recorded = run_planted(suite, "attention")
    params_per_layer, raw_per_layer, bytes_per_layer = extra_attention_bytes()
    # On this preset the biases (3d and d fp16 values) are not multiples of 512 B, so the
    # check below tells the allocator's rounding from a plain sum of parameter bytes.
    assert raw_per_layer != bytes_per_layer
    expected = CONFIG.n_layers * bytes_per_layer
    clean_params = model_zoo.count_parameters(PRESET, "phase8")
    for key in PHASE8_IDS:
        m, (model, peak) = run.measurements[key], recorded[key]
        assert m["params"] == clean_params + CONFIG.n_layers * params_per_layer, key
        assert m["model_bytes"] - model == expected, key
        # Its parameters stay allocated through the workload, so the peak grows at least as
        # much; what it adds on top depends on where the workload peaks.
        assert m["peak_bytes"] - peak >= expected, key
        for text in regression_lines(key, m, recorded[key]):
            assert text in run.output, f"{text!r} not in the failure output"
        # What grew is the planted attention's: its parameters by exactly their bytes.
        grown = grown_modules(run, key)
        assert next(iter(grown)) == "blocks.*.attn.extra (parameters)", grown
        assert grown["blocks.*.attn.extra (parameters)"] == "+" + format_size(expected), grown


@pytest.mark.parametrize("plant", ["", "buffer", "attention"], ids=["clean", "buffer", "attention"])
def test_plants_are_what_they_claim(monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    """The copy's plants, on real CPU tensors: where they sit and that plant B runs.

    The memory figures above show that a plant costs memory; this shows it is the plant
    the docs describe (a buffer per Phase 8 block; a second attention that every Phase 8
    block calls on its input), and that Phase 7 and the clean build are left alone.
    """
    monkeypatch.setenv("ZOO_PLANT", plant)
    calls: list[str] = []
    for phase in model_zoo.PHASES:
        model = zoo_copy.build("tiny", phase, device="cpu")
        planted = phase == "phase8" and plant
        for i, block in enumerate(model.blocks):
            assert hasattr(block, "planted") == (planted == "buffer")
            extra = getattr(block.attn, "extra", None)
            assert isinstance(extra, nn.MultiheadAttention) == (planted == "attention")
            if extra is not None:
                extra.register_forward_hook(lambda *_, i=i: calls.append(f"layer {i}"))
        model_zoo.inference(model, seq_len=8)
    expected = model_zoo.get_config("tiny").n_layers if plant == "attention" else 0
    assert calls == [f"layer {i}" for i in range(expected)]
