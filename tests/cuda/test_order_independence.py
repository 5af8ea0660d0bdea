"""The memory suite's gated figures do not depend on what ran before (a real GPU only).

The argument is the allocator's rule (docs/architecture.md, "The gated figure"): with
expandable segments every block is split, so a test's allocated bytes are the sum of its
512-byte-rounded live requests, which no earlier test can change. This checks the
consequence on the GPU: the suite's 24 measuring tests in the collected order, reversed,
in three shuffled orders, a ``-k`` subset and under ``-n 2``, each in a fresh pytest
process and strict against the committed baselines, give identical figures to the byte.

About 3 minutes on an H200. ``VRAM_ORDER_OUT=DIR`` keeps every run's JSON and log there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.order_runs import collect, differences, run_orders

pytestmark = pytest.mark.cuda


def test_suite_figures_identical_in_every_order(tmp_path: Path) -> None:
    out = Path(os.environ.get("VRAM_ORDER_OUT", tmp_path))
    ids = collect()
    assert len(ids) == 24
    results = run_orders(out, ids, "cuda", (7, 11, 2024), "train or (long_context and large)")
    assert not differences(results)
    assert len(results["subset"]) < len(results["collected"]) == len(ids)
