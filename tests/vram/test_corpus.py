"""The ecosystem corpus on baselines: third-party models written the way their docs write
them, small configurations (see ``corpus_workloads``; the realistic sizes run on an H200 in
``benchmarks/corpus_accuracy.py``)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from corpus_workloads import WORKLOADS  # noqa: E402


@pytest.mark.vram
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_corpus(vram, name: str) -> None:
    workload = WORKLOADS[name]
    model = vram.build(workload.build, "small", vram.device)
    vram.run(workload.work, model, "small", vram.device)
    del model
