"""The estimator's suite figures are the same in every order, subset and under ``-n 2``.

The estimator starts every test from an empty allocator model and a fresh fake mode, and
with the expandable-segments rule its figure is the sum of 512-byte-rounded live requests,
so nothing earlier in the process can change it. Checked here in fresh pytest processes,
strict against the committed baselines, on the inference tests and the ``standard``
pairs (to keep CI fast; the GPU twin in tests/cuda runs all 24).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.order_runs import collect, differences, run_orders

pytest.importorskip("torch")


def test_estimate_figures_identical_in_every_order(tmp_path: Path) -> None:
    ids = collect("-k", "inference or standard")
    results = run_orders(tmp_path, ids, "estimate", (7, 2024), "train or phase8")
    assert not differences(results)
    assert len(results["subset"]) < len(results["collected"]) == len(ids)
