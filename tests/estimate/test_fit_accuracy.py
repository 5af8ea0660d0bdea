"""benchmarks/fit_accuracy.py, without running its questions: the zoo questions it asks are
those of the memory suite (their recorded answers are its hints), and its table says where
the estimate and the capped GPU agree.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fit() -> Iterator[Any]:
    """The script as a module; the paths it adds (the zoo, tests/vram) are removed after."""
    path, modules = list(sys.path), dict(sys.modules)
    spec = importlib.util.spec_from_file_location(
        "fit_accuracy", ROOT / "benchmarks" / "fit_accuracy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.path[:] = path
    for name in set(sys.modules) - set(modules):
        if name in ("fit_accuracy", "test_zoo_fit", "zoo_suite", "corpus_workloads"):
            del sys.modules[name]


def test_every_zoo_question_is_one_the_suite_records(fit: Any) -> None:
    hints = fit.baseline_hints()
    zoo = [s for s in fit.subjects() if s.name.endswith(("phase7", "phase8"))]
    assert len(zoo) == 8
    for subject in zoo:
        # the three questions of every pair have an answer in baselines/estimate.yaml
        assert set(hints[subject.name]) == {q.name for q in subject.questions}
    corpus = [s for s in fit.subjects() if s not in zoo]
    assert len(corpus) >= 6 and len({s.name for s in corpus}) == len(corpus)


def _answer(largest: int, whole: bool = False) -> dict[str, Any]:
    probe = {"value": largest or 1, "fits": bool(largest), "peak_bytes": 1024}
    return {
        "largest": largest,
        "fits": largest > 0,
        "whole_range": whole,
        "probes": [probe],
        "peak_bytes": 1024,
        "reserved_bytes": 2048,
    }


def test_the_table_says_where_the_sides_agree(fit: Any, tmp_path: Path) -> None:
    data = {
        "card": "rtx3080-laptop",
        "command": "python benchmarks/fit_accuracy.py",
        "environment": {"torch": "2.13.0"},
        "sides": list(fit.SIDES),
        "wall_s": 1.0,
        "results": {
            "a": {
                "estimate-card": {"batch": _answer(12)},
                "estimate-capped": {"batch": _answer(11)},
                "cuda-capped": {"batch": _answer(11)},
            },
            "b": {
                "estimate-capped": {"batch": _answer(0)},
                "cuda-capped": {"batch": _answer(3)},
            },
            "c": {
                "estimate-capped": {"batch": _answer(64, whole=True)},
                "cuda-capped": {"error": "exit 1: Traceback\nRuntimeError: no driver"},
            },
        },
    }
    table = fit.render(data)
    assert "| a | batch | 12 | 11 | 11 | yes | 1,024 | 1,024 | 2,048 | 2,048 | 1/1 |" in table
    assert "| b | batch | - | does not fit | 3 | **no** |" in table
    assert "| c | batch | - | 64+ | - | - |" in table
    assert "- `c` (cuda-capped): RuntimeError: no driver" in table
    # an earlier run's capped answers are the next run's hints
    path = tmp_path / "fit_accuracy.json"
    path.write_text(json.dumps(data))
    assert fit.earlier_hints(path) == {"a": {"batch": 11}, "b": {"batch": 0}, "c": {"batch": 64}}
