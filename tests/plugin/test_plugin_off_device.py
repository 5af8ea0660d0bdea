"""Figures that counted none of the test's device memory fail, say why, and are never
recorded: a model built on the CPU, a workload that used no device memory."""

from __future__ import annotations

import json

import pytest
from vram_testing import MiB, write_baseline

from pytest_vram.store import baselines

OFF_DEVICE = """
    import pytest
    import torch
    from torch import nn

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


    def make_model():
        return nn.Linear(4096, 4096).to(DEVICE)


    def test_module_level_device(vram):
        model = vram.build(make_model)
        vram.run(vram.backend.spike, MiB)


    def test_model_returned_on_the_cpu(vram):
        model = vram.build(lambda: nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 10)))
        vram.run(lambda: model(torch.zeros(8, 1024)))


    def test_cpu_tensors_in_a_dict(vram):
        batch = vram.build(lambda: {"x": torch.zeros(8, 16), "y": [torch.zeros(8)]})
        vram.run(lambda: batch["x"].sum())


    def test_workload_on_cpu_tensors(vram):
        x = torch.zeros(64, 64)
        vram.run(lambda: x @ x)


    def test_nothing_at_all(vram):
        vram.run(lambda: sum(range(10)))


    def test_in_place_work_on_a_model_on_the_device(vram):
        model = vram.build(vram.backend.alloc, 4 * MiB)
        vram.run(lambda: None)  # nothing new: the figure is the model's, and right


    def test_build_that_counted_bytes(vram):
        model, labels = vram.build(lambda: (vram.backend.alloc(MiB), torch.arange(10)))
        vram.run(vram.backend.spike, MiB)
"""
OFF_DEVICE = OFF_DEVICE.replace("    import pytest", "    MiB = 1024**2\n    import pytest", 1)

FAILING = [
    "test_module_level_device",
    "test_model_returned_on_the_cpu",
    "test_cpu_tensors_in_a_dict",
    "test_workload_on_cpu_tensors",
    "test_nothing_at_all",
]


def test_figures_off_the_device_fail_with_the_cause_and_the_fix(torch, vram_pytester, run_vram):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the module-level device would be cuda")
    vram_pytester.makepyfile(test_off=OFF_DEVICE)
    result = run_vram("-p", "no:randomly", "-rf")
    result.assert_outcomes(passed=2, failed=5)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_module_level_device _*",
            "the model is on the CPU (16.78M parameters on cpu); the figures (model 0 B, "
            "peak 1.0 MiB) are not the test's device memory and are not recorded",
            "  vram.build(make_model) counted no bytes on scripted:0; its result holds "
            "16.78M parameters on cpu",
            "  likely cause: DEVICE = 'cpu' (test_off.py:6): a device chosen with "
            "torch.cuda.is_available() when the module was imported, before scripted:0 was "
            "visible: use vram.device inside the test",
            "  fix: make the model and its tensors on vram.device inside the test*",
            "*_ test_model_returned_on_the_cpu _*",
            "the model is on the CPU (1.06M parameters on cpu); *",
            "  likely cause: the model was made on the CPU and never moved to the device",
            "*_ test_cpu_tensors_in_a_dict _*",
            "the built tensors are on the CPU (2 tensors on cpu); *",
            "*_ test_workload_on_cpu_tensors _*",
            "nothing counted on scripted:0: the workload's tensors are on cpu; *",
            "  vram.run(*) allocated nothing on scripted:0; what it uses holds 2 tensors on cpu "
            "and nothing on scripted:0",  # x and x @ x,
            "*_ test_nothing_at_all _*",
            "nothing counted on scripted:0: the workload used no device memory; *",
            "  a test whose workload uses no device memory has nothing to measure: drop the "
            "`vram` fixture and marker",
        ]
    )
    # Only the module-level idiom is blamed on DEVICE: the other tests never read it.
    assert out.count("likely cause: DEVICE") == 1
    result.stdout.fnmatch_lines(
        [
            "test_in_place_work_on_a_model_on_the_device * 4.0 MiB * 4.0 MiB * new",
            "test_module_level_device * not on device",
        ]
    )
    assert "Traceback" not in out and "pytest_vram/" not in out


def test_update_refuses_to_record_figures_off_the_device(torch, vram_pytester, run_vram):
    vram_pytester.makepyfile(test_off=OFF_DEVICE)
    path = write_baseline(vram_pytester, {"test_off.py::test_nothing_at_all": (0, 8 * MiB)})
    before = path.read_bytes()
    report = vram_pytester.path / "run.json"
    result = run_vram("-p", "no:randomly", "--vram-update", f"--vram-json={report}")
    result.assert_outcomes(passed=2, failed=5)
    entries = baselines.load(path).entries
    assert not set(entries) & {f"test_off.py::{name}" for name in FAILING if name != FAILING[-1]}
    assert entries["test_off.py::test_nothing_at_all"].peak_bytes == 8 * MiB  # kept as it was
    assert "test_off.py::test_in_place_work_on_a_model_on_the_device" in entries
    assert path.read_bytes() != before  # the measurements that count were recorded
    measured = {m["key"]: m for m in json.loads(report.read_text())["measurements"]}
    nothing = measured["test_off.py::test_nothing_at_all"]
    assert nothing["verdict"] == "not on device"
    assert nothing["off_device"]["step"].startswith("vram.run(")
    assert nothing["verdicts"][0]["fails"] is True
    assert "nothing counted on scripted:0" in nothing["verdicts"][0]["summary"]


def test_a_device_error_after_a_cpu_build_names_the_model(torch, vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_mismatch="""
        import torch
        from torch import nn

        def test_x(vram):
            model = vram.build(nn.Linear, 64, 64)
            raise RuntimeError("Expected all tensors to be on the same device, but found cpu")
        """
    )
    result = run_vram()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "the model is on the CPU (4.16K parameters on cpu); the test then failed at "
            "test_mismatch.py:6:",
            "  RuntimeError: Expected all tensors to be on the same device, but found cpu",
            "  vram.build(Linear) counted no bytes on scripted:0; its result holds 4.16K "
            "parameters on cpu",
        ]
    )
