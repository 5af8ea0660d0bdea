"""Recording convolution workspaces (``backends.workspace_recorder``) without a GPU.

The recorder measures a call's transient from the counters around it. Here the device is
the estimator, whose counters are the allocator model's: a convolution whose workspace the
estimator knows (from the project's entries) must come back from the recorder as exactly
that workspace, under exactly the key the estimator looks up. The ``cuda`` backend's
window, which keeps the test's peak across the recorder's restarts, runs on stand-in
counters.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.cuda import CudaBackend, _RecorderWindow  # noqa: E402
from pytest_vram.backends.estimate.kernels import convolution as cw  # noqa: E402
from pytest_vram.backends.workspace_recorder import WorkspaceRecorder, output_bytes  # noqa: E402

aten = torch.ops.aten
MiB = 1 << 20
X_SHAPE, W_SHAPE = (2, 3, 17, 17), (32, 3, 3, 3)  # a 3 -> 32 stem, stride 2
PARAMS = ([2, 2], [1, 1], [1, 1], False, [0, 0], 1)
MASK = [False, True, True]  # a first layer: weight and bias gradients only


def _meta(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _keys() -> tuple[str, str]:
    x, w, go = _meta(X_SHAPE), _meta(W_SHAPE), _meta((2, 32, 9, 9))
    forward = cw.forward_key((x, w, _meta((32,)), *PARAMS), {}, cw.flags())
    backward = cw.backward_key((go, x, w, [32], *PARAMS, MASK), {}, cw.flags())
    return forward, backward


class _EstimatorWindow:
    """The recorder's view of the estimate backend's counters."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def synchronize(self) -> None:
        self.backend.synchronize()

    def allocated(self) -> int:
        return int(self.backend.allocated())

    def restart_peak(self) -> None:
        self.backend.reset_peak()

    def peak(self) -> int:
        return int(self.backend.peak())


@pytest.fixture
def estimator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(cw, "gpu_visible", lambda: False)
    backend = create("estimate")
    backend.begin_test()
    yield backend
    backend.end_test()


def _stem_calls(recorder: WorkspaceRecorder) -> None:
    x = torch.empty(X_SHAPE, device="cuda")
    w, b = torch.empty(W_SHAPE, device="cuda"), torch.empty(32, device="cuda")
    with recorder:
        out = aten.convolution(x, w, b, *PARAMS)
        aten.convolution_backward(torch.empty_like(out), x, w, [32], *PARAMS, MASK)
        aten.convolution(x, w, b, *PARAMS)  # again: one entry, the largest transient


def test_the_recorder_measures_the_workspace_the_estimator_counts(estimator: Any) -> None:
    forward, backward = _keys()
    estimator.use_workspaces({forward: 3 * MiB + 512, backward: 5 * MiB}, "recorded.yaml")
    recorder = WorkspaceRecorder(_EstimatorWindow(estimator))
    with estimator.scope():
        _stem_calls(recorder)
    assert recorder.entries == {forward: 3 * MiB + 512, backward: 5 * MiB}


def test_a_call_without_workspace_records_zero(estimator: Any) -> None:
    forward, backward = _keys()
    estimator.use_workspaces({forward: 0, backward: 0}, "recorded.yaml")
    recorder = WorkspaceRecorder(_EstimatorWindow(estimator))
    with estimator.scope():
        _stem_calls(recorder)
    assert recorder.entries == {forward: 0, backward: 0}


def test_what_the_estimator_would_not_look_up_is_not_recorded(estimator: Any) -> None:
    recorder = WorkspaceRecorder(_EstimatorWindow(estimator))
    with estimator.scope(), recorder:
        w = torch.empty(W_SHAPE, device="cuda")
        aten.convolution(torch.empty((0, 3, 17, 17), device="cuda"), w, None, *PARAMS)
        aten.convolution(torch.empty(X_SHAPE), torch.empty(W_SHAPE), None, *PARAMS)  # CPU
        with torch.backends.cudnn.flags(enabled=False):  # not cuDNN: ATen's own kernel
            aten.convolution(torch.empty(X_SHAPE, device="cuda"), w, None, *PARAMS)
        torch.empty(4, device="cuda").sum()  # other operators pass through
    assert recorder.entries == {}


