"""The CUDA runtime calls of user code, answered by one emulated GPU where none is usable.

Fake CUDA tensors run torch's meta kernels, so shapes, dtypes and allocation sizes are
those of CUDA; what still differs without a GPU is the runtime around them. While the
estimator's scope is active (:func:`install`, restored exactly on exit by
:class:`~pytest_vram.backends.patching.Patches`):

* **autocast** is on: ``torch.autocast("cuda")`` disables itself when CUDA is unavailable;
  its availability check is replaced, so the real C++ ``AutocastCUDA`` kernels run (fp16
  casts for matmuls, fp32 for norms and softmax, the weight-cast cache);
* the runtime calls ordinary code makes (``torch.cuda.synchronize``, streams, events, the
  current device, RNG state, NVTX ranges) act on one emulated device, an H200
  (:data:`EMULATED_NAME`, :data:`EMULATED_CAPABILITY`), doing nothing;
* the memory queries (:func:`install_memory_queries`) answer from the allocator model, and
  the device's size is refused.

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

from pytest_vram.backends.estimate import sdpa_choice
from pytest_vram.backends.estimate.allocator import CachingAllocatorModel
from pytest_vram.backends.estimate.refusals import EstimateUnsupported, user_frames, user_line
from pytest_vram.backends.patching import Patches

#: What the emulated GPU reports: an H200 (Hopper, sm90). Libraries pick kernels by it
#: (transformers' mixture-of-experts layers use ``_grouped_mm`` from sm80 on).
EMULATED_CAPABILITY = (9, 0)
EMULATED_NAME = "NVIDIA H200 (emulated by pytest-vram)"


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
    # allocates (what the memory queries answer: install_memory_queries)
    patches.set(cuda, "synchronize", _noop())
    patches.set(cuda, "current_device", lambda: 0)
    patches.set(cuda, "set_device", _noop())
    patches.set(cuda, "Stream", _EmulatedStream)
    patches.set(cuda, "Event", _EmulatedEvent)
    patches.set(cuda, "current_stream", _stream())
    patches.set(cuda, "default_stream", _stream())
    patches.set(cuda, "set_stream", _noop())
    patches.set(nvtx, "range_push", lambda *a, **k: 0)
    patches.set(nvtx, "range_pop", lambda *a, **k: 0)
    patches.set(nvtx, "mark", _noop())
    patches.set(cuda, "is_bf16_supported", lambda *a, **k: True)
    patches.set(cuda, "get_rng_state", _rng_state)
    patches.set(cuda, "set_rng_state", _noop())
    patches.set(cuda, "get_rng_state_all", lambda: [_rng_state()])
    patches.set(cuda, "set_rng_state_all", _noop())
    patches.set(cuda, "manual_seed", _noop())
    patches.set(cuda, "manual_seed_all", _noop())
    patches.set(cuda, "get_device_capability", lambda *a, **k: EMULATED_CAPABILITY)
    patches.set(cuda, "get_device_name", lambda *a, **k: EMULATED_NAME)
    sdpa_choice.install(patches)


def install_memory_queries(patches: Patches, allocator: CachingAllocatorModel) -> None:
    """``torch.cuda``'s memory queries answer from the allocator model (they answer 0
    without a GPU: no CUDA allocator), and the device's size is refused.

    ``memory_allocated``/``max_memory_allocated``/``memory_reserved``/``max_memory_reserved``
    give the model's counters, ``reset_peak_memory_stats`` resets its peaks, as on a GPU
    (so a reset inside a measured call lowers that call's figure there too). No size is
    emulated: ``mem_get_info`` and ``get_device_properties`` decide by the GPU's memory (a
    device map, a batch size), which the estimate would have to guess, so they fail with
    the fix.
    """
    cuda = torch.cuda
    patches.set(cuda, "memory_allocated", lambda device=None: allocator.allocated)
    patches.set(cuda, "max_memory_allocated", lambda device=None: allocator.peak)
    patches.set(cuda, "memory_reserved", lambda device=None: allocator.reserved)
    patches.set(cuda, "max_memory_reserved", lambda device=None: allocator.peak_reserved)
    patches.set(cuda, "reset_peak_memory_stats", lambda device=None: allocator.reset_peak())
    patches.set(cuda, "reset_max_memory_allocated", lambda device=None: allocator.reset_peak())
    patches.set(cuda, "mem_get_info", _refused("mem_get_info"))
    patches.set(cuda, "get_device_properties", _refused("get_device_properties"))


def _refused(name: str) -> Callable[..., Any]:
    def query(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        raise EstimateUnsupported(
            f"the estimate backend emulates no GPU size: torch.cuda.{name}() at "
            f"{user_line(user_frames())} asks for the device's memory, "
            "and what the program then does (a device map, a batch size) would rest on "
            "a guess. Measure this test with --vram-backend=cuda, give the size "
            "explicitly, or mark it @pytest.mark.vram(skip_estimate='<reason>')."
        )

    return query
