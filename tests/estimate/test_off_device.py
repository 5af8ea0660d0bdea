"""On the estimator, figures that counted none of the test's device memory fail with the
cause and the fix, and ``--vram-update`` does not record them; small and in-place
workloads on the device are measured as usual."""

from __future__ import annotations

import pytest

from pytest_vram.store import baselines

pytest.importorskip("torch")

USER_TESTS = """
import pytest
import torch
from torch import nn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_model():
    return nn.Sequential(nn.Linear(4096, 4096), nn.GELU()).to(DEVICE)


def test_module_level_device(vram):
    model = vram.build(make_model)
    x = vram.build(torch.randn, 64, 4096, device=DEVICE)

    @torch.no_grad()
    def forward():
        return model(x)

    vram.run(forward)


def make_model_choosing_its_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return nn.Linear(1024, 1024).to(device)


def test_device_chosen_in_the_build(vram):
    model = vram.build(make_model_choosing_its_device)
    vram.run(lambda: model(torch.ones(8, 1024, device=vram.device)))


def test_model_returned_on_the_cpu(vram):
    model = vram.build(lambda: nn.Linear(1024, 1024))
    vram.run(lambda: model(torch.randn(8, 1024, device=vram.device)))


def test_small_workload(vram):
    vram.run(lambda: torch.ones(3, device=vram.device))


def test_in_place_work_on_a_model_on_the_device(vram):
    model = vram.build(lambda: nn.Linear(1024, 1024).to(vram.device))

    @torch.no_grad()
    def scale():
        for p in model.parameters():
            p.mul_(0.5)

    vram.run(scale)
"""


def test_off_device_figures_fail_and_are_not_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    args = ["--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly"]
    result = pytester.runpytest_subprocess(*args, "--vram-update")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_module_level_device _*",
            "the model is on the CPU (16.78M parameters on cpu); the figures (model 0 B, "
            "peak 0 B) are not the test's device memory and are not recorded",
            "  vram.build(make_model) counted no bytes on cuda; its result holds 16.78M "
            "parameters on cpu",
            "  likely cause: DEVICE = 'cpu' (test_user.py:5): a device chosen with "
            "torch.cuda.is_available() when the module was imported, before the estimator's "
            "emulated GPU existed: use vram.device inside the test",
            "*_ test_model_returned_on_the_cpu _*",
            "the model is on the CPU (1.05M parameters on cpu); the test then failed at "
            "test_user.py:35:",
            "  *FakeTensorDeviceMismatchError: Expected all tensors to be on the same device*",
            "  likely cause: the model was made on the CPU and never moved to the device",
        ]
    )
    out = result.stdout.str()
    assert "fake_tensor.py" not in out and "pytest_vram/" not in out
    entries = baselines.load(pytester.path / "baselines" / "estimate.yaml").entries
    assert sorted(entries) == [
        "test_user.py::test_device_chosen_in_the_build",
        "test_user.py::test_in_place_work_on_a_model_on_the_device",
        "test_user.py::test_small_workload",
    ]
    # inside the test the idiom sees the emulated card: the model is on it and counted
    chosen = entries["test_user.py::test_device_chosen_in_the_build"]
    assert chosen.model_bytes == 1024 * 1024 * 4 + 4096
    in_place = entries["test_user.py::test_in_place_work_on_a_model_on_the_device"]
    assert in_place.peak_bytes == in_place.model_bytes > 0  # nothing new, and not 0 B
    assert entries["test_user.py::test_small_workload"].peak_bytes == 512


MIXED_CONFTEST = """
import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def batch():
    return torch.randn(64, 512).to(DEVICE)
"""

MIXED_TESTS = """
import torch
from torch import nn


def test_body_model_and_fixture_batch(vram, batch):
    model = nn.Linear(512, 512).to(vram.device)
    vram.run(lambda: model(batch))
"""


@pytest.mark.parametrize("emulate", ["test", "session"])
def test_tensors_on_two_devices_name_what_and_where(
    pytester: pytest.Pytester, emulate: str
) -> None:
    """A batch a fixture made on a device chosen when its conftest was imported (before
    the configuration, so even --vram-emulate=session cannot reach it) meets a model on
    the device: the failure names the CPU tensor, the conftest's line and the fix, not
    torch's traceback."""
    pytester.mkpydir("tests")
    pytester.path.joinpath("tests", "conftest.py").write_text(MIXED_CONFTEST)
    pytester.path.joinpath("tests", "test_mixed.py").write_text(MIXED_TESTS)
    args = ["--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly"]
    result = pytester.runpytest_subprocess(*args, f"--vram-emulate={emulate}", "--vram-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "tensors on two devices: the test runs on cuda and its code holds 1 tensor on "
            "cpu; it failed at tests/test_mixed.py:8:",
            "  *FakeTensorDeviceMismatchError: Expected all tensors to be on the same device*",
            "  likely cause: DEVICE = 'cpu' (tests/conftest.py:5): a device chosen with "
            "torch.cuda.is_available() when the module was imported, before the estimator's "
            "emulated GPU existed: use vram.device inside the test",
            "  fix: make the model and its tensors on vram.device inside the test or a "
            "function-scoped fixture*",
            "  --vram-emulate=session is on, but pytest imports some conftest.py files*"
            if emulate == "session"
            else "  or keep the module-level device and let the code run at import see the "
            "emulated GPU: --vram-emulate=session (ini vram_emulate = session)",
        ]
    )
    out = result.stdout.str()
    assert "fake_tensor.py" not in out and "pytest_vram/" not in out
    assert not (pytester.path / "baselines" / "estimate.yaml").exists()


CHOOSING_CONFTEST = """
import pytest
import torch


@pytest.fixture
def batch():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.randn(64, 512, device=device)


@pytest.fixture(scope="session")
def table():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.randn(512, 512, device=device)
"""

CHOOSING_TESTS = """
import torch
from torch import nn


def test_plain_first(table):
    assert table.shape == (512, 512)


def test_with_the_table(vram, batch, table):
    model = nn.Linear(512, 512).to(vram.device)
    vram.run(lambda: model(batch) @ table)
"""


def test_a_fixture_choosing_its_device_is_a_cause_only_where_set_up_outside(
    pytester: pytest.Pytester,
) -> None:
    """A function-scoped fixture that calls torch.cuda.is_available() runs inside the vram
    test and chose the device: it is no cause. A session-scoped one that a plain test set
    up first chose the CPU, and the failure names it."""
    pytester.mkpydir("tests")
    pytester.path.joinpath("tests", "conftest.py").write_text(CHOOSING_CONFTEST)
    pytester.path.joinpath("tests", "test_choosing.py").write_text(CHOOSING_TESTS)
    args = ["--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "tensors on two devices: the test runs on cuda and its code holds 1 tensor on "
            "cpu; it failed at tests/test_choosing.py:12:",
            "  *FakeTensorDeviceMismatchError*",
            "  likely cause: fixture table chooses its device with torch.cuda.is_available() "
            "(tests/conftest.py:14), and a test outside vram may have set it up, where no "
            "GPU answers: make it function-scoped and use vram.device in it",
        ]
    )
    assert "batch chooses" not in result.stdout.str()
