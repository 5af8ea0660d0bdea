"""Memory that CUDA kernels allocate internally, invisible at the dispatcher.

A fake tensor runs an operator's meta kernel, which creates the operator's outputs and
nothing else. Three tables describe where the real CUDA kernel does otherwise:

* :data:`INTERNAL_BUFFERS` maps an operator to a function giving the sizes of the transient
  buffers its CUDA implementation allocates through the caching allocator for the duration
  of the call (workspaces, accumulators), allocated after the outputs and freed before the
  call returns, in the order the CUDA code allocates them. Those bytes are in the real peak,
  and the blocks they take shape the pool for every later allocation.
* :data:`OUTPUT_PLAN` maps an operator to a function giving the outputs the CUDA kernel
  really allocates, in its order: an output the meta kernel makes on the meta device but
  CUDA makes on the GPU is listed (and counted), one the meta kernel makes but CUDA leaves
  undefined is left out (and not counted).
* :data:`OUTPUT_LAYOUT` maps an operator to the memory format CUDA gives each output where
  the meta kernel decides otherwise.

The kernels, one module each: fused attention (:mod:`.attention`), reductions
(:mod:`.reductions`, on the launch configuration of :mod:`.reduce_launch`), convolutions
(:mod:`.convolution`, on a table of cuDNN workspaces measured on the GPU, ``data/``); the
meta kernels torch lacks: :mod:`.missing_meta`.

Persistent, lazily created buffers (cuBLAS/cuBLASLt workspaces) are not modelled: the
measurement contract warms them up before the first test and excludes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_vram.backends.estimate.kernels import attention, convolution, reductions

_aten = torch.ops.aten

#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {
    **attention.INTERNAL_BUFFERS,
    **reductions.INTERNAL_BUFFERS,
    **convolution.INTERNAL_BUFFERS,
}

#: operator overload -> (args, kwargs, outputs) -> the outputs CUDA allocates, in order
OUTPUT_PLAN: dict[Any, Callable[[Any, Any, Any], list[Any]]] = dict(attention.OUTPUT_PLAN)

#: operator overload -> (args, kwargs, outputs) -> the memory format CUDA gives each output
#: (None: as the meta kernel made it), where the meta kernel decides otherwise
OUTPUT_LAYOUT: dict[Any, Callable[[Any, Any, Any], list[Any]]] = dict(convolution.OUTPUT_LAYOUT)

#: In-place operators without outputs and without a meta kernel on some torch versions
#: (the fused SGD/Adagrad optimizer steps, the tensor-lr fused Adam/AdamW): their CUDA
#: kernels update their inputs through ``multi_tensor_apply`` and allocate nothing, so the
#: fake mode skips them (the tensors they mutate are already counted).
#: ``record_stream`` (no meta kernel either) only marks a block for a stream: the caching
#: allocator counts a block's bytes as freed when its tensor dies, recorded streams or not.
NO_ALLOCATION_INPLACE = frozenset(
    overload
    for name in (
        "_fused_sgd_",
        "_fused_adagrad_",
        "_fused_adam_",
        "_fused_adamw_",
        "record_stream",
    )
    if hasattr(_aten, name)
    for overload in (getattr(getattr(_aten, name), o) for o in getattr(_aten, name).overloads())
)
