"""The CUDA runtime calls of user code, answered by one emulated GPU where none is usable.

Fake CUDA tensors run torch's meta kernels, so shapes, dtypes and allocation sizes are
those of CUDA; what still differs without a GPU is the runtime around them. While the
estimator's scope is active (:func:`install`, restored exactly on exit by
:class:`~pytest_vram.backends.patching.Patches`):

* **autocast** is on: ``torch.autocast("cuda")`` disables itself when CUDA is unavailable;
  its availability check is replaced, so the real C++ ``AutocastCUDA`` kernels run (fp16
  casts for matmuls, fp32 for norms and softmax, the weight-cast cache);
* the runtime calls ordinary code makes (``torch.cuda.synchronize``, streams, events, the
  current device, RNG state, NVTX ranges) act on one emulated device, doing nothing;
* the device and memory queries (:func:`install_device`) answer as the card the estimator
  follows (``backends.cards``: the H200 by default; libraries pick kernels by its
  capability, as transformers' mixture-of-experts layers pick ``_grouped_mm`` from sm80
  on), from the allocator model.

Autograd's device guard and engine: :mod:`.autograd_engine`; the SDPA kernel choice:
:mod:`.sdpa_choice`. On a machine with a real GPU none of this is installed: fake CUDA
tensors already work there and SDPA's own chooser runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.cuda.amp.common as amp_common
import torch.cuda.nvtx as nvtx
from torch._subclasses import fake_tensor

from pytest_vram.backends.cards import Card
from pytest_vram.backends.estimate import distributed, sdpa_choice
from pytest_vram.backends.estimate.allocator import CachingAllocatorModel
from pytest_vram.backends.estimate.refusals import EstimateUnsupported, user_frames, user_line
from pytest_vram.backends.patching import Patches


def _rng_state(device: object = "cuda") -> torch.Tensor:
    # fork_rng saves and restores the CUDA RNG state; fake kernels draw no random numbers.
    return torch.zeros(16, dtype=torch.uint8, device="cpu")


def _noop() -> Any:
    """A new do-nothing function: one object per patched name. Dynamo maps torch's functions
    to tracing rules by object (``trace_rules.get_torch_obj_rule_map``, built once, at the
    first ``torch.compile``); one object under two names with different rules fails it
    ("Duplicate torch object")."""

    def stub(*args: object, **kwargs: object) -> None:
        return None

    return stub


class _EmulatedStream(torch.Stream):
    """``torch.cuda.Stream`` inside the scope: a stream of the emulated device (the CUDA
    device guard's, so ``wait_stream``, ``synchronize``, ``query`` and ``record_event``
    work and do nothing). Fake kernels run synchronously: streams order nothing."""

    def __new__(cls, device: object = None, priority: int = 0, **kwargs: object) -> Any:
        return super().__new__(cls, device="cuda", priority=priority)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    @property
    def cuda_stream(self) -> int:
        return 0

    def is_capturing(self) -> bool:
        """No CUDA graph is ever captured on the emulated device (the optimizers ask)."""
        return False


class _EmulatedEvent(torch.Event):
    """``torch.cuda.Event`` inside the scope: records and waits do nothing; no time passes
    on the emulated device, so ``elapsed_time`` is 0.0 ms."""

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        return super().__new__(cls, device="cuda")

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def elapsed_time(self, end_event: object) -> float:
        return 0.0


def _stream() -> Any:
    """A new ``current_stream``/``default_stream``: one object per name (see ``_noop``)."""

    def stream(device: object = None) -> _EmulatedStream:
        return _EmulatedStream()

    return stream


def install(patches: Patches) -> None:
    """Emulate the CUDA runtime (autocast, streams, events, RNG, the device) for a scope."""
    cuda = torch.cuda
    patches.set(amp_common, "amp_definitely_not_available", lambda: False)
    # the runtime calls ordinary code makes, on the one emulated device (index 0); none
    # allocates (the device and memory queries: install_card, install_device)
    patches.set(cuda, "synchronize", _noop())
    patches.set(cuda, "set_device", _noop())
    patches.set(cuda, "Stream", _EmulatedStream)
    patches.set(cuda, "Event", _EmulatedEvent)
    patches.set(cuda, "current_stream", _stream())
    patches.set(cuda, "default_stream", _stream())
    patches.set(cuda, "set_stream", _noop())
    patches.set(nvtx, "range_push", lambda *a, **k: 0)
    patches.set(nvtx, "range_pop", lambda *a, **k: 0)
    patches.set(nvtx, "mark", _noop())
    patches.set(cuda, "get_rng_state", _rng_state)
    patches.set(cuda, "set_rng_state", _noop())
    patches.set(cuda, "get_rng_state_all", lambda: [_rng_state()])
    patches.set(cuda, "set_rng_state_all", _noop())
    patches.set(cuda, "manual_seed", _noop())
    patches.set(cuda, "manual_seed_all", _noop())
    sdpa_choice.install(patches)


class EmulatedProperties:
    """``torch.cuda.get_device_properties()`` of the emulated card: the attributes code
    reads (``name``, ``total_memory``, ``major``, ``minor``, ``multi_processor_count``,
    ``is_integrated``; the limits of its compute capability, which compilers read:
    ``Card.architecture``), with torch's repr."""

    def __init__(self, card: Card) -> None:
        self.name = card.name
        self.total_memory = card.total_memory
        self.major = card.major
        self.minor = card.minor
        self.multi_processor_count = card.multi_processor_count
        self.is_integrated = False
        self.is_multi_gpu_board = False
        self.gcnArchName = card.name  # a CUDA build of torch reports the name there
        arch = card.architecture
        self.max_threads_per_multi_processor = arch.max_threads_per_multi_processor
        self.max_threads_per_block = arch.max_threads_per_block
        self.regs_per_multiprocessor = arch.regs_per_multiprocessor
        self.warp_size = arch.warp_size
        self.shared_memory_per_block = arch.shared_memory_per_block
        self.shared_memory_per_block_optin = arch.shared_memory_per_block_optin
        self.shared_memory_per_multiprocessor = arch.shared_memory_per_multiprocessor

    def __repr__(self) -> str:
        return (
            f"_CudaDeviceProperties(name='{self.name}', major={self.major}, "
            f"minor={self.minor}, total_memory={self.total_memory // (1 << 20)}MB, "
            f"multi_processor_count={self.multi_processor_count})"
        )


