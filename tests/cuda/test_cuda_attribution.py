"""Attribution on a real GPU: the planted regressions of the suite's copy fail naming the
planted module, and collecting the breakdown leaves the figures unchanged.

Skipped where no GPU is visible (the repository conftest skips ``@pytest.mark.cuda``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

SUITE = Path(__file__).resolve().parent.parent / "suite" / "zoo_copy.py"


def grown(output: str, test: str) -> list[str]:
    """The "grew against" labels of ``test``'s failure, largest first."""
    section = output.split(f"_ {test} _", 1)[1].split("\n_", 1)[0]
    assert "grew against baselines/" in section, section
    tail = section.split("grew against baselines/", 1)[1].splitlines()[1:]
    labels = []
    for line in tail:
        match = re.match(r"^\s+\+\S+ \S+\s+(.+?) \((?:new|was .*)\)$", line)
        if not match:
            break
        labels.append(match.group(1))
    return labels


@pytest.mark.parametrize(
    ("plant", "module"),
    [("buffer", "blocks.*.planted (buffers)"), ("attention", "blocks.*.attn.extra (parameters)")],
)
def test_planted_regression_names_the_module(pytester, measure_cuda, monkeypatch, plant, module):
    pytester.makepyfile(test_zoo_copy=SUITE.read_text())
    monkeypatch.setenv("ZOO_PLANT", "")
    clean = measure_cuda("--vram-attribution=on", "--vram-update", outcomes={"passed": 4})
    stores = [p.name for p in (pytester.path / "baselines" / "breakdowns").glob("*.yaml")]
    assert len(stores) == 1, stores  # next to the profile's baseline file
    monkeypatch.setenv("ZOO_PLANT", plant)
    planted = measure_cuda("--vram-attribution=on", outcomes={"passed": 2, "failed": 2})
    output = measure_cuda.last_result.stdout.str()
    for test in ("test_inference[tiny-phase8]", "test_train[tiny-phase8]"):
        labels = grown(output, test)
        # The planted module comes first (its category may differ where the GPU's peak
        # falls elsewhere in the step than the estimator's).
        assert labels and labels[0].split(" (")[0] == module.split(" (")[0], (test, labels)
    for key, m in planted.items():
        if "phase7" in key:  # untouched by the plant
            assert (m["model_bytes"], m["peak_bytes"]) == (
                clean[key]["model_bytes"],
                clean[key]["peak_bytes"],
            )


def test_attribution_leaves_the_figures_unchanged(pytester, measure_cuda, monkeypatch):
    pytester.makepyfile(test_zoo_copy=SUITE.read_text())
    monkeypatch.setenv("ZOO_PLANT", "")
    off = measure_cuda("--vram-attribution=off", outcomes={"passed": 4})
    on = measure_cuda("--vram-attribution=on", outcomes={"passed": 4})
    for key in off:
        assert (off[key]["model_bytes"], off[key]["peak_bytes"]) == (
            on[key]["model_bytes"],
            on[key]["peak_bytes"],
        ), key
        assert on[key]["breakdown"]["peak_bytes"] > 0, key


def test_artifacts_of_a_failing_test_include_the_torch_snapshot(pytester, measure_cuda):
    pytester.makepyfile(
        test_fail="""
        import pytest
        import torch

        @pytest.mark.vram(budget="1MiB")
        def test_big(vram):
            vram.run(lambda: torch.ones(4 * 1024**2, device=vram.device))
        """
    )
    measure_cuda("--vram-attribution=on", "--vram-artifacts=art", outcomes={"failed": 1})
    folder = pytester.path / "art" / "test_fail.py_test_big"
    names = sorted(p.name for p in folder.iterdir())
    assert "breakdown.txt" in names and "snapshot.pickle" in names, names
    import pickle

    snapshot = pickle.loads((folder / "snapshot.pickle").read_bytes())
    assert "segments" in snapshot and "device_traces" in snapshot
    assert "(no module) (inputs/other)" in (folder / "breakdown.txt").read_text()
