"""Inference throughput (tokens/s) of every pair on the GPU, beside its memory: shown, not
asserted (wall time depends on the machine).

pytest-benchmark times ``vram.run`` rounds of the report's inference protocol; the first
round is the test's memory measurement (judged against the baseline like any other), the
rest are timing rounds. Tokens per second (batch x sequence length over the median round)
go into ``benchmark.extra_info`` and pytest-benchmark's JSON:

    pytest tests/vram/test_zoo_throughput.py --benchmark-json=OUT/throughput.json

Only on a GPU: on the estimator a round times the fake-tensor dispatch, not the model.
Under xdist pytest-benchmark disables itself and each test measures memory only.
"""

from __future__ import annotations

import pytest
from zoo_suite import PAIR_IDS, PAIRS, WORKLOADS

import model_zoo

pytest.importorskip("pytest_benchmark")

ROUNDS = 10


@pytest.mark.cuda
@pytest.mark.vram(budget="8GiB")
@pytest.mark.parametrize(("preset", "phase"), PAIRS, ids=PAIR_IDS)
def test_inference_throughput(vram, benchmark, preset: str, phase: str) -> None:
    work = WORKLOADS["inference"]
    model = vram.build(model_zoo.build_model, preset, phase, device=vram.device)
    benchmark.group = "inference throughput"
    benchmark.pedantic(
        vram.run, args=(work.fn, model), kwargs=work.kwargs, rounds=ROUNDS, warmup_rounds=1
    )
    if benchmark.stats is not None:  # None when pytest-benchmark is disabled
        tokens = work.kwargs["batch"] * work.kwargs["seq_len"]
        benchmark.extra_info["tokens"] = tokens
        benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median
