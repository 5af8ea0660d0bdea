"""Every private torch API the estimator relies on, in one place, checked up front.

The estimator runs user code on fake tensors and emulates what the CUDA runtime would do on
a CPU-only torch; both need torch internals that carry no compatibility promise. They are
named here, and :func:`missing` checks them when the backend is created, so that a torch
release that moves one makes ``--vram-backend=estimate`` fail at once with
``BackendUnavailable`` naming what is gone, instead of a crash (or a silent mis-estimate)
in the middle of a test. Tested on torch 2.13 (CPU, CI) and 2.11 (CUDA 13.0, the H200).

What is used, and why:

* ``torch._subclasses.fake_tensor``: ``FakeTensor``, ``FakeTensorMode``,
  ``FakeTensorConverter`` (its ``from_meta_and_device`` is overridden: no memo, so that
  ``Module._apply`` can swap fake parameters; its ``from_real_tensor`` and ``_get_memo``
  tell the known values which fake a real tensor became, so a write to it is seen),
  ``FakeTensorMode.cpp_meta_supports_symint``
  (to prefer C++ meta kernels to decompositions), and the exceptions fake kernels raise for
  value-dependent operators;
* the dispatch cache's hot path, for speed (``docs/estimator.md``, "Speed"):
  ``FakeTensorMode.dispatch`` (called without ``__torch_dispatch__``'s wrappers),
  ``FakeTensorMode._prep_args_for_hash`` (a fake tensor argument keyed by one tuple) and
  ``_get_output_tensor_from_cache_entry`` (a hit's output made with
  ``torch._C._DisableTorchDispatch`` only, its attributes copied from the first fake tensor
  of its device), ``_DISPATCH_META_HANDLERS`` (metadata queries answered first),
  ``_DISPATCH_HANDLE_DIRECTLY``, ``_check_for_subclass`` and
  ``torch.utils._pytree.arg_tree_leaves`` (a DTensor call handed back at once);
* ``torch._C._dispatch_has_kernel_for_dispatch_key``: whether an operator has a C++ meta
  kernel;
* the c10 device-guard registry symbol (ctypes) and
  ``torch._C._acc.register_python_privateuseone_device_guard``: the no-op CUDA guard;
* ``torch.autograd.graph._engine_run_backward``: the frame that identifies queries from
  the autograd engine;
* ``torch.cuda.amp.common.amp_definitely_not_available``: autocast's availability check;
* ``aten::_scaled_dot_product_attention_math``, on whose AutogradCUDA key the SDPA
  emulation is registered (``torch.library``): on a CPU-only build every SDPA call on CUDA
  tensors reaches it; on a CUDA build without a GPU the Python entry points are patched
  instead, and ``torch._C._ExcludeDispatchKeyGuard`` / ``DispatchKey.AutocastCUDA`` run the
  fused op with autocast off, as the AutocastCUDA kernel does;
* the fused SDPA operators and the positions of their arguments and outputs
  (``_fake_kernels``): ``compute_log_sumexp`` is argument 4 of the cuDNN and efficient
  forward, philox seed/offset are outputs 6 and 7 of the cuDNN forward;
* ``torch.optim.optimizer._foreach_supported_types``: the exact tensor types for which an
  optimizer without ``foreach=`` picks its foreach implementation (fake tensors are added
  inside the scope, so the default is CUDA's);
* ``torch._dynamo.exc.BackendCompilerFailed``: recognising a ``torch.compile`` failure, to
  replace it with an error that says what to do.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: torch's own machinery between user code and a mode's ``__torch_dispatch__``.
_MACHINERY = tuple(
    os.path.join(_TORCH_DIR, p)
    for p in (
        "_subclasses",
        "_ops.py",
        "_compile.py",
        "utils/_python_dispatch.py",
        "_tensor.py",
        "overrides.py",
        "_dynamo",
        "_prims",
        "_refs",
        "_decomp",
    )
)


def _value_dependent_errors() -> tuple[type[BaseException], ...]:
    from torch._subclasses import fake_tensor

    return (fake_tensor.DataDependentOutputException, fake_tensor.DynamicOutputShapeException)


VALUE_DEPENDENT_ERRORS = _value_dependent_errors()


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.compile's compiler failing (``BackendCompilerFailed``)."""
    dynamo_exc = sys.modules.get("torch._dynamo.exc")  # never imported just for this
    failed = getattr(dynamo_exc, "BackendCompilerFailed", None)
    return failed is not None and isinstance(exc, failed)