def _check_index(device: object) -> None:
    """Device 0 (or the current device) is the only one; any other index is refused as
    torch refuses it on a one-GPU machine."""
    if device is None:
        return
    if isinstance(device, str):
        device = torch.device(device)
    index = device.index if isinstance(device, torch.device) else device
    if isinstance(device, torch.device) and device.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {device}")
    if index not in (None, 0, -1):
        raise AssertionError("Invalid device id")  # torch's own message and type


def _query(answer: Callable[[], Any]) -> Callable[..., Any]:
    """A device query taking torch's optional ``device`` argument (one new function per
    name: see ``_noop``)."""

    def query(device: object = None) -> Any:
        _check_index(device)
        return answer()

    return query


def _set(patches: Patches, name: str, value: object) -> None:
    """Replace ``name`` in ``torch.cuda`` and, where torch defines it there, in
    ``torch.cuda.memory`` (whose functions call each other through that module)."""
    patches.set(torch.cuda, name, value)
    if name in vars(torch.cuda.memory):
        patches.set(torch.cuda.memory, name, value)


#: set on the ``is_available`` the emulation installs, so that an estimator created while
#: the emulated card answers still learns that no GPU is usable (:func:`gpu_usable`)
EMULATED = "pytest_vram_emulated"


def _available() -> Callable[[], bool]:
    """A new ``is_available`` answering True (one object per patched name: see ``_noop``)."""

    def is_available() -> bool:
        return True

    setattr(is_available, EMULATED, True)
    return is_available


def gpu_usable() -> bool:
    """Whether torch can use a GPU here: its own ``is_available()``, also while the emulated
    card answers that question."""
    if getattr(torch.cuda.is_available, EMULATED, False):
        return False
    return torch.cuda.is_available()


def install_card(patches: Patches, card: Card) -> None:
    """The emulated card answers ``torch.cuda``'s identity queries: available, one device
    (index 0, current), ``card``'s name, capability and properties; ``torch.accelerator``
    answers CUDA. No memory query: those need the test's allocator (:func:`install_device`).
    """
    properties = EmulatedProperties(card)
    _set(patches, "is_available", _available())
    _set(patches, "device_count", lambda: 1)
    _set(patches, "current_device", lambda: 0)
    _set(patches, "get_device_name", _query(lambda: card.name))
    _set(patches, "get_device_capability", _query(lambda: card.capability))
    _set(patches, "get_device_properties", _query(lambda: properties))
    _set(patches, "is_bf16_supported", lambda *a, **k: True)
    accelerator = torch.accelerator
    patches.set(accelerator, "current_accelerator", lambda check_available=False: _CUDA)
    # FakeTensor initialises a real CUDA context for every new fake CUDA tensor when the
    # accelerator answers CUDA (torch.empty(1, device="cuda")): on a CUDA build of torch
    # with no visible GPU that fails ("No CUDA GPUs are available"). Fake tensors on the
    # emulated card need no context.
    patches.set(fake_tensor, "init_gpu_context", lambda device: None)
    patches.set(accelerator, "is_available", _available())
    patches.set(accelerator, "device_count", lambda: 1)
    patches.set(accelerator, "current_device_index", lambda: 0)
    if hasattr(accelerator, "current_device_idx"):
        patches.set(accelerator, "current_device_idx", lambda: 0)


