"""Scripts whose device is chosen when their module is imported
(``tests/vram/module_device_scripts.py``), on the estimator: with the default
``--vram-emulate=test`` each fails, naming the line and the fixes, and records nothing;
with ``--vram-emulate=session`` each measures what the same script measures with its
device chosen inside the test.

Each run is a sub-session of its own (``pytester``, a fresh process), as a user's project.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")
pytestmark = emulated

SCRIPTS = Path(__file__).resolve().parents[1] / "vram" / "module_device_scripts.py"
IDIOM = '\nDEVICE = "cuda" if torch.cuda.is_available() else "cpu"\n'
TESTS = (
    "test_module_device_train_epoch",
    "test_module_device_amp_step",
    "test_module_device_inference",
)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--vram-backend=estimate",
        "--vram-no-strict",
        "--vram-json=run.json",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *args,
    )


def _figures(pytester: pytest.Pytester) -> dict[str, tuple[int, int]]:
    report = json.loads((pytester.path / "run.json").read_text())
    return {
        m["key"].split("::")[-1]: (m["model_bytes"], m["peak_bytes"])
        for m in report["measurements"]
    }


def test_module_level_device_fails_by_default_and_measures_with_emulate_session(
    pytester: pytest.Pytester,
) -> None:
    source = SCRIPTS.read_text()
    assert source.count(IDIOM) == 1
    pytester.makepyfile(test_scripts=source)

    refused = _run(pytester)
    refused.assert_outcomes(failed=len(TESTS))
    refused.stdout.fnmatch_lines(
        ["  likely cause: DEVICE = 'cpu' (test_scripts.py:*): a device chosen with *"]
    )

    _run(pytester, "--vram-emulate=session").assert_outcomes(passed=len(TESTS))
    at_import = _figures(pytester)

    # the same scripts with the device chosen inside the test: what session emulation makes
    # the module-level idiom choose
    pytester.makepyfile(test_scripts=source.replace(IDIOM, '\nDEVICE = "cuda"\n'))
    _run(pytester).assert_outcomes(passed=len(TESTS))
    in_test = _figures(pytester)

    assert set(at_import) == set(TESTS)
    assert at_import == in_test
    assert all(model > 0 and peak > model for model, peak in at_import.values())
