"""GPU test code as PyTorch users write it, through the plugin on the estimator: the whole
vram test (its body and its function-scoped fixtures) runs on one emulated card, wider
scoped fixtures that make or keep CUDA tensors are refused by name with the fix, CUDA
work outside vram tests names its line, and the module-level device idiom sees the card
only with ``--vram-emulate=session``.

Each case runs a sub-session of its own (``pytester``, a fresh process), as a user's
project would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")
pytestmark = emulated

#: a training step written as scripts write it: everything made in the test body, the
#: device's properties read there; and the same objects made inside vram.build, and by a
#: function-scoped fixture set up before or after ``vram``
ORDINARY = """
import pytest
import torch
from torch import nn


def make(device):
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(64, 512, device=device)
    return model, opt, scaler, x


def step(model, opt, scaler, x):
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


@pytest.fixture
def trainer(vram):
    return make(vram.device)


@pytest.fixture
def early():
    return make("cuda")


def test_in_the_body(vram):
    model, opt, scaler, x = make(vram.device)
    free, total = torch.cuda.mem_get_info()
    assert total == torch.cuda.get_device_properties(0).total_memory == 150109880320
    assert 0 < free < total and torch.cuda.memory_allocated() > 0
    assert torch.cuda.is_available() and scaler.is_enabled()
    vram.run(step, model, opt, scaler, x)


def test_in_a_build_step(vram):
    model, opt, scaler, x = vram.build(make, vram.device)
    vram.run(step, model, opt, scaler, x)


def test_in_a_fixture_after_vram(trainer, vram):
    vram.run(step, *trainer)


def test_in_a_fixture_before_vram(early, vram):
    vram.run(step, *early)
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly", *args
    )


def _figures(path: Path) -> dict[str, tuple[int, int, int | None]]:
    report = json.loads(path.read_text())
    return {
        m["key"].split("::")[-1]: (m["model_bytes"], m["peak_bytes"], m["leaked_bytes"])
        for m in report["measurements"]
    }


def test_the_body_and_the_fixtures_count_as_a_build_step(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ordinary=ORDINARY)
    result = _run(pytester, "--vram-json=run.json")
    result.assert_outcomes(passed=4)
    figures = _figures(pytester.path / "run.json")
    assert len(set(figures.values())) == 1, figures
    model, peak, leaked = figures["test_in_the_body"]
    # the fp32 model (two 4 MiB weights, 8 KiB and 2 KiB of biases) and its 128 KiB input;
    # AdamW's two moments and the gradients come during the step
    assert model == 2 * 4_194_304 + 8_192 + 2_048 + 131_072 and peak > 3 * model
    assert leaked == 0
    out = result.stdout.str()
    card = "NVIDIA H200, 150109880320 B (139.80 GiB), capacity not enforced"
    assert f"estimator card {card}" in out  # the header line
    assert f"card {card}" in out.split("= VRAM =")[1]  # the VRAM section


WIDER = """
import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def model():
    return nn.Linear(256, 256).to("cuda")


@pytest.fixture(scope="module")
def cpu_model():
    return nn.Linear(256, 256)


def test_uses_a_module_model(model, vram):
    vram.run(lambda: model(torch.randn(4, 256, device=vram.device)))


def test_moves_it(cpu_model, vram):
    cpu_model.to(vram.device)
    vram.run(lambda: cpu_model(torch.randn(4, 256, device=vram.device)))


def test_moves_it_again(cpu_model, vram):
    assert cpu_model.weight.device.type == "cpu"  # set up anew, not the last test's
    cpu_model.to(vram.device)
    vram.run(lambda: cpu_model(torch.randn(4, 256, device=vram.device)))
"""


def test_a_wider_scoped_fixture_with_cuda_tensors_is_refused_by_name(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_wider=WIDER)
    result = _run(pytester)
    result.assert_outcomes(passed=2, errors=3)
    out = result.stdout.str()
    made = (
        "fixture 'model' (scope module, test_wider.py:6) made 257.0 KiB of CUDA tensors "
        "while test_wider.py::test_uses_a_module_model was set up on the estimate backend"
    )
    assert made in out
    kept = (
        "fixture 'cpu_model' (scope module, test_wider.py:11) holds CUDA tensors made by "
        "test_wider.py::test_moves_it on its emulated GPU"
    )
    assert kept in out and "test_wider.py::test_moves_it_again on its emulated GPU" in out
    assert "Make 'model' function-scoped" in out and "vram.build(...)" in out
    assert "Traceback" not in out and "site-packages" not in out


OUTSIDE = """
import torch


def test_plain():
    torch.zeros(3, device="cuda")
"""


def test_cuda_work_outside_a_vram_test_names_its_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outside=OUTSIDE)
    pytester.makepyfile(
        test_measured="import torch\n\n\ndef test_measured(vram):\n"
        "    vram.run(lambda: torch.empty(8, device=vram.device))\n"
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "CUDA work outside a vram test at " in out
    assert 'test_outside.py:5 (torch.zeros(3, device="cuda"))' in out
    assert "or skip the test where no GPU is visible" in out
    assert "Torch not compiled with CUDA enabled" not in out


IDIOM = """
import pytest
import torch
from torch import nn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AT_IMPORT = torch.cuda.is_available()


def build(device):
    return nn.Linear(1024, 1024).to(device)


def test_module_device(vram):
    model = build(DEVICE)
    vram.run(lambda: model(torch.randn(8, 1024, device=DEVICE)).sum())


def test_vram_device(vram):
    model = build(vram.device)
    vram.run(lambda: model(torch.randn(8, 1024, device=vram.device)).sum())


@pytest.mark.skipif(not AT_IMPORT, reason="needs a GPU")
def test_gpu_only():
    torch.zeros(3, device="cuda")


def test_what_the_module_saw():
    print(f"device at import: {DEVICE}")
"""


def test_the_module_level_idiom_sees_the_machine_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_idiom=IDIOM)
    result = _run(pytester, "-s", "--vram-json=run.json")
    # the GPU-only test is skipped where no GPU is visible, as without the plugin
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    out = result.stdout.str()
    assert "device at import: cpu" in out
    # the model on the CPU counts nothing: the test fails with the cause and both fixes
    result.stdout.fnmatch_lines(
        [
            "*_ test_module_device _*",
            "  likely cause: DEVICE = 'cpu' (test_idiom.py:5): a device chosen with "
            "torch.cuda.is_available() when the module was imported, *",
            "  fix: make the model and its tensors on vram.device inside the test *",
            "  or keep the module-level device and let the code run at import see the "
            "emulated GPU: --vram-emulate=session *",
        ]
    )


def test_with_emulate_session_the_module_level_idiom_sees_the_card(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_idiom=IDIOM)
    result = _run(pytester, "-s", "--vram-emulate=session", "--vram-json=run.json")
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert "device at import: cuda" in out
    assert "answering from configure on (--vram-emulate=session)" in out
    figures = _figures(pytester.path / "run.json")
    assert figures["test_module_device"] == figures["test_vram_device"]
    assert figures["test_vram_device"][0] == 4_194_304 + 4_096  # the weight and the bias
    # the GPU-only test is no longer skipped: its CUDA work fails, naming its line and why
    assert "CUDA work outside a vram test at " in out and "test_idiom.py:25" in out
    assert "or run without --vram-emulate=session" in out


def test_emulate_takes_test_or_session(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--vram-emulate=always")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vram-emulate: expected test or session, got 'always'*"])
