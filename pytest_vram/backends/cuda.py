"""The ``cuda`` backend: the CUDA caching allocator's own statistics, exact to the byte."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from pytest_vram.backends import alloc_conf
from pytest_vram.backends.alloc_conf import EXPANDABLE
from pytest_vram.backends.base import Backend, BackendUnavailable, collect_garbage, metric_name
from pytest_vram.backends.cards import Card
from pytest_vram.backends.patching import install_for_process

# The cuBLAS/cuBLASLt workspaces are per process (per handle and stream), not per backend
# object: a second session in the same process (pytester, a re-created backend) must not
# warm up again, nor count them as a test's memory. Keyed by device index.
_WARMED: set[int] = set()

#: A probe request that the default settings count as a whole 20 MiB segment (its 512 KiB
#: remainder is not split) and expandable segments as exactly itself.
_PROBE_BYTES = (19 << 20) + (512 << 10)


def slug(text: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: safe in file names and stable across runs."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def worker_device(worker: str | None, device_count: int) -> int | None:
    """The GPU of xdist worker ``gwN`` on a multi-GPU host: ``N % device_count``.

    None (the current device) outside xdist or with one GPU. Allocator statistics are per
    process, so workers sharing a GPU still measure correctly; one GPU each only spreads
    the work and the memory.
    """
    if worker is None or device_count < 2 or not worker.startswith("gw"):
        return None
    number = worker[2:]
    return int(number) % device_count if number.isdigit() else None


class CudaBackend(Backend):
    """Measures ``torch.cuda.memory_allocated`` on one GPU.

    ``device_index`` picks the GPU; by default, xdist worker ``gwN`` on a host with several
    visible GPUs takes GPU ``N % count`` (see :func:`worker_device`), anything else the
    current device.

    ``card`` (a :class:`~pytest_vram.backends.cards.Card`, a name or a capacity such as
    ``"8GiB"``) caps this GPU to that card while the test runs (:meth:`test_scope`): the
    caching allocator's per-process limit (``torch.cuda.set_per_process_memory_fraction``)
    is set to the card's capacity less its CUDA context where measured, so an allocation
    the card could not serve raises ``OutOfMemoryError`` here too. The limit is checked
    by torch before mapping, with the segment size a request would take, which for
    requests of 10 MiB and more differs from the card's own page-by-page failure
    (``estimate.allocator``, ``limit_rule="fraction"``).
    """

    name = "cuda"
    #: ``test_scope(card=...)`` caps the GPU to a test's own card
    supports_cards = True

    def __init__(
        self,
        device_index: int | None = None,
        allocator: str = "expandable",
        card: Card | str | None = None,
    ) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "vram backend 'cuda': no CUDA GPU is visible (torch.cuda.is_available() is "
                f"False, torch {torch.__version__}); use --vram-backend=estimate to estimate "
                "GPU memory without a GPU"
            )
        # The one check of the user's allocator settings that the estimator makes too.
        problem = alloc_conf.problem(allocator)
        if problem is not None:
            raise BackendUnavailable(problem)
        self._torch = torch
        self.allocator = allocator
        if allocator == "expandable":
            _switch_on_expandable_segments(torch)
        if device_index is None:
            device_index = worker_device(
                os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count()
            )
        self.index = torch.cuda.current_device() if device_index is None else device_index
        # Workloads that say plain "cuda" land on the measured GPU too.
        torch.cuda.set_device(self.index)
        install_for_process("cuda-current-device")
        self._name = torch.cuda.get_device_name(self.index)
        self.card = None if card is None else Card.parse(card)
        self._fraction = None if self.card is None else self._cap_fraction(self.card)
        #: the card of the test in ``test_scope(card=...)``, capping this test only
        self._test_card: Card | None = None
        # The peaks reached before the workspace recorder restarted the allocator's own
        # (see _RecorderWindow); 0 when not recording.
        self._held_peak = 0
        self._held_reserved = 0
        self._recorder: Any = None
        self._recording = False

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    def profile(self) -> str:
        return "cuda-" + slug(self._name)

    def context(self) -> dict[str, str]:
        torch = self._torch
        conf = [f"{var}={value}" for var, value in alloc_conf.user_settings().items()]
        if self.allocator == "expandable":
            conf.insert(0, EXPANDABLE)
        return {
            "backend": self.name,
            "device": self._name,
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda),
            "allocator": "; ".join(dict.fromkeys(conf)) or "default",
            "metric": metric_name(self.allocator),
            **({} if self.card_in_force() is None else {"card": self._card_description()}),
        }

    def card_in_force(self) -> Card | None:
        """The card this GPU is capped to now: the test's (``test_scope(card=...)``), else
        the backend's own; None where nothing caps it."""
        return self._test_card or self.card

    def _card_description(self) -> str:
        card = self.card_in_force()
        assert card is not None
        text = f"{card.name}, capped with a per-process limit of {card.allocator_limit} B"
        unknown = card.unknown()
        return f"{text} ({unknown})" if unknown else text

    def _cap_fraction(self, card: Card) -> float:
        """The fraction of this GPU whose allocator limit is the card's allocator limit."""
        total = int(self._torch.cuda.mem_get_info(self.index)[1])
        limit = card.allocator_limit
        if limit > total:
            raise BackendUnavailable(
                f"vram backend 'cuda': card {card.key or card.name} ({card.name}, {limit} B "
                f"usable) is larger than this GPU ({self._name}, {total} B): a GPU can only "
                "be capped to a card no larger than itself. Run it on a GPU at least that "
                "large, or estimate it with --vram-backend=estimate"
            )
        return limit / total

    @contextlib.contextmanager
    def test_scope(self, card: Card | str | None = None) -> Iterator[None]:
        """With a card (the test's ``card``, else the backend's), the GPU capped to it for
        the test, the limit lifted afterwards; while recording workspaces, the recorder
        active for the whole test. A card larger than this GPU raises
        ``BackendUnavailable`` with the fix, when entered."""
        parsed = None if card is None else Card.parse(card)
        fraction = self._fraction if parsed is None else self._cap_fraction(parsed)
        with contextlib.ExitStack() as stack:
            if fraction is not None:
                stack.enter_context(self._capped(fraction, parsed))
            stack.enter_context(self._recording_scope())
            yield

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to enter, except the workspace recorder while recording (and not
        already active for the whole test)."""
        return self._recording_scope()

    # -- cuDNN convolution workspaces (Backend.workspace_setup) -------------------------

    def workspace_setup(self) -> dict[str, str] | None:
        """This GPU's architecture and cuDNN version; None without cuDNN."""
        torch = self._torch
        version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if not version:
            return None
        major, minor = torch.cuda.get_device_capability(self.index)
        return {
            "arch": f"sm{major}{minor}",
            "cudnn": str(int(version)),
            "device": self._name,
            "torch": str(torch.__version__),
        }

    def record_workspaces(self) -> bool:
        """Measure every convolution's transient from now on, in :meth:`scope` and
        :meth:`test_scope` (``backends.workspace_recorder``)."""
        if self.workspace_setup() is None:
            return False
        if self._recorder is None:
            # here: torch's dispatch-mode machinery only for a run that records
            from pytest_vram.backends.workspace_recorder import WorkspaceRecorder

            self._recorder = WorkspaceRecorder(_RecorderWindow(self))
        return True

    def recorded_workspaces(self) -> dict[str, int]:
        return dict(self._recorder.entries) if self._recorder is not None else {}

    @contextlib.contextmanager
    def _recording_scope(self) -> Iterator[None]:
        if self._recorder is None or self._recording:
            yield
            return
        self._recording = True
        try:
            with self._recorder:
                yield
        finally:
            self._recording = False

    @contextlib.contextmanager
    def _capped(self, fraction: float, card: Card | None) -> Iterator[None]:
        cuda = self._torch.cuda
        cuda.set_per_process_memory_fraction(fraction, self.index)
        self._test_card = card
        try:
            yield
        finally:
            self._test_card = None
            # 1.0 is torch's "no limit": the allocator may then use the whole GPU again
            cuda.set_per_process_memory_fraction(1.0, self.index)

    def empty_cache(self) -> None:
        """Wait for the device, then release the allocator's cached, unused memory."""
        self.synchronize()
        self._torch.cuda.empty_cache()

    def warmup(self) -> None:
        if self.allocator == "expandable":
            self._check_exact_splitting()
        if self.index in _WARMED:
            return
        with self._torch.cuda.device(self.index):
            _touch_cublas(self._torch, self.device)
            self._torch.cuda.synchronize(self.index)
        # The workspaces stay allocated (they would come back at the next matmul anyway);
        # only the warm-up tensors' cached blocks go, so the first test starts clean.
        collect_garbage()
        self._torch.cuda.empty_cache()
        _WARMED.add(self.index)

    def begin_test(self) -> None:
        collect_garbage()
        self.synchronize()
        # Free cached blocks of earlier tests: otherwise whether a block is split (and so
        # the rounded allocated bytes) depends on what ran before this test.
        self._torch.cuda.empty_cache()
        self.reset_peak()

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.index)

    def allocated(self) -> int:
        return int(self._torch.cuda.memory_allocated(self.index))

    def reset_peak(self) -> None:
        self._held_peak = self._held_reserved = 0
        self._torch.cuda.reset_peak_memory_stats(self.index)

    def peak(self) -> int:
        return max(self._held_peak, int(self._torch.cuda.max_memory_allocated(self.index)))

    def reserved(self) -> int:
        return int(self._torch.cuda.memory_reserved(self.index))

    def peak_reserved(self) -> int:
        return max(self._held_reserved, int(self._torch.cuda.max_memory_reserved(self.index)))

    def _check_exact_splitting(self) -> None:
        """Fail unless a request counts exactly its rounded size (expandable segments on)."""
        torch = self._torch
        self.synchronize()
        before = self.allocated()
        probe = torch.empty(_PROBE_BYTES, dtype=torch.uint8, device=self.device)
        counted = self.allocated() - before
        del probe
        self.synchronize()
        if counted != _PROBE_BYTES:
            raise BackendUnavailable(
                f"vram backend 'cuda': expandable segments are not in effect (a "
                f"{_PROBE_BYTES} B request counted {counted} B; torch {torch.__version__}), so "
                f"figures would depend on what ran before in the process. Start pytest with "
                f"PYTORCH_CUDA_ALLOC_CONF={EXPANDABLE}, or measure raw default-allocator "
                f"figures with --vram-allocator=default (they can change with test order)"
            )


