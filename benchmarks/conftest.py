"""Speed benchmarks: ``pytest benchmarks/ --benchmark-only --benchmark-json=OUT.json``.

Wall time depends on the machine, so these are pytest-benchmark runs whose saved JSON feeds
the docs (``python benchmarks/benchmark_table.py OUT.json`` prints the Markdown table), never
tests that assert a time. ``--bench-presets`` chooses the model sizes (default: the real
ones on a GPU, ``tiny,small`` on a CPU, where building a 3B model takes minutes). The docs
publish the dedicated scripts' figures (docs/results/); these runs compare two checkouts on
one machine.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-presets",
        default=None,
        help="comma-separated model_zoo presets to benchmark (default: the real ones on a "
        "GPU, tiny,small on a CPU)",
    )


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def presets(config: pytest.Config) -> list[str]:
    import model_zoo

    chosen = config.getoption("--bench-presets")
    if chosen:
        return chosen.split(",")
    return list(model_zoo.REAL_PRESETS) if _gpu() else ["tiny", "small"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "build_preset" in metafunc.fixturenames:
        metafunc.parametrize("build_preset", presets(metafunc.config))
