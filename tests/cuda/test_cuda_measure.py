"""The CUDA backend on a real GPU: exact bytes, independent of order, leaks reported.

Skipped where no GPU is visible (the repository conftest skips ``@pytest.mark.cuda``).
"""

from __future__ import annotations

import pytest

MiB = 1024**2

pytestmark = pytest.mark.cuda

WORKLOADS = """
    import torch

    MiB = 1024**2
    FLOATS_PER_MIB = MiB // 4

    def test_tensor(vram):
        # 4 MiB held by the "model", 8 MiB more during the workload: exact multiples of
        # the allocator's 2 MiB large-pool granularity, so no rounding is involved.
        x = vram.build(torch.empty, 4 * FLOATS_PER_MIB, device=vram.device)
        vram.run(lambda: torch.ones(8 * FLOATS_PER_MIB, device=vram.device))

    def test_train_step(vram):
        # Forward and backward matrix products: the cuBLAS/cuBLASLt workspaces of the
        # forward stream and of autograd's backward thread must come from the warm-up.
        model = vram.build(torch.nn.Linear, 1024, 1024, device=vram.device)
        x = torch.randn(64, 1024, device=vram.device)
        def step():
            model(x).square().sum().backward()
        vram.run(step)

    def test_autocast(vram):
        model = vram.build(torch.nn.Linear, 1024, 1024, device=vram.device)
        x = torch.randn(64, 1024, device=vram.device)
        def step():
            with torch.autocast("cuda", dtype=torch.float16):
                y = model(x)
            y.float().sum().backward()
        vram.run(step)

    def test_checkpointed(vram):
        # Checkpointing re-runs a linear with bias on autograd's thread during backward:
        # that thread's cuBLASLt workspace must come from the warm-up, not this test.
        from torch.utils.checkpoint import checkpoint

        model = vram.build(torch.nn.Linear, 1024, 1024, device=vram.device, dtype=torch.float16)
        x = torch.randn(1, 512, 1024, device=vram.device, dtype=torch.float16, requires_grad=True)
        def step():
            with torch.autocast("cuda", dtype=torch.float16):
                y = checkpoint(model, x, use_reentrant=False)
            y.float().sum().backward()
        vram.run(step)

    # The same workloads under a second name: "twice" runs one right after the other.
    test_tensor_again = test_tensor
    test_train_step_again = test_train_step
    test_autocast_again = test_autocast
    test_checkpointed_again = test_checkpointed
"""
TESTS = ("test_tensor", "test_train_step", "test_autocast", "test_checkpointed")


def _figures(records: dict, test: str) -> tuple[int, int, int]:
    record = records[f"test_w.py::{test}"]
    return record["model_bytes"], record["peak_bytes"], record["leaked_bytes"]


def test_known_tensor_is_measured_exactly(pytester, measure_cuda):
    pytester.makepyfile(test_w=WORKLOADS)
    records = measure_cuda("test_w.py::test_tensor", outcomes={"passed": 1})
    assert _figures(records, "test_tensor") == (4 * MiB, 12 * MiB, 0)


def test_same_bytes_first_last_twice_and_alone(pytester, measure_cuda):
    pytester.makepyfile(test_w=WORKLOADS)
    ids = [f"test_w.py::{t}" for t in TESTS]
    forward = measure_cuda(*ids, outcomes={"passed": len(TESTS)})
    backward = measure_cuda(*reversed(ids), outcomes={"passed": len(TESTS)})
    # Each workload right after itself (test_x, test_x_again, test_y, ...), in one process.
    pairs = [i for t in ids for i in (t, f"{t}_again")]
    twice = measure_cuda(*pairs, outcomes={"passed": len(pairs)})
    for test in TESTS:
        alone = measure_cuda(f"test_w.py::{test}", outcomes={"passed": 1})
        expected = _figures(alone, test)  # first in a fresh process
        assert _figures(forward, test) == expected, test
        assert _figures(backward, test) == expected, test
        assert _figures(twice, test) == expected, test
        assert _figures(twice, f"{test}_again") == expected, test  # the second of two runs
        assert expected[2] == 0, f"{test}: leaked {expected[2]} B (warm-up incomplete?)"