class _RecorderWindow:
    """The workspace recorder's view of the counters (``workspace_recorder.PeakWindow``).

    Restarting the allocator's peak around a convolution would lose the peak the test
    reached before it: the backend holds it (``_held_peak``, ``_held_reserved``) and its
    ``peak()`` and ``peak_reserved()`` answer the larger, so the test's figures are what
    they are without recording. ``reset_peak`` drops the held values.
    """

    def __init__(self, backend: CudaBackend) -> None:
        self.backend = backend

    def synchronize(self) -> None:
        self.backend.synchronize()

    def allocated(self) -> int:
        return self.backend.allocated()

    def restart_peak(self) -> None:
        backend = self.backend
        backend._held_peak = backend.peak()
        backend._held_reserved = backend.peak_reserved()
        backend._torch.cuda.reset_peak_memory_stats(backend.index)

    def peak(self) -> int:
        return int(self.backend._torch.cuda.max_memory_allocated(self.backend.index))


def _switch_on_expandable_segments(torch: Any) -> None:
    """Switch the caching allocator to expandable segments for the rest of the process
    (``patching.PROCESS_WIDE``, "cuda-expandable-segments").

    With them ``should_split`` splits every block that leaves at least 512 B, so what a test
    allocates counts as the sum of its 512-rounded live requests whatever blocks earlier
    tests left cached. The setting takes effect for every later allocation, also in
    segments that existed before; ``warmup`` verifies it with a probe. The user's own
    settings were checked before (:func:`pytest_vram.backends.alloc_conf.problem`).
    """
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:  # torch < 2.9
        setter = getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is None:
        raise BackendUnavailable(
            f"vram backend 'cuda': torch {torch.__version__} has no allocator-settings API; "
            f"start pytest with PYTORCH_CUDA_ALLOC_CONF={EXPANDABLE}"
        )
    setter(EXPANDABLE)
    install_for_process("cuda-expandable-segments")


