"""The ``estimate`` backend: CUDA memory predicted on fake tensors, without a GPU.

A test's build step and workload run unchanged in the estimator's scope (:mod:`.scope`) on
fake CUDA tensors, whose storages are replayed through a model of the CUDA caching
allocator (:mod:`.allocator`), so ``allocated()`` and ``peak()`` are
``torch.cuda.memory_allocated``/``max_memory_allocated`` to the byte.

Everything is per test: ``begin_test`` makes a fresh fake mode and an empty allocator pool
(the CUDA backend's ``empty_cache()``), ``end_test`` drops them, so figures do not depend
on test order, process or worker. ``test_scope`` runs a whole test (fixtures, body,
teardown) in one such scope on one emulated card; inside it ``scope`` is a no-op and
``begin_test`` releases the cache as ``empty_cache()`` does, keeping what the test's
fixtures hold. Creating the backend checks the torch internals the
estimator relies on (:mod:`.torch_compat`) and makes the changes that stay for the process
(``patching.PROCESS_WIDE``). See docs/estimator.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from pytest_vram.backends import alloc_conf
from pytest_vram.backends.base import Backend, BackendUnavailable, metric_name
from pytest_vram.backends.cards import DEFAULT, Card
from pytest_vram.backends.estimate import compiled, cuda_runtime, torch_compat
from pytest_vram.backends.estimate.allocator import (
    LIMIT_RULES,
    MODEL_VERSION,
    CachingAllocatorModel,
    DeviceOutOfMemory,
    format_size,
)
from pytest_vram.backends.estimate.autograd_engine import install_cuda_guard
from pytest_vram.backends.estimate.fake_mode import EstimatingFakeMode
from pytest_vram.backends.estimate.kernels import convolution, missing_meta
from pytest_vram.backends.estimate.known import KnownValues
from pytest_vram.backends.estimate.scope import Reentered, Scope
from pytest_vram.backends.estimate.sdpa_choice import install_sdpa_kernel
from pytest_vram.backends.estimate.tracker import StorageTracker
from pytest_vram.backends.patching import Patches


class EstimateBackend(Backend):
    """Peak CUDA memory predicted on fake tensors: no GPU, no real memory."""

    name = "estimate"
    #: a test marked world_size=N runs on a fake process group of N ranks (rank 0 measured)
    simulates_ranks = True
    #: every test has its own fake mode and allocator: no fake tensor outlives its test
    device_per_test = True
    #: ``test_scope(card=...)`` enforces a test's own card
    supports_cards = True
    #: convolutions are looked up in the project's recorded workspaces (``use_workspaces``)
    reads_workspaces = True

    def __init__(
        self,
        allocator: str = "expandable",
        card: Card | str | None = None,
        limit_rule: str = "device",
    ) -> None:
        """``card``: the GPU the estimate answers as (``backends.cards``: a name or a
        capacity such as ``"8GiB"``); by default the H200, whose capacity is not enforced.
        A card given here is enforced: an allocation its usable capacity cannot serve
        raises torch's ``OutOfMemoryError`` where the card would. ``limit_rule``
        (``allocator.LIMIT_RULES``): ``"device"``, the card itself; ``"fraction"``, a larger
        GPU capped to the card with ``torch.cuda.set_per_process_memory_fraction`` (the
        ``cuda`` backend's ``card=``), whose check differs for requests of 10 MiB and more.
        """
        # The user's allocator settings, checked as the cuda backend checks them.
        if (problem := alloc_conf.problem(allocator)) is not None:
            raise BackendUnavailable(problem)
        if limit_rule not in LIMIT_RULES:
            raise ValueError(f"limit_rule must be one of {LIMIT_RULES}, not {limit_rule!r}")
        self.card = DEFAULT if card is None else Card.parse(card)
        self._enforced = card is not None
        #: the card of the test in ``test_scope(card=...)``, enforced for that test only
        self._test_card: Card | None = None
        self._limit_rule = limit_rule
        self._allocator_mode = allocator
        # Emulate the CUDA runtime only where there is no usable GPU; with one, fake CUDA
        # tensors behave natively and SDPA's real chooser runs.
        self._emulate = not cuda_runtime.gpu_usable()
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
        self._allocator = self._new_allocator()
        self._tracker: StorageTracker | None = None
        self._mode: EstimatingFakeMode | None = None
        self._observer: Any = None
        #: the project's recorded convolution workspaces (``use_workspaces``)
        self._workspaces = convolution.ProjectWorkspaces()
        #: the test's scope while ``test_scope`` is active
        self._whole_test: Scope | None = None
        if self._emulate and torch.backends.cuda.is_built():
            self._check_cuda_build_without_gpu()

    def _check_cuda_build_without_gpu(self) -> None:
        """A CUDA build of torch with no visible GPU (``pip install torch`` on a CI runner):
        its autograd engine asks the CUDA driver for device 0's primary context at every
        backward on a CUDA tensor, fake or not, and fails. Refused at creation, with the fix,
        rather than in every test."""
        try:
            self.warmup()
        except RuntimeError as exc:
            if "hasPrimaryContext" not in str(exc) and "CUDA driver" not in str(exc):
                raise
            raise BackendUnavailable(
                f"the estimate backend cannot run on this CUDA build of torch "
                f"({torch.__version__}) where no GPU is visible: autograd asks the CUDA "
                f"driver for a device it does not have ({exc}). Install torch's CPU build "
                "(a '+cpu' wheel) to estimate GPU memory without a GPU, or run with a "
                "visible GPU (--vram-backend=cuda)."
            ) from None

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
        context = {
            "backend": "estimate",
            "device": device,
            "torch": torch.__version__,
            "allocator": (f"caching-allocator model v{MODEL_VERSION}, {self._allocator_mode}"),
            "metric": metric_name(self._allocator_mode),
        }
        context["card"] = self.card_description()
        return context

    def card_description(self) -> str:
        """The card the estimate answers as, its capacity, and whether it is enforced."""
        enforced = self.card_in_force() is not None
        return self._card().describe(self._limit() if enforced else None)

    def card_in_force(self) -> Card | None:
        """The card whose capacity is enforced now: the test's (``test_scope(card=...)``),
        else the backend's own where one was given; None where nothing is enforced."""
        if self._test_card is not None:
            return self._test_card
        return self.card if self._enforced else None

    def _card(self) -> Card:
        """The card the emulation answers as now (enforced or not)."""
        return self._test_card or self.card

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
        """A fresh fake mode, an empty allocator and no compiled code; inside
        ``test_scope``, what the CUDA backend does instead: release the cache
        (``empty_cache``) and restart the peaks, keeping what the test's fixtures made
        (compiled code included)."""
        if self._whole_test is not None:
            self._allocator.empty_cache()
            self._allocator.reset_peak()
            return
        compiled.forget_compiled_code()
        self._allocator = self._new_allocator()
        self._tracker = StorageTracker(
            self._allocator, self._observer, KnownValues(), self._workspaces
        )
        self._mode = EstimatingFakeMode(self._tracker, self._emulate)

    def end_test(self) -> None:
        if self._whole_test is not None:
            return  # dropped when the test's scope exits
        self._mode = None
        self._tracker = None

    def scope(self) -> contextlib.AbstractContextManager[None]:
        if self._whole_test is not None:
            return Reentered()
        if self._mode is None:
            self.begin_test()
        assert self._mode is not None and self._tracker is not None
        return Scope(self._mode, self._emulate, self._tracker, self._card())

    @contextlib.contextmanager
    def test_scope(self, card: Card | str | None = None) -> Iterator[None]:
        """One emulated card for a whole test: fresh per-test state, and the scope entered
        until the test's fixtures are torn down (see ``Backend.test_scope``). ``card``: the
        test's own card (a name or a capacity), enforced for this test instead of the
        backend's; the figures do not depend on it, only where an allocation fails."""
        if self._whole_test is not None:
            raise RuntimeError("EstimateBackend.test_scope() is already active")
        self._test_card = None if card is None else Card.parse(card)
        try:
            self.begin_test()
            assert self._mode is not None and self._tracker is not None
            scope = Scope(self._mode, self._emulate, self._tracker, self._card())
            scope.__enter__()
            self._whole_test = scope
            try:
                yield
            finally:
                self._whole_test = None
                try:
                    scope.__exit__(None, None, None)
                finally:
                    self.end_test()
        finally:
            self._test_card = None

    def wider_fixture_scope(self) -> contextlib.AbstractContextManager[object]:
        """Inside a test's scope, the setup of a module-, class-, package- or
        session-scoped fixture makes real CPU tensors (``EstimatingFakeMode.real_host``):
        they outlive the test, and code that reads their values (``save_pretrained``, a
        dataset's statistics) gets what the program computed. CUDA tensors it makes are
        still fake, on the test's card, and counted (the plugin refuses the fixture)."""
        if self._whole_test is None or self._mode is None:
            return contextlib.nullcontext()
        return self._mode.real_host()

    def session_scope(self) -> contextlib.AbstractContextManager[object]:
        """Where no GPU is usable, CUDA work outside every vram test fails with the user's
        line and the fix (``cuda_runtime.guard_outside_tests``); restored on exit."""
        patches = Patches()
        if self._emulate:
            cuda_runtime.guard_outside_tests(patches)
        return patches

    def visible_device_scope(self) -> contextlib.AbstractContextManager[object]:
        """Where no GPU is usable, ``torch.cuda``'s identity queries answer as the card
        outside vram tests too (``cuda_runtime.install_card``); restored on exit."""
        patches = Patches()
        if self._emulate:
            cuda_runtime.install_card(patches, self.card)
        return patches

    def _limit(self) -> int:
        """The bytes a test's allocator pages may reach on the card (see ``__init__``)."""
        card = self._card()
        if self._limit_rule == "device":
            return card.usable_bytes
        # the allocator of the capped GPU (the H200 by default) holds its own persistent
        # workspaces under the same limit
        return card.allocator_limit - (DEFAULT.workspace_bytes or 0)

    def _new_allocator(self) -> CachingAllocatorModel:
        if self.card_in_force() is None:
            return CachingAllocatorModel(self._allocator_mode)
        return CachingAllocatorModel(
            self._allocator_mode,
            limit=self._limit(),
            limit_rule=self._limit_rule,
            describe=self._out_of_memory,
        )

    def _out_of_memory(self, error: DeviceOutOfMemory) -> BaseException:
        """torch's ``OutOfMemoryError`` with torch's message, as the card would raise it."""
        card = self._card()
        outside = card.outside_bytes or 0
        free = max(card.total_memory - outside - error.reserved, 0)
        used = outside + error.reserved
        allowed = ""
        if self._limit_rule == "fraction":
            allowed = f"{format_size(card.allocator_limit)} allowed; "
        message = (
            f"CUDA out of memory. Tried to allocate {format_size(error.alloc_size)}. GPU 0 "
            f"has a total capacity of {format_size(card.total_memory)} of which "
            f"{format_size(free)} is free. Including non-PyTorch memory, this process has "
            f"{format_size(used)} memory in use. {allowed}Of the allocated memory "
            f"{format_size(error.allocated)} is allocated by PyTorch, and "
            f"{format_size(error.reserved - error.allocated)} is reserved by PyTorch but "
            f"unallocated. (Emulated by pytest-vram's estimate backend: "
            f"{self.card_description()}.)"
        )
        return torch.OutOfMemoryError(message)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()`` on the allocator model: free pages are unmapped."""
        self._allocator.empty_cache()

    def workspace_setup(self) -> dict[str, str]:
        """The GPU architecture and cuDNN version whose convolution workspaces the estimate
        models (``kernels.convolution.current_setup``: the H200's without a GPU)."""
        arch, cudnn = convolution.current_setup()
        return {"arch": arch, "cudnn": str(cudnn), "torch": torch.__version__}

    def use_workspaces(self, entries: Mapping[str, int], source: str) -> None:
        """Look convolutions up in ``entries`` (the project's recorded workspaces, from
        ``source``) before the shipped table, from now on, in the test running now too."""
        self._workspaces.entries = dict(entries)
        self._workspaces.source = source

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
