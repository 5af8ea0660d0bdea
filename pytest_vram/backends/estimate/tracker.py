"""The storages of fake CUDA tensors, replayed through the allocator model.

Every new fake CUDA storage is a request to the model of the CUDA caching allocator
(:mod:`.allocator`); a weak reference on the storage frees it when the storage dies, as
the caching allocator frees a block when its tensor's storage goes. The transient
buffers a kernel allocates inside one call (:mod:`.kernels`) are allocated and freed at
once, so they count at the peak only. One tracker per test.
"""

from __future__ import annotations

import functools
import os
import warnings
import weakref
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor

from pytest_vram.backends.estimate.allocator import Block, CachingAllocatorModel, round_size
from pytest_vram.backends.estimate.kernels import convolution
from pytest_vram.backends.estimate.known import KnownValues
from pytest_vram.backends.estimate.refusals import user_frames

_TORCH_DIR = os.path.dirname(torch.__file__)


class StorageTracker:
    """Allocates a block for every new fake CUDA storage and frees it when the storage dies.

    One tracker per test, so weak-reference callbacks of storages a previous test leaked
    land in that test's (discarded) pool, never in the current one.
    """

    def __init__(
        self,
        allocator: CachingAllocatorModel,
        observer: Any = None,
        known: KnownValues | None = None,
        workspaces: convolution.ProjectWorkspaces | None = None,
    ) -> None:
        self.allocator = allocator
        #: the project's recorded convolution workspaces (``kernels.convolution``), in
        #: force while the scope is active
        self.workspaces = workspaces
        #: the test's known tensor values: a resized storage's contents are new
        self.known = known
        self._live: dict[int, tuple[weakref.ref[Any], Block | None]] = {}
        #: optional attribution hook (``pytest_vram.measure.attribution.Collector``): told of every
        #: storage made and released, and of every transient buffer
        self.observer = observer
        #: the warnings this test was given (each category once: a convolution whose
        #: workspace is unknown, an RNN)
        self._warned: set[type[Warning]] = set()

    def track(self, out: object) -> None:
        """Account for the storages of an operator's outputs (tensors, tuples, lists)."""
        if isinstance(out, FakeTensor):
            self._track_tensor(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                if isinstance(item, (FakeTensor, tuple, list)):
                    self.track(item)

    def track_planned(self, tensors: list[Any]) -> None:
        """Account for exactly ``tensors``, in order, whatever device the meta kernel gave
        them (see ``kernels.OUTPUT_PLAN``)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._track_tensor(t, any_device=True)

    def _track_tensor(self, t: torch.Tensor, any_device: bool = False) -> None:
        if not any_device and t.fake_device.type != "cuda":  # type: ignore[attr-defined]
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return  # a view, an in-place result or an output seen before
        block = self.allocator.malloc(storage.nbytes())
        self._live[key] = (weakref.ref(storage, functools.partial(self._release, key)), block)
        if self.observer is not None and block is not None:
            self.observer.allocated(key, block.size)

    def _release(self, key: int, _ref: object) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.allocator.free(entry[1])
            if self.observer is not None and entry[1] is not None:
                self.observer.freed(key)

    def resized(self, storage: Any) -> None:
        """Re-count a live storage whose size changed in place (``storage.resize_``)."""
        key = storage._cdata
        if self.known is not None:
            self.known.forget(storage)
        entry = self._live.pop(key, None)
        if entry is not None:
            self.allocator.free(entry[1])
            if self.observer is not None and entry[1] is not None:
                self.observer.freed(key)
        block = self.allocator.malloc(storage.nbytes()) if storage.nbytes() else None
        self._live[key] = (weakref.ref(storage, functools.partial(self._release, key)), block)
        if self.observer is not None and block is not None:
            self.observer.allocated(key, block.size)

    def transient(self, sizes: list[int]) -> None:
        """Allocate and immediately free buffers a kernel uses internally (peak only)."""
        if self.observer is not None:
            self.observer.transient([round_size(n) for n in sizes])
        blocks = [self.allocator.malloc(n) for n in sizes]
        for block in reversed(blocks):
            self.allocator.free(block)
        unmodelled = getattr(sizes, "unmodelled", None)
        if unmodelled is not None:
            self._unmodelled(unmodelled)

    def _unmodelled(self, description: str) -> None:
        """Warn, once per test, of a convolution whose cuDNN workspace is not known."""
        self.warn_once(
            convolution.ConvWorkspaceUnknown, unknown_workspace(description, self.workspaces)
        )

    def warn_once(self, category: type[Warning], message: str) -> None:
        """Warn of ``category`` at the user's line, the first time in this test."""
        if category in self._warned:
            return
        self._warned.add(category)
        frames = user_frames()
        where = next((f for f in frames if not f.filename.startswith(_TORCH_DIR)), None)
        warnings.warn_explicit(
            category(message),
            category,
            where.filename if where else "<unknown>",
            (where.lineno or 0) if where else 0,
        )


def unknown_workspace(description: str, workspaces: convolution.ProjectWorkspaces | None) -> str:
    """The :class:`~.kernels.convolution.ConvWorkspaceUnknown` message: what is not known,
    where it was looked for, and the run that records it."""
    arch, cudnn = convolution.current_setup()
    name, _ = convolution.current_table()
    setup = f"{arch}_cudnn{cudnn}"
    recorded = (
        workspaces.source
        if workspaces is not None and workspaces.source
        else f"<baselines>/{convolution.PROJECT_DIR}/{setup}.yaml"
    )
    # pytest names the running test in this variable (its documented format: "<node id>
    # (<phase>)"); outside pytest the command says where the test goes
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    test = f"'{current}'" if current else "<test>"
    return (
        f"the estimate counts no cuDNN workspace for the {description}: it is neither in "
        f"the project's recorded workspaces ({recorded}) nor in the shipped table "
        f"({convolution.TABLE_DIR}/{name}), so this test's figure may be low by up to that "
        "workspace (on the H200, 0 B to several times the input's size for common CNN "
        "layers). Fix: run this test once on a GPU with `pytest --vram-backend=cuda "
        f"--vram-update {test}` (an {arch} GPU with cuDNN {convolution.cudnn_text(cudnn)}, "
        "the setup the estimate models); the convolution workspaces it records in "
        f"{recorded} make the estimate exact; commit that file. Or measure this test with "
        "--vram-backend=cuda. Further convolutions of this test that are not known are not "
        "reported again."
    )
