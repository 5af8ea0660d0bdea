"""``torch.utils.data`` inside the estimator's scope: the draws that decide no memory.

Inside the scope CPU tensors are fake too, and a ``DataLoader`` reads random numbers
from tensors: its base seed (``torch.empty((), dtype=torch.int64).random_().item()``, at
every ``iter(loader)``), a shuffling sampler's order (``torch.randperm(n).tolist()``), and
``random_split``'s permutation. Fake tensors have no values, so every loop over a loader,
shuffled or not, would be refused. :func:`install` draws them on the host for real, where
their values cannot change what the GPU allocates:

* the base seed seeds worker processes (and datapipes); in the process itself it decides
  nothing. Drawn for real, from the loader's generator or torch's default one, as on a GPU
  machine;
* the order of the samples decides which items form a batch. When every item has the same
  shapes and dtypes (a ``TensorDataset``, or a ``Subset`` of one: ``random_split`` of a
  ``TensorDataset``), every order gives the same batches' shapes, so the order is drawn
  for real. Otherwise (a dataset whose items may differ in size, padded by its
  ``collate_fn``) only an order that is the same on both machines is: a sequential one,
  or one drawn from a ``torch.Generator`` the sampler was given (not torch's default
  generator, whose state the estimator's fake draws leave behind the GPU run's). Any
  other order is left to the fake mode, which refuses it with the fix
  (``refusals.value_dependent``).

A loader with worker processes (``num_workers=2``) loads in the test's process instead:
fake tensors cannot cross a process boundary, and for a map-style dataset the workers
produce the same batches, in the sampler's order, as the process itself would (on the
host: no worker touches the GPU). An ``IterableDataset`` is different: each worker
iterates its own copy (sharded by ``get_worker_info()``, or duplicated), so its batches
depend on the workers, and it is refused with the fix.

Nothing here draws on the device or changes what a batch holds: the fetched items, the
collated batch and its ``.to(device)`` stay fake and are counted as before.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils.data import dataloader, dataset, sampler

from pytest_vram.backends.estimate.refusals import EstimateUnsupported, user_frames, user_line
from pytest_vram.backends.patching import Patches


def same_shaped_items(data: object) -> bool:
    """Whether every item of ``data`` has the same shapes and dtypes, by construction: a
    ``TensorDataset`` (its items are rows of its tensors) or a ``Subset`` of one."""
    while isinstance(data, dataset.Subset):
        data = data.dataset
    return isinstance(data, dataset.TensorDataset)


def _own_generator(generator: object) -> bool:
    return isinstance(generator, torch.Generator) and generator is not torch.default_generator


def reproducible_order(index_sampler: object) -> bool:
    """Whether the sampler's order is the same on any machine: sequential, or drawn only
    from a ``torch.Generator`` it was given (``RandomSampler``, ``SubsetRandomSampler``,
    ``WeightedRandomSampler`` with ``generator=``)."""
    if isinstance(index_sampler, sampler.BatchSampler):
        index_sampler = index_sampler.sampler
    if isinstance(index_sampler, sampler.SequentialSampler):
        return True
    if isinstance(index_sampler, dataloader._InfiniteConstantSampler):
        return True  # an IterableDataset: no indices at all
    if isinstance(
        index_sampler,
        (sampler.RandomSampler, sampler.SubsetRandomSampler, sampler.WeightedRandomSampler),
    ):
        return _own_generator(index_sampler.generator)
    return False


def install(patches: Patches) -> None:
    """Draw a ``DataLoader``'s seed, and its order where the order decides no memory, on
    the host for real, for one scope (see the module docstring)."""
    base = dataloader._BaseDataLoaderIter
    original_init = base.__init__
    original_next_index = base._next_index

    def __init__(self: Any, loader: Any) -> None:
        # Only the base seed is a tensor here (the sampler's iterator starts lazily).
        with unset_fake_temporarily():
            original_init(self, loader)

    def _next_index(self: Any) -> Any:
        if same_shaped_items(self._dataset) or reproducible_order(self._index_sampler):
            with unset_fake_temporarily():
                return original_next_index(self)
        return original_next_index(self)

    patches.set(base, "__init__", __init__)
    patches.set(base, "_next_index", _next_index)
    patches.set(dataloader.DataLoader, "_get_iterator", _get_iterator)
    patches.set(dataset, "randperm", _split_permutation)


class _InProcessIter(dataloader._SingleProcessDataLoaderIter):
    """A loader with workers, iterated in the process (``_SingleProcessDataLoaderIter``
    refuses ``num_workers > 0``; everything else is its own)."""

    def __init__(self, loader: Any) -> None:
        dataloader._BaseDataLoaderIter.__init__(self, loader)
        self._num_workers = 0
        self._dataset_fetcher = dataloader._DatasetKind.create_fetcher(
            self._dataset_kind,
            self._dataset,
            self._auto_collation,
            self._collate_fn,
            self._drop_last,
        )


def _get_iterator(self: Any) -> Any:
    """``DataLoader._get_iterator``: a loader with workers loads in the process."""
    if self.num_workers == 0:
        return dataloader._SingleProcessDataLoaderIter(self)
    if self._dataset_kind == dataloader._DatasetKind.Iterable:
        raise EstimateUnsupported(
            f"the estimate backend cannot load an IterableDataset with worker processes, "
            f"at {user_line(user_frames())}: each of the {self.num_workers} workers iterates "
            "its own copy of the dataset, so the batches depend on the workers, and fake "
            "tensors cannot cross a process boundary. Use num_workers=0 for the estimate "
            "(the batches a map-style dataset gives do not depend on the workers), measure "
            "this test with --vram-backend=cuda, or mark it "
            "@pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."
        )
    return _InProcessIter(self)


def _split_permutation(n: int, *args: Any, generator: Any = None, **kwargs: Any) -> Any:
    """``randperm`` as ``random_split`` calls it (its only caller in ``dataset``): for real
    where the split decides no memory, the dataset's items being all alike, or where it is
    drawn from the caller's own generator; else fake (and its ``tolist()`` refused)."""
    caller = sys._getframe(1)
    data = caller.f_locals.get("dataset") if caller.f_code.co_name == "random_split" else None
    if same_shaped_items(data) or _own_generator(generator):
        with unset_fake_temporarily():
            return torch.randperm(n, *args, generator=generator, **kwargs)
    return torch.randperm(n, *args, generator=generator, **kwargs)
