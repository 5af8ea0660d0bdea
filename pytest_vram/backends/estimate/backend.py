"""The ``estimate`` backend: CUDA memory predicted on fake tensors, without a GPU.

A test's build step and workload run unchanged in the estimator's scope (:mod:`.scope`) on
fake CUDA tensors, whose storages are replayed through a model of the CUDA caching
allocator (:mod:`.allocator`), so ``allocated()`` and ``peak()`` are
``torch.cuda.memory_allocated``/``max_memory_allocated`` to the byte.

Everything is per test: ``begin_test`` makes a fresh fake mode and an empty allocator pool
(the CUDA backend's ``empty_cache()``), ``end_test`` drops them, so figures do not depend
on test order, process or worker. Creating the backend checks the torch internals the
estimator relies on (:mod:`.torch_compat`) and makes the changes that stay for the process
(``patching.PROCESS_WIDE``). See docs/estimator.md.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from pytest_vram.backends import alloc_conf
from pytest_vram.backends.base import Backend, BackendUnavailable, metric_name
from pytest_vram.backends.estimate import torch_compat
from pytest_vram.backends.estimate.allocator import MODEL_VERSION, CachingAllocatorModel
from pytest_vram.backends.estimate.autograd_engine import install_cuda_guard
from pytest_vram.backends.estimate.fake_mode import EstimatingFakeMode
from pytest_vram.backends.estimate.kernels import missing_meta
from pytest_vram.backends.estimate.known import KnownValues
from pytest_vram.backends.estimate.scope import Scope
from pytest_vram.backends.estimate.sdpa_choice import install_sdpa_kernel
from pytest_vram.backends.estimate.tracker import StorageTracker


class EstimateBackend(Backend):
    """Peak CUDA memory predicted on fake tensors: no GPU, no real memory."""

    name = "estimate"
    #: a test marked world_size=N runs on a fake process group of N ranks (rank 0 measured)
    simulates_ranks = True

    def __init__(self, allocator: str = "expandable") -> None:
        # The user's allocator settings, checked as the cuda backend checks them.
        if (problem := alloc_conf.problem(allocator)) is not None:
            raise BackendUnavailable(problem)
        self._allocator_mode = allocator
        # Emulate the CUDA runtime only where there is no usable GPU; with one, fake CUDA
        # tensors behave natively and SDPA's real chooser runs.
        self._emulate = not torch.cuda.is_available()
        problem = torch_compat.check(cpu_only=self._emulate and not torch.backends.cuda.is_built())
        if problem is not None:
            raise BackendUnavailable(problem)
        if self._emulate and not torch.backends.cuda.is_built() and not install_cuda_guard():
            raise BackendUnavailable(
                "the estimate backend cannot register a CUDA device guard on this torch "
                f"build ({torch.__version__}); autograd on fake CUDA tensors would abort"
            )
        if self._emulate:
            install_sdpa_kernel()
        missing_meta.install()
        self._allocator = CachingAllocatorModel(self._allocator_mode)
        self._tracker: StorageTracker | None = None
        self._mode: EstimatingFakeMode | None = None
        self._observer: Any = None

    # -- identity -----------------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cuda"

    def profile(self) -> str:
        return "estimate"

    def context(self) -> dict[str, str]:
        if self._emulate:
            device = "fake CUDA, emulated sm90 (H100/H200 rules)"
        else:
            device = f"fake CUDA on {torch.cuda.get_device_name()}"
        return {
            "backend": "estimate",
            "device": device,
            "torch": torch.__version__,
            "allocator": (f"caching-allocator model v{MODEL_VERSION}, {self._allocator_mode}"),
            "metric": metric_name(self._allocator_mode),
        }

    # -- per test -----------------------------------------------------------------------
    def warmup(self) -> None:
        """Pay torch's one-time costs (imports, meta registrations) outside any test."""
        self.begin_test()
        try:
            with self.scope():
                _warmup_workload()
        finally:
            self.end_test()

    def begin_test(self) -> None:
        self._allocator = CachingAllocatorModel(self._allocator_mode)
        self._tracker = StorageTracker(self._allocator, self._observer, KnownValues())
        self._mode = EstimatingFakeMode(self._tracker, self._emulate)

    def end_test(self) -> None:
        self._mode = None
        self._tracker = None

    def scope(self) -> contextlib.AbstractContextManager[None]:
        if self._mode is None:
            self.begin_test()
        assert self._mode is not None
        return Scope(self._mode, self._emulate, self._tracker)

    def observe(self, observer: Any) -> bool:
        """Report storages to ``observer`` from the next ``begin_test`` on (None: stop)."""
        self._observer = observer
        return True

    # -- counters -----------------------------------------------------------------------
    def synchronize(self) -> None:
        """Nothing is queued: fake kernels run synchronously."""

    def allocated(self) -> int:
        return self._allocator.allocated

    def reset_peak(self) -> None:
        self._allocator.reset_peak()

    def peak(self) -> int:
        return self._allocator.peak

    def reserved(self) -> int:
        return self._allocator.reserved

    def peak_reserved(self) -> int:
        return self._allocator.peak_reserved


def _warmup_workload() -> None:
    """A tiny forward and backward touching the paths the estimator uses (one-time costs)."""
    with torch.device("meta"):
        attn = nn.MultiheadAttention(16, 2, batch_first=True, dtype=torch.float16)
        mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU())
    attn.to_empty(device="cuda")
    mlp.to_empty(device="cuda")
    x = torch.empty(1, 8, 16, device="cuda", dtype=torch.float16)

    def block(h: torch.Tensor) -> torch.Tensor:
        return mlp(attn(h, h, h, need_weights=False)[0])

    with torch.autocast("cuda", dtype=torch.float16):
        y = checkpoint(block, x, use_reentrant=False)
        loss = y.float().logsumexp(-1).sum()
    loss.backward()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        block(x)
