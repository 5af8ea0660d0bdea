"""A whole vram test on one emulated card (``EstimateBackend.test_scope``): what the test's
body and its fixtures make counts exactly as inside ``scope()``; CUDA work outside every
vram test fails with the user's line and the fix (``session_scope``).

The steps follow what the plugin does around a test: ``test_scope`` entered before the
function-scoped fixtures are set up, ``begin_test`` and the zero point at the ``vram``
fixture's setup, ``scope()`` around each build step and workload, ``end_test`` at its
teardown, ``test_scope`` exited after the fixtures are torn down.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.base import collect_garbage  # noqa: E402
from pytest_vram.backends.estimate import EstimateUnsupported  # noqa: E402

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")


class Phases:
    """Model and peak bytes of one workload, counted as ``Meter`` counts them."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.start = 0

    def begin(self) -> None:
        collect_garbage()
        self.backend.begin_test()
        self.start = self.backend.allocated()

    def run(self, fn: Callable[[], Any]) -> tuple[int, int, Any]:
        model = self.backend.allocated() - self.start
        self.backend.reset_peak()
        with self.backend.scope():
            out = fn()
        return model, self.backend.peak() - self.start, out

    def finish(self) -> int:
        collect_garbage()
        leaked = self.backend.allocated() - self.start
        self.backend.end_test()
        return leaked


def _body_objects() -> dict[str, Any]:
    """What an ordinary training script makes before its loop: model, optimizer, scaler,
    a side stream and timing events, and a batch."""
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).to("cuda")
    return {
        "model": model,
        "opt": torch.optim.AdamW(model.parameters()),
        "scaler": torch.amp.GradScaler("cuda"),
        "stream": torch.cuda.Stream(),
        "events": (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)),
        "x": torch.randn(32, 256, device="cuda"),
    }


def _step(objs: dict[str, Any]) -> float:
    """Two mixed-precision training steps with a copy on a side stream."""
    model, opt, scaler, x = objs["model"], objs["opt"], objs["scaler"], objs["x"]
    start, end = objs["events"]
    start.record()
    for _ in range(2):
        with torch.cuda.stream(objs["stream"]):
            y = x.clone()
        torch.cuda.current_stream().wait_stream(objs["stream"])
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(y).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _doubled_sum(t: Any) -> Any:
    return (t * 2).sum()


@pytest.fixture
def backend() -> Iterator[Any]:
    b = create("estimate")
    b.warmup()
    yield b


def _made_in_the_body(backend: Any) -> tuple[int, int, int, bool]:
    phases = Phases(backend)
    with backend.test_scope():
        phases.begin()  # the vram fixture's setup
        objs = _body_objects()  # the test's body, outside vram.build / vram.run
        enabled = objs["scaler"].is_enabled()
        model, peak, _ = phases.run(functools.partial(_step, objs))
        del objs
        leaked = phases.finish()
    return model, peak, leaked, enabled


def _made_inside_the_scope(backend: Any) -> tuple[int, int, int, bool]:
    phases = Phases(backend)
    phases.begin()
    with backend.scope():
        objs = _body_objects()
    model, peak, _ = phases.run(functools.partial(_step, objs))
    enabled = objs["scaler"].is_enabled()
    del objs
    return model, peak, phases.finish(), enabled


@emulated
def test_what_the_body_makes_counts_exactly_as_inside_the_scope(backend: Any) -> None:
    body = _made_in_the_body(backend)
    scoped = _made_inside_the_scope(backend)
    assert body == scoped
    model, peak, leaked, enabled = body
    assert enabled  # a GradScaler made in the body is on, as on a GPU
    assert model > 0 and peak > model and leaked == 0


@emulated
def test_a_fixture_made_before_the_vram_fixture_counts_as_on_a_gpu(backend: Any) -> None:
    """A function-scoped fixture set up before ``vram`` holds its tensors at the zero point,
    as on the ``cuda`` backend; what it holds stays usable in the workload."""
    phases = Phases(backend)
    with backend.test_scope():
        weights = torch.empty(1 << 20, device="cuda")  # a fixture set up first
        phases.begin()
        held_at_start = phases.start
        model, peak, _ = phases.run(functools.partial(_doubled_sum, weights))
        phases.finish()
    reference = Phases(backend)  # the same tensor made after the zero point instead
    reference.begin()
    with backend.scope():
        weights = torch.empty(1 << 20, device="cuda")
    ref_model, ref_peak, _ = reference.run(functools.partial(_doubled_sum, weights))
    del weights
    reference.finish()
    assert held_at_start == 4 << 20
    assert model == 0 and ref_model == 4 << 20
    assert peak == ref_peak - ref_model > 4 << 20


@emulated
def test_inside_the_test_scope_scope_is_a_no_op_that_still_names_refusals(backend: Any) -> None:
    phases = Phases(backend)
    with backend.test_scope():
        phases.begin()
        x = torch.ones(4, device="cuda") + torch.randn(4, device="cuda")
        with pytest.raises(EstimateUnsupported, match="test_whole_test.py"):
            phases.run(lambda: bool((x > 0).all()))
        phases.finish()
    assert torch.cuda.is_available() is False  # nothing stays after the test


@emulated
def test_the_test_scope_drops_the_test_state_and_starts_fresh(backend: Any) -> None:
    with backend.test_scope():
        kept = torch.empty(1000, device="cuda")
    assert backend.allocated() == 4096  # the last test's counters, until the next begins
    with backend.test_scope():
        assert backend.allocated() == 0
        assert torch.cuda.memory_allocated() == 0
    del kept


@emulated
def test_cuda_work_outside_a_vram_test_names_the_line_and_the_fix(backend: Any) -> None:
    with backend.session_scope():
        with pytest.raises(EstimateUnsupported) as info:
            torch.zeros(3, device="cuda")  # the line the message names
        with backend.test_scope():
            inside = torch.zeros(3, device="cuda")
    message = str(info.value)
    assert "CUDA work outside a vram test" in message
    assert "test_whole_test.py" in message and "torch.zeros(3" in message
    assert "vram.device" in message and "--vram-backend=cuda" in message
    assert inside.device.type == "cuda"
    with pytest.raises((AssertionError, RuntimeError), match="(?i)cuda") as plain:
        torch.zeros(3, device="cuda")  # the session's end: torch's own behaviour again
    assert not isinstance(plain.value, EstimateUnsupported)


@emulated
def test_a_runtime_call_the_emulation_does_not_answer_is_named(backend: Any) -> None:
    refused = pytest.raises(EstimateUnsupported, match="does not emulate the CUDA runtime")
    with backend.session_scope(), backend.test_scope(), refused:
        torch.cuda.ipc_collect()  # reaches torch's lazy initialisation
