"""The transient memory of each convolution a test runs on a GPU, for the estimator.

A cuDNN convolution holds a workspace (and layout copies) from the caching allocator for
the duration of the call: the peak sees it, ``memory_allocated`` afterwards does not, and
no rule gives its size (docs/estimator.md, "cuDNN convolution workspaces"). While the
``cuda`` backend updates baselines, :class:`WorkspaceRecorder`, a dispatch mode, measures
each ``aten.convolution`` and ``aten.convolution_backward`` call as
``tools/cudnn_workspace.py`` does: synchronise, restart the peak, run the call, synchronise,
and keep the *transient* = the peak during the call - what was allocated before it - its
512-byte-rounded outputs, under the estimator's key of the call
(``kernels.convolution.forward_key``/``backward_key``, with the global cuDNN flags). The
session writes them to the project's file (``store.workspaces``); the estimator reads it.

The recorder reads the counters through a :class:`PeakWindow` that keeps the peak the test
reached before each restart, so the test's own figures do not change. Torch on import:
the ``cuda`` backend imports this module only when it records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_vram.backends.estimate.allocator import round_size
from pytest_vram.backends.estimate.kernels import convolution

_aten = torch.ops.aten
#: operator -> (the position of its input, its key function)
_CALLS: dict[Any, tuple[int, Callable[..., str]]] = {
    _aten.convolution.default: (0, convolution.forward_key),
    _aten.convolution_backward.default: (1, convolution.backward_key),
}


class PeakWindow(Protocol):
    """The counters the recorder reads around one call (the ``cuda`` backend's)."""

    def synchronize(self) -> None:
        """Wait until queued device work is done."""

    def allocated(self) -> int:
        """Bytes allocated now."""

    def restart_peak(self) -> None:
        """Restart the peak from ``allocated()``, keeping the earlier one for the test."""

    def peak(self) -> int:
        """The highest ``allocated()`` since the last restart."""


def output_bytes(out: Any) -> int:
    """Bytes the caching allocator gives the outputs: each storage once, 512-rounded."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    seen: set[int] = set()
    total = 0
    for t in items:
        if not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        if storage._cdata in seen or storage.nbytes() == 0:  # (the storage's identity)
            continue
        seen.add(storage._cdata)
        total += round_size(storage.nbytes())
    return total


class WorkspaceRecorder(TorchDispatchMode):
    """Measures the transient of every convolution on ``device_type`` with cuDNN enabled;
    ``entries`` maps its key to the largest transient seen.

    A call during CUDA graph capture is not measured (synchronising would break the
    capture), nor an empty one (the estimator counts none for it).
    """

    def __init__(self, window: PeakWindow, device_type: str = "cuda") -> None:
        super().__init__()
        self.window = window
        self.device_type = device_type
        self.entries: dict[str, int] = {}
        self._inside = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        call = _CALLS.get(func)
        if call is None or self._inside or not self._measurable(args, kwargs, call[0]):
            return func(*args, **kwargs)
        key = call[1](args, kwargs, convolution.flags())
        window = self.window
        self._inside = True
        try:
            window.synchronize()
            before = window.allocated()
            window.restart_peak()
            out = func(*args, **kwargs)
            window.synchronize()
            peak = window.peak()
        finally:
            self._inside = False
        transient = max(0, peak - before - output_bytes(out))
        self.entries[key] = max(transient, self.entries.get(key, 0))
        return out

    def _measurable(self, args: Any, kwargs: Any, index: int) -> bool:
        inp = args[index] if len(args) > index else kwargs["input"]
        weight = args[index + 1] if len(args) > index + 1 else kwargs["weight"]
        return (
            isinstance(inp, torch.Tensor)
            and inp.device.type == self.device_type
            and inp.numel() > 0
            and weight.numel() > 0
            and torch.backends.cudnn.enabled
            and not _capturing(self.device_type)
        )


def _capturing(device_type: str) -> bool:
    # (a CPU build of torch has no capture to ask about: fake CUDA tensors never capture)
    if device_type != "cuda" or not torch.cuda._is_compiled():
        return False
    return bool(torch.cuda.is_current_stream_capturing())