def test_leak_is_reported_with_its_size(pytester, measure_cuda):
    pytester.makepyfile(
        test_leak="""
        import torch

        KEEP = []

        def test_leaky(vram):
            vram.run(lambda: KEEP.append(torch.empty(2 * 1024**2 // 4, device=vram.device)))
        """
    )
    records = measure_cuda(outcomes={"passed": 1})
    assert records["test_leak.py::test_leaky"]["leaked_bytes"] == 2 * MiB


def test_backend_reports_device_and_profile():
    import torch

    from pytest_vram.backends.cuda import CudaBackend

    backend = CudaBackend()
    assert backend.device == f"cuda:{torch.cuda.current_device()}"
    assert backend.profile().startswith("cuda-") and " " not in backend.profile()
    context = backend.context()
    assert context["backend"] == "cuda" and context["torch"] == torch.__version__


def test_out_of_memory_fails_clearly_and_frees_the_gpu(pytester, measure_cuda):
    # A workload asking for more than the GPU has: the test fails naming the step and the
    # figures, and the next test measures as if nothing had happened.
    pytester.makepyfile(
        test_oom="""
        import torch

        MiB = 1024**2

        def huge(device):
            return torch.empty(1 << 50, dtype=torch.uint8, device=device)

        def test_a_too_big(vram):
            model = vram.build(torch.empty, 64 * MiB // 4, device=vram.device)
            vram.run(huge, vram.device)

        def test_b_after(vram):
            x = vram.build(torch.empty, 4 * MiB // 4, device=vram.device)
            vram.run(lambda: torch.ones(8 * MiB // 4, device=vram.device))
        """
    )
    records = measure_cuda("test_oom.py", outcomes={"passed": 1, "failed": 1})
    measure_cuda.last_result.stdout.fnmatch_lines(
        [
            "*test_oom.py::test_a_too_big: out of memory on cuda:* in vram.run(huge): "
            "64.0 MiB (67108864 B) were allocated when it started*",
            "*OutOfMemoryError*",
        ]
    )
    after = records["test_oom.py::test_b_after"]
    assert (after["model_bytes"], after["peak_bytes"], after["leaked_bytes"]) == (
        4 * MiB,
        12 * MiB,
        0,
    )


ROUNDING = """
    import torch

    MiB = 1024**2

    def make(device):
        # 12 MiB freed, then 11.5 MiB: best fit gives the cached 12 MiB block, whose 512 KiB
        # remainder the default settings do not split (counted: 12 MiB); expandable
        # segments split it (counted: exactly 11.5 MiB).
        first = torch.empty(12 * MiB, dtype=torch.uint8, device=device)
        del first
        return torch.empty(11 * MiB + MiB // 2, dtype=torch.uint8, device=device)

    def test_split(vram):
        kept = vram.build(make, vram.device)
        vram.run(lambda: None)
"""


def test_expandable_segments_count_exactly_the_request(pytester, measure_cuda):
    pytester.makepyfile(test_r=ROUNDING)
    record = measure_cuda(outcomes={"passed": 1})["test_r.py::test_split"]
    assert record["model_bytes"] == 11 * MiB + MiB // 2
    assert record["context"]["allocator"].startswith("expandable_segments:True")
    assert record["context"]["metric"].startswith("peak allocated, expandable segments")
    assert record["reserved_bytes"] is not None and record["reserved_bytes"] >= 0


def test_default_allocator_is_an_explicit_opt_in(pytester, measure_cuda):
    pytester.makepyfile(test_r=ROUNDING)
    record = measure_cuda("--vram-allocator=default", outcomes={"passed": 1})[
        "test_r.py::test_split"
    ]
    assert record["model_bytes"] == 12 * MiB  # the whole cached block
    assert "default allocator" in record["context"]["metric"]


def test_user_setting_that_rules_out_expandable_segments_is_an_error(
    pytester, measure_cuda, monkeypatch
):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    pytester.makepyfile(test_r=ROUNDING)
    measure_cuda(outcomes={"errors": 1})
    measure_cuda.last_result.stdout.fnmatch_lines(
        ["*PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False*rules out expandable segments*"]
    )