def user_frames() -> list[traceback.FrameSummary]:
    """The calling stack, innermost first, without torch's dispatch machinery and ours."""
    frames = traceback.extract_stack(sys._getframe(1))
    return [
        f
        for f in reversed(frames)
        if not f.filename.startswith(_MACHINERY) and not f.filename.startswith(_PACKAGE_DIR)
    ]


def _has(path: str) -> bool:
    obj: Any = None
    head, *rest = path.split(".")
    try:
        obj = __import__(head)
        for i, part in enumerate(rest):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                obj = __import__(".".join([head, *rest[: i + 1]]), fromlist=["_"])
    except (ImportError, AttributeError):
        return False
    return True


#: Dotted names that must exist on this torch.
REQUIRED = (
    "torch._subclasses.fake_tensor.FakeTensor",
    "torch._subclasses.fake_tensor.FakeTensorMode.cpp_meta_supports_symint",
    "torch._subclasses.fake_tensor.FakeTensorConverter.from_meta_and_device",
    "torch._subclasses.fake_tensor.FakeTensorConverter.from_real_tensor",
    "torch._subclasses.fake_tensor.FakeTensorConverter._get_memo",
    "torch._subclasses.fake_tensor.FakeTensorMode.dispatch",
    "torch._subclasses.fake_tensor.FakeTensorMode._prep_args_for_hash",
    "torch._subclasses.fake_tensor.FakeTensorMode._get_output_tensor_from_cache_entry",
    "torch._subclasses.fake_tensor._DISPATCH_META_HANDLERS",
    "torch._subclasses.fake_tensor._DISPATCH_HANDLE_DIRECTLY",
    "torch._subclasses.fake_tensor._check_for_subclass",
    "torch.utils._pytree.arg_tree_leaves",
    "torch._C._DisableTorchDispatch",
    "torch._subclasses.fake_tensor.DataDependentOutputException",
    "torch._subclasses.fake_tensor.DynamicOutputShapeException",
    "torch._C._dispatch_has_kernel_for_dispatch_key",
    "torch.autograd.graph._engine_run_backward",
    "torch.cuda.amp.common.amp_definitely_not_available",
    "torch.library.Library",
    "torch._C._ExcludeDispatchKeyGuard",
    "torch._C.DispatchKey.AutocastCUDA",
    "torch.ops.aten._scaled_dot_product_attention_math.default",
    "torch._dynamo.exc.BackendCompilerFailed",
    "torch.optim.optimizer._foreach_supported_types",
    "torch.ops.aten._scaled_dot_product_cudnn_attention.default",
    "torch.ops.aten._scaled_dot_product_cudnn_attention_backward.default",
    "torch.ops.aten._scaled_dot_product_flash_attention.default",
    "torch.ops.aten._scaled_dot_product_efficient_attention.default",
    "torch._prims_common.suggest_memory_format",
)

#: operator -> (argument index, argument name) the estimator reads positionally
POSITIONAL_ARGS = (
    ("_scaled_dot_product_cudnn_attention", 4, "compute_log_sumexp"),
    ("_scaled_dot_product_efficient_attention", 4, "compute_log_sumexp"),
    ("_scaled_dot_product_cudnn_attention_backward", 1, "query"),
    ("convolution", 8, "groups"),
    ("convolution_backward", 9, "groups"),
    ("convolution_backward", 10, "output_mask"),
)
#: operator -> (output index, output name)
POSITIONAL_OUTPUTS = (
    ("_scaled_dot_product_cudnn_attention", 6, "philox_seed"),
    ("_scaled_dot_product_cudnn_attention", 7, "philox_offset"),
)


def _schema(op: str) -> Any:
    return getattr(torch.ops.aten, op).default._schema


def missing(cpu_only: bool) -> list[str]:
    """What this torch lacks of what the estimator needs (empty when all is there)."""
    gone = [name for name in REQUIRED if not _has(name)]
    for op, index, name in POSITIONAL_ARGS:
        try:
            args = _schema(op).arguments
            if len(args) <= index or args[index].name != name:
                gone.append(f"argument {index} of aten.{op} named {name!r}")
        except AttributeError:
            pass  # the operator itself is reported above
    for op, index, name in POSITIONAL_OUTPUTS:
        try:
            rets = _schema(op).returns
            if len(rets) <= index or rets[index].name != name:
                gone.append(f"output {index} of aten.{op} named {name!r}")
        except AttributeError:
            pass
    if cpu_only and not _has("torch._C._acc.register_python_privateuseone_device_guard"):
        gone.append("torch._C._acc.register_python_privateuseone_device_guard")
    return gone
