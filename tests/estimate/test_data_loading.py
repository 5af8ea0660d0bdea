"""``torch.utils.data`` on the estimator: a DataLoader's seed and, where it decides no
memory, its order are drawn on the host for real; loaders with workers load in the
process; an order that could change what is allocated is refused with the fix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
data = pytest.importorskip("torch.utils.data")

from pytest_vram.backends.estimate import EstimateUnsupported  # noqa: E402
from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402


class Rows(data.Dataset):  # type: ignore[type-arg]
    """A map-style dataset of rows of different lengths, recording the indices asked for."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.asked: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        self.asked.append(i)
        return torch.zeros(i + 1)


def _pad(batch: list[Any]) -> Any:
    return torch.nn.utils.rnn.pad_sequence(batch, batch_first=True)


def test_a_shuffled_tensor_dataset_is_iterated_and_each_batch_counted(backend: Any) -> None:
    """The quickstart's loop inside the measured call: its peak is one batch moved to the
    device (every order gives batches of the same shapes)."""
    loader = data.DataLoader(data.TensorDataset(torch.randn(16, 8)), batch_size=4, shuffle=True)

    def inside() -> int:
        seen = 0
        for (x,) in loader:
            x = x.to("cuda")
            seen += x.shape[0]
        return seen

    meter = Meter(backend)
    meter.start()
    assert meter.run(inside) == 16
    meter.finish()
    assert meter.measurements[0].peak_bytes == round_size(4 * 8 * 4)


def test_a_loader_made_in_the_scope_iterates_in_order(scope: Any) -> None:
    rows = Rows()
    batches = [b.shape for b in data.DataLoader(rows, batch_size=4, collate_fn=_pad)]
    assert rows.asked == list(range(8))
    assert batches == [(4, 4), (4, 8)]


def test_a_shuffled_order_that_may_change_the_batches_is_refused_with_the_fix(
    scope: Any,
) -> None:
    loader = data.DataLoader(Rows(), batch_size=4, shuffle=True, collate_fn=_pad)
    with pytest.raises(EstimateUnsupported) as info:
        next(iter(loader))
    message = str(info.value)
    assert "test_data_loading.py" in message
    assert "generator=torch.Generator().manual_seed(0)" in message


def test_a_seeded_generator_gives_the_real_order(scope: Any) -> None:
    """The order is drawn from the loader's own generator, as on the GPU machine."""
    rows = Rows()
    loader = data.DataLoader(
        rows,
        batch_size=4,
        shuffle=True,
        collate_fn=_pad,
        generator=torch.Generator().manual_seed(3),
    )
    shapes = [b.shape for b in loader]
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        real = Rows()
        expected = [
            b.shape
            for b in data.DataLoader(
                real,
                batch_size=4,
                shuffle=True,
                collate_fn=_pad,
                generator=torch.Generator().manual_seed(3),
            )
        ]
    assert rows.asked == real.asked and rows.asked != list(range(8))
    assert shapes == expected


def test_random_split(scope: Any) -> None:
    tensors = data.TensorDataset(torch.randn(10, 3))
    train, val = data.random_split(tensors, [0.8, 0.2])
    assert (len(train), len(val)) == (8, 2)
    assert sorted(train.indices + val.indices) == list(range(10))
    with pytest.raises(EstimateUnsupported, match="random_split"):
        data.random_split(Rows(10), [0.5, 0.5])
    left, right = data.random_split(Rows(10), [0.5, 0.5], generator=torch.Generator())
    assert sorted(left.indices + right.indices) == list(range(10))


def test_workers_load_in_the_process(scope: Any) -> None:
    """Worker processes cannot take fake tensors; a map-style dataset gives the same
    batches in the process, in the same order."""
    rows = Rows()
    loader = data.DataLoader(rows, batch_size=4, num_workers=2, pin_memory=True, collate_fn=_pad)
    assert [b.shape for b in loader] == [(4, 4), (4, 8)]
    assert rows.asked == list(range(8))
    persistent = data.DataLoader(
        data.TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=2, persistent_workers=True
    )
    for _ in range(2):
        assert [x.shape for (x,) in persistent] == [(4, 2), (4, 2)]


class Stream(data.IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter([torch.zeros(2)] * 4)


def test_an_iterable_dataset_with_workers_is_refused_with_the_fix(scope: Any) -> None:
    loader = data.DataLoader(Stream(), batch_size=2, num_workers=2)
    with pytest.raises(EstimateUnsupported) as info:
        iter(loader)
    assert "IterableDataset with worker processes" in str(info.value)
    assert "num_workers=0" in str(info.value)
    assert [b.shape for b in data.DataLoader(Stream(), batch_size=2)] == [(2, 2), (2, 2)]


def test_outside_the_scope_torch_is_as_it_was(backend: Any) -> None:
    backend.begin_test()
    with backend.scope():
        pass
    backend.end_test()
    rows = Rows()
    loader = data.DataLoader(rows, batch_size=4, shuffle=True, collate_fn=_pad)
    assert sum(b.shape[0] for b in loader) == 8
    assert sorted(rows.asked) == list(range(8))
    assert data.dataset.randperm is torch.randperm
