"""How the backends change torch: every scope restores exactly what it replaced, and the
changes that stay for the process are exactly the declared ones (``backends.patching``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_vram.backends import patching
from pytest_vram.backends.patching import PROCESS_WIDE, Patches

torch = pytest.importorskip("torch")

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.estimate import EstimateUnsupported, RNNNotModelled  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402


class _Base:
    inherited = "base"


class _Owner(_Base):
    own = "own"
    static = staticmethod(len)


def test_a_replaced_attribute_is_the_original_object_again() -> None:
    module = types.ModuleType("m")
    module.f = original = object()
    with Patches() as patches:
        patches.set(module, "f", 1)
        patches.set(_Owner, "own", 2)
        patches.set(_Owner, "static", 3)
        assert (module.f, _Owner.own, _Owner.static) == (1, 2, 3)
    assert module.f is original
    assert _Owner.own == "own"
    assert isinstance(vars(_Owner)["static"], staticmethod)  # the raw object, not len


def test_an_attribute_the_owner_did_not_hold_is_deleted_again() -> None:
    with Patches() as patches:
        patches.set(_Owner, "inherited", "patched")
        patches.set(_Owner, "new", "patched")
    assert "inherited" not in vars(_Owner) and _Owner.inherited == "base"
    assert not hasattr(_Owner, "new")


def test_restored_newest_first_also_on_an_exception() -> None:
    module = types.ModuleType("m")
    module.f = "original"
    steps: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Patches() as patches:
        patches.set(module, "f", "first")
        patches.on_restore(lambda: steps.append(module.f))
        patches.set(module, "f", "second")
        raise RuntimeError("boom")
    assert steps == ["first"]  # the later replacement was undone before the step ran
    assert module.f == "original"


def test_every_step_is_restored_even_if_one_fails() -> None:
    module = types.ModuleType("m")
    module.f = "original"
    patches = Patches()
    patches.set(module, "f", "patched")
    patches.on_restore(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        patches.restore()
    assert module.f == "original"


def test_an_undeclared_process_wide_change_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'no-such-change' is not declared.*PROCESS_WIDE"):
        patching.install_for_process("no-such-change")


def test_every_process_wide_change_says_why() -> None:
    names = [entry.name for entry in PROCESS_WIDE]
    assert len(names) == len(set(names))
    assert all(entry.what and entry.why and entry.made_by for entry in PROCESS_WIDE)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, str, Any]]]:
    """Every (owner, name, what the owner held before) a Patches sets during the test."""
    seen: list[tuple[Any, str, Any]] = []
    original_set = Patches.set

    def recording(self: Patches, owner: Any, name: str, value: object) -> None:
        seen.append((owner, name, vars(owner).get(name, patching._ABSENT)))
        original_set(self, owner, name, value)

    monkeypatch.setattr(Patches, "set", recording)
    yield seen


def _sharded_step(raise_inside: bool) -> None:
    """A build and a training step that reach every scope change: the emulated runtime,
    autocast, SDPA, an RNN, copies, an optimizer, transformers and a simulated world."""
    import copy

    from torch.distributed.fsdp import fully_shard

    from pytest_vram.pytest_plugin import world

    pytest.importorskip("transformers.utils.import_utils")
    backend = create("estimate")
    meter = Meter(backend)
    with world.simulated(2, "test_patching"):
        meter.start()

        def build() -> Any:
            with torch.device("meta"):
                model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
            fully_shard(model)
            return model.to_empty(device="cuda"), copy.deepcopy(torch.empty(4, device="cuda"))

        def step(built: Any) -> None:
            model, _ = built
            optimizer = torch.optim.AdamW(model.parameters())
            x = torch.empty(4, 8, 64, device="cuda")
            torch.nn.GRU(64, 64, device="cuda")(x)
            with torch.autocast("cuda", dtype=torch.float16):
                q = torch.nn.functional.scaled_dot_product_attention(x[None], x[None], x[None])
                model(q).float().sum().backward()
            optimizer.step()
            torch.cuda.synchronize()
            if raise_inside:
                torch.empty(3, device="cuda").nonzero()  # value-dependent: refused

        built = meter.build(build)
        try:
            meter.run(step, built)
        finally:
            del built
            meter.finish()


@pytest.mark.filterwarnings("ignore:PyTorch was compiled without cuDNN")
@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
@pytest.mark.parametrize("raise_inside", [False, True], ids=["passing", "refused"])
def test_after_a_scope_every_patched_attribute_is_the_original_again(
    recorded: list[tuple[Any, str, Any]], raise_inside: bool
) -> None:
    import torch.distributed.fsdp  # noqa: F401  (its modules are patched: held before)

    with pytest.warns(RNNNotModelled):
        if raise_inside:
            with pytest.raises(EstimateUnsupported):
                _sharded_step(raise_inside)
        else:
            _sharded_step(raise_inside)
    patched = {(id(owner), name): (owner, name, before) for owner, name, before in recorded}
    names = {name for _, name, _ in patched.values()}
    reached = {"synchronize", "memory_allocated", "__deepcopy__", "swap_tensors", "gru"}
    reached |= {"_foreach_supported_types", "is_fake_tensor", "alloc_storage", "__init__"}
    assert reached <= names
    changed = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name, before in patched.values()
        if vars(owner).get(name, patching._ABSENT) is not before
    ]
    assert changed == []


PROCESS = """
import json
import torch
from pytest_vram.pytest_plugin import world
from pytest_vram.backends import create, patching
from pytest_vram.measure.meter import Meter
from torch.distributed.fsdp import fully_shard

backend = create("estimate")
backend.warmup()
meter = Meter(backend)
with world.simulated(2, "process"):
    meter.start()
    def build():
        model = torch.nn.Linear(64, 64, device="cuda")
        fully_shard(model)
        return model
    model = meter.build(build)
    meter.run(lambda m: m(torch.empty(8, 64, device="cuda")).sum().backward(), model)
    del model
    meter.finish()
print(json.dumps(sorted(patching.installed_for_process())))
"""


def test_what_stays_for_the_process_is_exactly_the_declared_list() -> None:
    """In a fresh process, after a measured sharded step: the estimator's own changes, the
    frozen generation of the collections around the measurement, nothing undeclared."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROCESS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = set(json.loads(out.strip().splitlines()[-1]))
    expected = {"gc-freeze", "missing-meta-kernels", "dtensor-rng-redirect"}
    if not torch.cuda.is_available() and not torch.backends.cuda.is_built():
        expected |= {"cuda-device-guard", "sdpa-math-kernel"}
    assert installed == expected
    assert installed <= {entry.name for entry in PROCESS_WIDE}


def test_the_process_wide_kernels_are_registered(backend: Any) -> None:
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    assert "missing-meta-kernels" in patching.installed_for_process()
    assert has_kernel("aten::_thnn_fused_gru_cell", "Meta")
    if backend._emulate and not torch.backends.cuda.is_built():
        assert {"cuda-device-guard", "sdpa-math-kernel"} <= patching.installed_for_process()
        assert has_kernel("aten::_scaled_dot_product_attention_math", "AutogradCUDA")