def install_device(patches: Patches, card: Card, allocator: CachingAllocatorModel) -> None:
    """The emulated card answers ``torch.cuda``'s device and memory queries for a scope.

    One device (index 0), available and initialised, with ``card``'s name, capability,
    multiprocessors and capacity (:func:`install_card`); the memory queries answer from the
    allocator model (``memory_stats`` is its statistics, which ``memory_allocated`` and the
    others read); ``mem_get_info``'s free memory is the capacity minus the model's reserved
    pages minus what the card holds outside PyTorch where measured;
    ``reset_peak_memory_stats`` and ``empty_cache`` act on the model, as on a GPU (so a
    reset inside a measured call lowers that call's figure there too). ``torch.accelerator``
    answers CUDA.
    """
    install_card(patches, card)
    outside = card.outside_bytes or 0

    def free_and_total() -> tuple[int, int]:
        free = card.total_memory - outside - allocator.reserved
        return (max(free, 0), card.total_memory)

    _set(patches, "is_initialized", lambda: True)
    _set(patches, "mem_get_info", _query(free_and_total))
    _set(patches, "memory_stats_as_nested_dict", _query(allocator.stats))
    _set(patches, "reset_peak_memory_stats", _query(allocator.reset_peak))
    _set(patches, "reset_max_memory_allocated", _query(allocator.reset_peak))
    _set(patches, "reset_max_memory_cached", _query(allocator.reset_peak))
    _set(patches, "empty_cache", allocator.empty_cache)
    # memory_stats, memory_allocated, max_memory_allocated, memory_reserved and
    # max_memory_reserved read memory_stats_as_nested_dict through torch.cuda.memory; the
    # names torch.cuda binds itself are the same functions
    accelerator = torch.accelerator
    # one current stream, FSDP2's (it compares streams it gets from its device handle)
    patches.set(accelerator, "current_stream", distributed.current_stream)
    patches.set(accelerator, "set_stream", _noop())
    patches.set(accelerator, "synchronize", _noop())
    for name in ("set_device_index", "set_device_idx"):
        if hasattr(accelerator, name):
            patches.set(accelerator, name, _noop())
    if hasattr(accelerator, "get_memory_info"):
        patches.set(accelerator, "get_memory_info", _query(free_and_total))
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved"):
        if hasattr(accelerator, name):
            patches.set(accelerator, name, getattr(torch.cuda.memory, name))
    if hasattr(accelerator, "max_memory_reserved"):
        patches.set(accelerator, "max_memory_reserved", torch.cuda.memory.max_memory_reserved)
    if hasattr(accelerator, "memory_stats"):
        patches.set(accelerator, "memory_stats", torch.cuda.memory.memory_stats)
    if hasattr(accelerator, "reset_peak_memory_stats"):
        patches.set(accelerator, "reset_peak_memory_stats", _query(allocator.reset_peak))


_CUDA = torch.device("cuda")

#: estimator scopes active now (a build step, a workload, a whole test): a CUDA call that
#: reaches torch's lazy initialisation inside one is one the emulation does not answer
_scopes = 0


def enter_scope() -> None:
    global _scopes
    _scopes += 1


def leave_scope() -> None:
    global _scopes
    _scopes -= 1


def guard_outside_tests(patches: Patches) -> None:
    """CUDA work that reaches torch's lazy CUDA initialisation fails with the user's line
    and the fix, instead of torch's ``AssertionError: Torch not compiled with CUDA enabled``
    (a CPU-only torch) or ``RuntimeError`` (no GPU visible).

    Every CUDA tensor made outside the fake mode goes through ``torch.cuda._lazy_init``
    (torch's C++ calls it by name for a CUDA device, and skips it while a fake mode is
    active), as does every ``torch.cuda`` query the emulation does not answer.
    """
    patches.set(torch.cuda, "_lazy_init", _refuse_outside_tests)


def _refuse_outside_tests() -> None:
    __tracebackhide__ = True
    where = user_line(user_frames())
    if _scopes:
        raise EstimateUnsupported(
            f"the estimate backend does not emulate the CUDA runtime call at {where}: "
            "without a GPU only the device and memory queries, streams, events, RNG state "
            "and tensors of the emulated card are answered. Measure this test with "
            "--vram-backend=cuda, or mark it @pytest.mark.vram(skip_estimate='<reason>')."
        )
    if getattr(torch.cuda.is_available, EMULATED, False):
        skip = (
            "or run without --vram-emulate=session (with it, torch.cuda.is_available() "
            "answers True for the whole session, so a test skipped where no GPU is visible "
            "runs)"
        )
    else:
        skip = (
            "or skip the test where no GPU is visible "
            "(@pytest.mark.skipif(not torch.cuda.is_available(), ...))"
        )
    raise EstimateUnsupported(
        f"CUDA work outside a vram test at {where}: pytest-vram estimates GPU memory "
        f"without a GPU here (--vram-backend=estimate, torch {torch.__version__}), and CUDA "
        "tensors exist only inside a vram test (one that uses the vram fixture), from its "
        "fixtures' setup to their teardown. Move the CUDA work into the vram test or a "
        f"function-scoped fixture it uses, creating tensors on vram.device; {skip}; or "
        "measure on a GPU with --vram-backend=cuda."
    )
