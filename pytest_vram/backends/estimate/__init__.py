"""The ``estimate`` backend: peak CUDA memory predicted on fake tensors, without a GPU.

Public names: :class:`EstimateBackend` (``--vram-backend=estimate``), the error
:class:`EstimateUnsupported` and the warnings :class:`RNNNotModelled`,
:class:`ConvWorkspaceUnknown` and :class:`MatmulPaddingUnknown` (for
``-W``/``filterwarnings``). The modules, each one responsibility; dependencies point down
this list, never up:

* ``backend``: :class:`EstimateBackend`: creation checks, per-test state, counters;
* ``scope``: what is in force while a build step or workload runs (the changes, the mode);
* ``compiled``: ``torch.compile``'d code: Inductor's program for the emulated card, run on
  fake tensors (with ``kernels.pad_mm``: the GPU's matmul padding decisions);
* ``fake_mode``: torch's ``FakeTensorMode``, feeding the allocator model;
* ``tracker``: fake CUDA storages replayed through the allocator model;
* ``allocator``: the model of the CUDA caching allocator (pure Python);
* ``kernels``: what CUDA kernels allocate that meta kernels do not (attention,
  reductions, convolutions with the cuDNN workspace table in ``kernels/data``, meta
  kernels torch lacks);
* ``known``: the values of fake tensors that the program alone determines;
* ``cuda_runtime``, ``autograd_engine``, ``sdpa_choice``: the emulated CUDA runtime where
  no GPU is usable;
* ``distributed``: FSDP2, DDP and DeviceMesh on a fake process group;
* ``transformers_support``: transformers reads known values;
* ``refusals``: what cannot be estimated, with the user's line and the fix;
* ``torch_compat``: every private torch API used, checked at creation.

Changes to torch go through ``pytest_vram.backends.patching``: restored when a scope
exits, or listed there as staying for the process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_vram.backends.estimate.backend import EstimateBackend
    from pytest_vram.backends.estimate.kernels.convolution import ConvWorkspaceUnknown
    from pytest_vram.backends.estimate.kernels.pad_mm import MatmulPaddingUnknown
    from pytest_vram.backends.estimate.refusals import EstimateUnsupported
    from pytest_vram.backends.estimate.scope import RNNNotModelled

#: public name -> the module that defines it, imported on first use: the modules import
#: torch, and ``allocator`` (pure Python) is importable without it
_PUBLIC = {
    "EstimateBackend": "backend",
    "EstimateUnsupported": "refusals",
    "RNNNotModelled": "scope",
    "ConvWorkspaceUnknown": "kernels.convolution",
    "MatmulPaddingUnknown": "kernels.pad_mm",
}

__all__ = [
    "ConvWorkspaceUnknown",
    "EstimateBackend",
    "EstimateUnsupported",
    "MatmulPaddingUnknown",
    "RNNNotModelled",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