def _touch_cublas(torch: Any, device: str) -> None:
    """Run the matrix products whose first use allocates persistent workspaces.

    cuBLAS allocates a workspace per (handle, stream) from the caching allocator (32 MiB on
    Hopper), cuBLASLt another (1 MiB) at the first linear with bias, and autograd's
    backward runs on a thread with a handle of its own: so forward and backward, plain and
    under autocast, in every dtype a test is likely to use. Activation checkpointing also
    runs *forward* ops (a linear with bias) on the backward thread, whose cuBLASLt
    workspace would otherwise appear, as a 1 MiB leak, in the first checkpointed test.
    Which library path a product takes depends on its shapes, so the warm-up uses a
    transformer block of realistic width (3-D inputs, attention, bias) rather than a toy
    matrix: on the H200 a 64 x 64 checkpointed linear did not reach that workspace.
    """
    dtypes = [torch.float32, torch.float16]
    if torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    for dtype in dtypes:
        _forward_backward(torch, device, dtype, autocast=False)
    _forward_backward(torch, device, torch.float32, autocast=True)


def _forward_backward(torch: Any, device: str, dtype: Any, *, autocast: bool) -> None:
    # (here: this module imports torch when the backend is created, not with the plugin)
    from torch.utils.checkpoint import checkpoint

    width, heads, tokens = 1024, 8, 256
    factory = {"device": device, "dtype": dtype}
    norm = torch.nn.LayerNorm(width, **factory)
    attention = torch.nn.MultiheadAttention(width, heads, batch_first=True, **factory)
    linear = torch.nn.Linear(width, width, bias=True, **factory)
    x = torch.randn(1, tokens, width, requires_grad=True, **factory)

    def block(t: Any) -> Any:
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            h = norm(t)
            h = attention(h, h, h, need_weights=False)[0]
            return linear(torch.nn.functional.gelu(h @ h.transpose(1, 2) @ h))

    block(x).float().sum().backward()
    # Non-reentrant checkpointing recomputes `block` during backward, on autograd's thread.
    checkpoint(block, x, use_reentrant=False).float().sum().backward()
    for module in (norm, attention, linear):
        module.eval()
    with torch.no_grad():  # inference: nn.MultiheadAttention's fused fast path
        block(x)