class _Scripted:
    """Counters that report a scripted peak during each call: before + outputs + extra."""

    def __init__(self, extra: list[int]) -> None:
        self.extra = extra
        self.calls = 0

    def synchronize(self) -> None:
        pass

    def allocated(self) -> int:
        return 10 * MiB

    def restart_peak(self) -> None:
        self.calls += 1

    def peak(self) -> int:
        return 10 * MiB + 512 + self.extra[self.calls - 1]  # a 288-byte output takes 512


def test_the_transient_is_the_peak_less_before_and_rounded_outputs() -> None:
    x, w = _meta((2, 4, 9, 9)), _meta((4, 4, 3, 3))
    params = ([1, 1], [0, 0], [3, 3], False, [0, 0], 1)  # output 2 x 4 x 3 x 3 floats
    scripted = _Scripted([2 * MiB, 7 * MiB, 4 * MiB])
    recorder = WorkspaceRecorder(scripted, device_type="meta")
    with recorder:
        for _ in range(3):
            aten.convolution(x, w, None, *params)
    key = cw.forward_key((x, w, None, *params), {}, cw.flags())
    assert recorder.entries == {key: 7 * MiB}  # the largest of the three calls


def test_output_bytes_counts_each_storage_once_rounded() -> None:
    a = torch.empty(72)  # 288 B -> 512
    b = torch.empty(1000)  # 4000 B -> 4096
    assert output_bytes((a, None, b, a[1:])) == 512 + 4096
    assert output_bytes(a) == 512
    assert output_bytes((torch.empty(0), None)) == 0


class _Allocator:
    """Stand-in for torch.cuda's counters on one GPU."""

    def __init__(self) -> None:
        self.allocated, self.peak = 0, 0

    def alloc(self, size: int) -> None:
        self.allocated += size
        self.peak = max(self.peak, self.allocated)

    def reset(self, index: int) -> None:
        self.peak = self.allocated


def _cuda_backend(counters: _Allocator) -> CudaBackend:
    cuda = types.SimpleNamespace(
        memory_allocated=lambda index: counters.allocated,
        max_memory_allocated=lambda index: counters.peak,
        memory_reserved=lambda index: counters.allocated,
        max_memory_reserved=lambda index: counters.peak,
        reset_peak_memory_stats=counters.reset,
        synchronize=lambda index: None,
    )
    backend = object.__new__(CudaBackend)  # no GPU here: only the counters are exercised
    backend._torch = types.SimpleNamespace(cuda=cuda)
    backend.index = 0
    backend._held_peak = backend._held_reserved = 0
    backend._fraction, backend._recorder, backend._recording = None, None, False
    return backend


def test_the_cuda_backend_keeps_the_test_s_peak_across_the_recorder_s_restarts() -> None:
    counters = _Allocator()
    backend = _cuda_backend(counters)
    window = _RecorderWindow(backend)
    counters.alloc(100 * MiB)
    counters.alloc(-60 * MiB)  # the test reached 100 MiB, holds 40 MiB
    window.restart_peak()  # a convolution starts
    counters.alloc(30 * MiB)
    assert window.peak() == 70 * MiB  # the call's own peak, for its transient
    assert backend.peak() == 100 * MiB  # the test's figure is what it was
    assert backend.peak_reserved() == 100 * MiB
    counters.alloc(50 * MiB)
    assert backend.peak() == 120 * MiB
    backend.reset_peak()  # a new step: the held peak goes
    assert backend.peak() == 120 * MiB == counters.allocated
    counters.alloc(-20 * MiB)
    assert backend.peak() == 120 * MiB


def test_the_cuda_backend_records_in_its_scopes_once_asked() -> None:
    backend = _cuda_backend(_Allocator())
    x, w = _meta((2, 4, 9, 9)), _meta((4, 4, 3, 3))
    params = ([1, 1], [0, 0], [3, 3], False, [0, 0], 1)
    with backend.test_scope(), backend.scope():
        aten.convolution(x, w, None, *params)
    assert backend.recorded_workspaces() == {}  # an ordinary run: no recorder at all
    # asked to record (the session does it when updating; meta stands in for the GPU)
    backend._recorder = WorkspaceRecorder(_RecorderWindow(backend), device_type="meta")
    # scope() inside test_scope(): the whole test's recorder, not a second one
    with backend.test_scope(), backend.scope():
        assert torch._C._len_torch_dispatch_stack() == 1
        aten.convolution(x, w, None, *params)
    assert torch._C._len_torch_dispatch_stack() == 0
    key = cw.forward_key((x, w, None, *params), {}, cw.flags())
    assert backend.recorded_workspaces() == {key: 0}
