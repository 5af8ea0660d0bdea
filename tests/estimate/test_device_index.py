"""A device given by its index inside the estimator's scope is the emulated card's (a
CPU-only torch resolves indices as its accelerator's, and has none), and torch is as it
was outside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402
from pytest_vram.backends.estimate.device_index import FACTORIES  # noqa: E402

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")
pytestmark = emulated
CUDA0 = torch.device("cuda", 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.tensor([0], device=0),
        lambda: torch.zeros(4, device=0),
        lambda: torch.randn(4, device=0),
        lambda: torch.zeros(4).to(0),
        lambda: torch.zeros(4).to(device=0),
        lambda: torch.zeros(4).cuda(0),
        lambda: torch.zeros(4).new_zeros(4, device=0),
        lambda: torch.zeros(4, device=torch.device(0)),
    ],
    ids=["tensor", "zeros", "randn", "to", "to-keyword", "cuda", "new_zeros", "torch.device"],
)
def test_an_index_is_the_emulated_card(scope: Any, make: Callable[[], Any]) -> None:
    before = scope.allocated()
    t = make()
    assert t.device == CUDA0
    assert scope.allocated() - before == round_size(t.numel() * t.element_size())


def test_a_module_moved_to_an_index(scope: Any) -> None:
    layer = nn.Linear(10, 10).to(0)
    assert layer.weight.device == CUDA0
    assert nn.Linear(10, 10).cuda(0).bias.device == CUDA0
    assert nn.Linear(10, 10).to(device=0, dtype=torch.float16).weight.dtype == torch.float16


def test_devices_are_devices(scope: Any) -> None:
    made = torch.device(0)
    assert isinstance(made, torch.device) and type(made) is not torch.device
    assert made == CUDA0 and torch.device("cuda") == torch.device("cuda")
    assert torch.device("cuda", 0) == CUDA0 and torch.device(type="cpu").type == "cpu"
    assert issubclass(type(CUDA0), torch.device)
    assert torch.zeros(2).device.type == "cpu"  # no index: the CPU, as torch says


def test_torch_is_as_it_was_outside(backend: Any) -> None:
    originals = {
        name: getattr(torch, name) for name in ("device", *FACTORIES) if hasattr(torch, name)
    }
    to, parse_to = torch.Tensor.to, torch._C._nn._parse_to
    backend.begin_test()
    with backend.scope():
        assert torch.device is not originals["device"]
    backend.end_test()
    assert {name: getattr(torch, name) for name in originals} == originals
    assert torch.Tensor.to is to and torch._C._nn._parse_to is parse_to
    assert "to" not in vars(torch.Tensor)


def test_the_device_context_fills_in_the_device_in_every_scope(backend: Any) -> None:
    """``with torch.device("cuda"):`` fills in the factories of a set torch caches once: the
    set holds torch's own factories, whichever scope computed it first."""
    torch.utils._device._device_constructors.cache_clear()
    for _ in range(2):
        backend.begin_test()
        try:
            with backend.scope(), torch.device("cuda"):
                assert nn.Linear(4, 4).weight.device == CUDA0
        finally:
            backend.end_test()
    assert torch.empty in torch.utils._device._device_constructors()
