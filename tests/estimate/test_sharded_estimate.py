"""Sharded training on the estimator: FSDP2 ``fully_shard`` and DDP over a simulated world of
N ranks (torch's fake process group, one process, no GPU), one rank measured.

Figures are checked against what FSDP2 and DDP allocate by their documented design: FSDP2
keeps a padded ``1/N`` shard of every parameter (rows rounded up to a multiple of N),
frees the unsharded parameters after use and leaves sharded gradients; DDP keeps a flat
gradient bucket as large as the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

if not dist.is_available():  # pragma: no cover - torch built without distributed
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import torch.nn as nn  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from pytest_vram.measure.meter import Meter  # noqa: E402
from pytest_vram.pytest_plugin import world  # noqa: E402

FP16 = 2  # bytes per element
ROWS, COLS, BATCH = 1024, 1024, 8


def round512(n: int) -> int:
    return max(512, math.ceil(n / 512) * 512)


@pytest.fixture
def ranks(request: pytest.FixtureRequest) -> Iterator[int]:
    """A simulated world of ``request.param`` ranks for one test."""
    with world.simulated(request.param, request.node.nodeid):
        yield request.param


def two_layers(rows: int = ROWS) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(COLS, rows, bias=False, device="meta", dtype=torch.float16),
        nn.Linear(rows, COLS, bias=False, device="meta", dtype=torch.float16),
    )


def sharded(rows: int = ROWS) -> tuple[nn.Module, torch.Tensor]:
    model = two_layers(rows)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cuda")
    return model, torch.empty(BATCH, COLS, device="cuda", dtype=torch.float16)


def measure(backend: Any, build: Callable[[], Any], work: Callable[[Any], Any]) -> tuple[Any, int]:
    """(measurement, bytes still allocated after the workload, from the test's start)."""
    meter = Meter(backend)
    meter.start()
    zero = backend.allocated()
    built = meter.build(build)
    meter.run(work, built)
    after = backend.allocated() - zero
    del built
    meter.finish()
    return meter.measurements[0], after


def train(built: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = built
    model(x).sum().backward()


def shard_bytes(rows: int, cols: int, n: int) -> int:
    """One rank's padded shard of a (rows, cols) fp16 weight: ceil(rows / n) rows."""
    return round512(math.ceil(rows / n) * cols * FP16)


@pytest.mark.parametrize("ranks", [1, 2, 4, 8], indirect=True)
def test_fully_shard_keeps_one_shard_per_rank(backend: Any, ranks: int) -> None:
    record, _ = measure(backend, sharded, lambda built: None)
    expected = 2 * shard_bytes(ROWS, COLS, ranks) + round512(BATCH * COLS * FP16)
    assert record.model_bytes == expected


@pytest.mark.parametrize("ranks", [4], indirect=True)
def test_parameter_count_is_the_whole_models(backend: Any, ranks: int) -> None:
    record, _ = measure(backend, lambda: sharded()[0], lambda model: None)
    assert record.params == 2 * ROWS * COLS  # DTensor parameters count their global size


@pytest.mark.parametrize("ranks", [3], indirect=True)
def test_uneven_shards_are_padded_to_the_largest(backend: Any, ranks: int) -> None:
    rows = 1000  # 334 + 333 + 333 rows; FSDP2 pads every rank's shard to 334 rows
    record, _ = measure(backend, lambda: sharded(rows), lambda built: None)
    first = shard_bytes(rows, COLS, ranks)  # Linear(COLS, rows).weight: (rows, COLS)
    second = shard_bytes(COLS, rows, ranks)  # Linear(rows, COLS).weight: (COLS, rows)
    assert record.model_bytes == first + second + round512(BATCH * COLS * FP16)


@pytest.mark.parametrize("ranks", [2, 4], indirect=True)
def test_training_step_frees_unsharded_parameters_and_keeps_sharded_gradients(
    backend: Any, ranks: int
) -> None:
    record, after = measure(backend, sharded, train)
    shards = 2 * shard_bytes(ROWS, COLS, ranks)
    # The unsharded parameters (storage.resize_ to 0 after backward) and the all-gather
    # and reduce-scatter buffers are gone; the gradients are shards like the parameters.
    assert after == record.model_bytes + shards
    # While a layer computes, its whole weight is there: all-gathered, then unsharded.
    assert record.activation_bytes >= 2 * ROWS * COLS * FP16


@pytest.mark.parametrize("n", [2, 4, 8])
def test_more_ranks_lower_the_training_peak(backend: Any, n: int) -> None:
    peaks = {}
    for size in (n // 2, n):
        with world.simulated(size, f"world of {size}"):
            peaks[size] = measure(backend, sharded, train)[0].peak_bytes
    assert peaks[n] < peaks[n // 2]


@pytest.mark.parametrize("ranks", [4], indirect=True)
def test_default_mesh_is_a_cuda_mesh(backend: Any, ranks: int) -> None:
    seen: dict[str, Any] = {}

    def build() -> tuple[nn.Module, torch.Tensor]:
        built = sharded()
        weight = built[0][0].weight
        seen["mesh"] = weight.device_mesh.device_type
        seen["local"] = weight.to_local().fake_device.type
        return built

    measure(backend, build, lambda built: None)
    assert seen == {"mesh": "cuda", "local": "cuda"}


@pytest.mark.parametrize("ranks", [4], indirect=True)
def test_explicit_device_mesh_inside_the_scope(backend: Any, ranks: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    def build() -> tuple[nn.Module, torch.Tensor]:
        mesh = init_device_mesh("cuda", (ranks,))
        model = two_layers()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cuda")
        return model, torch.empty(BATCH, COLS, device="cuda", dtype=torch.float16)

    record, _ = measure(backend, build, train)
    assert record.model_bytes == 2 * shard_bytes(ROWS, COLS, ranks) + round512(BATCH * COLS * FP16)


@pytest.mark.parametrize("ranks", [4], indirect=True)
def test_a_mesh_of_unknown_ranks_is_refused_with_the_fix(backend: Any, ranks: int) -> None:
    from torch.distributed.device_mesh import DeviceMesh

    def build() -> Any:
        return DeviceMesh("cuda", torch.arange(ranks))  # a fake tensor: no values

    with pytest.raises(RuntimeError, match="unknown ranks.*use init_device_mesh"):
        measure(backend, build, lambda mesh: None)


@pytest.mark.parametrize("ranks", [4], indirect=True)
def test_ddp_keeps_a_gradient_bucket_as_large_as_the_parameters(backend: Any, ranks: int) -> None:
    weights = 2 * ROWS * COLS * FP16

    def build() -> tuple[nn.Module, torch.Tensor]:
        model = two_layers()
        model.to_empty(device="cuda")
        return DistributedDataParallel(model), torch.empty(
            BATCH, COLS, device="cuda", dtype=torch.float16
        )

    record, after = measure(backend, build, train)
    inputs = round512(BATCH * COLS * FP16)
    assert record.model_bytes == 2 * weights + inputs  # parameters + one flat bucket
    assert after == record.model_bytes + weights  # + the gradients


@pytest.mark.parametrize("ranks", [2], indirect=True)
def test_emulation_is_undone_outside_the_scope(backend: Any, ranks: int) -> None:
    from torch.distributed import device_mesh
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    before = (
        device_mesh._get_device_handle,
        device_mesh.DeviceMesh.__init__,
        _fsdp_param.alloc_storage,
        _fsdp_param_group.alloc_storage,
        torch._C._get_accelerator,
        torch.accelerator.current_stream,
        DistributedDataParallel.__init__,
    )
    measure(backend, sharded, train)
    after = (
        device_mesh._get_device_handle,
        device_mesh.DeviceMesh.__init__,
        _fsdp_param.alloc_storage,
        _fsdp_param_group.alloc_storage,
        torch._C._get_accelerator,
        torch.accelerator.current_stream,
        DistributedDataParallel.__init__,
    )
    assert after == before
    assert torch.cuda.is_available() is False or torch.backends.cuda.is_built()


def test_a_world_exists_only_inside_the_simulation() -> None:
    with world.simulated(4, "t"):
        assert dist.get_world_size() == 4 and dist.get_rank() == 0
        assert dist.get_backend() == "fake"
    assert not dist.is_initialized()


def test_a_second_world_is_refused_with_the_fix() -> None:
    refused = pytest.raises(world.WorldError, match=r"t: .*world_size=4.*exists already")
    with world.simulated(2, "t"), refused, world.simulated(4, "t"):
        pass  # pragma: no cover
