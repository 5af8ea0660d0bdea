"""Every private torch API the estimator relies on, in one place, checked up front.

The estimator runs user code on fake tensors and emulates what the CUDA runtime would do on
a CPU-only torch; both need torch internals that carry no compatibility promise. They are
named here, and :func:`check` verifies them when the backend is created, so that a torch
release that moves or changes one makes ``--vram-backend=estimate`` fail at once with
``BackendUnavailable`` naming what is missing or changed and the fix, instead of a crash
(or a silent mis-estimate) in the middle of a test. Supported: :data:`SUPPORTED_TORCH`
(pyproject.toml's requirement), tested on torch 2.13 (CPU, CI) and 2.11 (CUDA 13.0, the
H200).

What is checked:

* :data:`REQUIRED`: names that must exist (the C++ bindings among them have no Python
  signature to compare);
* :data:`OVERRIDES`: methods the estimator's subclasses override. Torch calls them with its
  own arguments, so their parameters (names and kinds) must be exactly the expected ones;
* :data:`CALLS`: private functions the estimator calls, with the call it makes: the call
  must bind to their signature;
* :data:`FIELDS`: attributes of torch's objects the estimator reads (the dispatch cache's
  entries, a fresh fake mode and its converter);
* :data:`POSITIONAL_ARGS`, :data:`POSITIONAL_OUTPUTS`: the positions of operator arguments
  and outputs the kernel models read.

:data:`DISTRIBUTED_CALLS` (FSDP2, DeviceMesh, DTensor, DDP: modules that take about a
second to import) are checked by :func:`check_distributed` when a test first starts a
simulated world, before anything is patched.

What is used, and why:

* ``torch._subclasses.fake_tensor``: ``FakeTensor``, ``FakeTensorMode``,
  ``FakeTensorConverter`` (its ``from_meta_and_device`` is overridden: no memo, so that
  ``Module._apply`` can swap fake parameters; its ``from_real_tensor`` and ``_get_memo``
  tell the known values which fake a real tensor became, so a write to it is seen),
  ``FakeTensorMode.cpp_meta_supports_symint`` (to prefer C++ meta kernels to
  decompositions), ``may_turn_const`` (small CPU results keep their values), and the
  exceptions fake kernels raise for value-dependent and unsupported operators;
  ``init_gpu_context`` (replaced by a no-op while the emulated card answers: it would make
  a real CUDA tensor, which fails on a CUDA build with no visible GPU);
* the dispatch cache's hot path, for speed (``docs/estimator.md``, "Speed"):
  ``FakeTensorMode.dispatch`` (called without ``__torch_dispatch__``'s wrappers),
  ``FakeTensorMode._prep_args_for_hash`` (a fake tensor argument keyed by one tuple) and
  ``_get_output_tensor_from_cache_entry`` (a hit's output made with
  ``torch._C._DisableTorchDispatch`` only, its attributes copied from the first fake tensor
  of its device), ``_DISPATCH_META_HANDLERS`` (metadata queries answered first),
  ``_DISPATCH_HANDLE_DIRECTLY``, ``_check_for_subclass`` and
  ``torch.utils._pytree.arg_tree_leaves`` (a DTensor call handed back at once),
  ``TorchDispatchMode._should_skip_dynamo`` (no Dynamo-disabling wrapper per call);
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
  (``kernels.attention``): ``compute_log_sumexp`` is argument 4 of the cuDNN and efficient
  forward, philox seed/offset are outputs 6 and 7 of the cuDNN forward;
* ``torch.optim.optimizer._foreach_supported_types``: the exact tensor types for which an
  optimizer without ``foreach=`` picks its foreach implementation (fake tensors are added
  inside the scope, so the default is CUDA's);
* ``torch._dynamo.exc.BackendCompilerFailed``: recognising a ``torch.compile`` failure, to
  replace it with an error that says what to do;
* the compiler (:mod:`.compiled`, :mod:`.kernels.pad_mm`): Dynamo's compile callbacks,
  device interface and code execution strategies, ``FunctionalTensor``'s wrapper and
  mode, the proxy tracer's constant limit, Inductor's constant folder, device properties,
  kernel compilation, wrapper loading, ``compile_fx``, ``pad_mm`` and configuration
  (:data:`COMPILE_REQUIRED`, checked by :func:`check_compile` when a scope first
  compiles: a torch that moved one refuses compiled code, never eager code);
* FSDP2's ``alloc_storage``/``free_storage``, ``DeviceMesh.__init__``,
  ``OffsetBasedRNGTracker.__init__``, DDP's start-up checks and ``_get_device_handle``
  (:mod:`.distributed`), and ``redirect_to_mode`` (DTensor's RNG operator).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses import fake_tensor

#: the torch versions the estimator supports: pyproject.toml's requirement
SUPPORTED_TORCH = "torch>=2.11,<2.14"


#: what fake kernels raise for an operator whose result depends on tensor values
VALUE_DEPENDENT_ERRORS: tuple[type[BaseException], ...] = (
    fake_tensor.DataDependentOutputException,
    fake_tensor.DynamicOutputShapeException,
)


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.compile's compiler failing (``BackendCompilerFailed``)."""
    dynamo_exc = sys.modules.get("torch._dynamo.exc")  # never imported just for this
    failed = getattr(dynamo_exc, "BackendCompilerFailed", None)
    return failed is not None and isinstance(exc, failed)


_FAKE = "torch._subclasses.fake_tensor"

#: Dotted names that must exist on this torch.
REQUIRED = (
    f"{_FAKE}.FakeTensor",
    f"{_FAKE}.FakeTensorMode.cpp_meta_supports_symint",
    f"{_FAKE}.FakeTensorMode.avoid_device_init",
    f"{_FAKE}.init_gpu_context",
    "torch.cuda._lazy_init",
    "torch.cuda.memory.memory_stats_as_nested_dict",
    f"{_FAKE}.FakeTensorConverter.from_meta_and_device",
    f"{_FAKE}.FakeTensorConverter.from_real_tensor",
    f"{_FAKE}.FakeTensorConverter._get_memo",
    f"{_FAKE}.FakeTensorMode.dispatch",
    f"{_FAKE}.FakeTensorMode._prep_args_for_hash",
    f"{_FAKE}.FakeTensorMode._get_output_tensor_from_cache_entry",
    f"{_FAKE}._DISPATCH_META_HANDLERS",
    f"{_FAKE}._DISPATCH_HANDLE_DIRECTLY",
    f"{_FAKE}._check_for_subclass",
    f"{_FAKE}.FakeTensorConfig.debug",
    f"{_FAKE}.no_dispatch",
    f"{_FAKE}.UnsupportedOperatorException",
    "torch.utils._pytree.arg_tree_leaves",
    "torch._C._DisableTorchDispatch",
    "torch._C._set_conj",
    "torch._C._set_neg",
    "torch._C._set_warn_deprecated_on_mutable_data_ptr",
    "torch._C._set_throw_on_mutable_data_ptr",
    "torch.Tensor._make_subclass",
    f"{_FAKE}.DataDependentOutputException",
    f"{_FAKE}.DynamicOutputShapeException",
    "torch._C._dispatch_has_kernel_for_dispatch_key",
    "torch._C._autograd.DeviceType",
    "torch.autograd.graph._engine_run_backward",
    "torch.cuda.amp.common.amp_definitely_not_available",
    "torch.library.Library",
    "torch._C._ExcludeDispatchKeyGuard",
    "torch._C.DispatchKey.AutocastCUDA",
    "torch.ops.aten._scaled_dot_product_attention_math.default",
    "torch._dynamo.exc.BackendCompilerFailed",
    "torch.optim.optimizer._foreach_supported_types",
    "torch._VF.vf",
    "torch._C._get_accelerator",
    "torch.ops.aten._scaled_dot_product_cudnn_attention.default",
    "torch.ops.aten._scaled_dot_product_cudnn_attention_backward.default",
    "torch.ops.aten._scaled_dot_product_flash_attention.default",
    "torch.ops.aten._scaled_dot_product_efficient_attention.default",
    "torch._prims_common.suggest_memory_format",
)


@dataclass(frozen=True)
class Override:
    """A torch method the estimator overrides: torch calls the override with its own
    arguments, so the parameters (names and kinds) must be exactly ``params``."""

    path: str
    params: str
    #: absent on this torch: the override is simply never called, nothing breaks
    optional: bool = False


@dataclass(frozen=True)
class Call:
    """A private torch function the estimator calls as ``call`` shows: the arguments before
    ``*`` by position (their names say what is passed), those after it by keyword."""

    path: str
    call: str


OVERRIDES = (
    Override(
        f"{_FAKE}.FakeTensorMode._prep_args_for_hash",
        "(self, result, args, state, id_hashed_objects)",
    ),
    Override(
        f"{_FAKE}.FakeTensorMode._get_output_tensor_from_cache_entry",
        "(self, state, entry, key, func, args)",
    ),
    Override(f"{_FAKE}.FakeTensorMode.cpp_meta_supports_symint", "(self, func)"),
    Override(f"{_FAKE}.FakeTensorMode.may_turn_const", "(self, t)"),
    # a classmethod: its signature without ``cls``
    Override(f"{_FAKE}.FakeTensorMode._should_skip_dynamo", "()", optional=True),
    Override(
        f"{_FAKE}.FakeTensorConverter.from_meta_and_device",
        "(self, fake_mode, t, device, pytype, dispatch_keys)",
    ),
)

CALLS = (
    Call(
        f"{_FAKE}.FakeTensorMode.__init__",
        "(self, *, allow_non_fake_inputs, allow_fallback_kernels)",
    ),
    Call(f"{_FAKE}.FakeTensorMode.dispatch", "(self, func, types, args, kwargs)"),
    Call(f"{_FAKE}.FakeTensorMode.is_our_fake", "(self, t)"),
    Call(f"{_FAKE}.FakeTensor", "(fake_mode, elem, device, *, pytype, dispatch_keys)"),
    Call(f"{_FAKE}.FakeTensorConverter.from_real_tensor", "(self, fake_mode, t, *, make_constant)"),
    Call(f"{_FAKE}.FakeTensorConverter._get_memo", "(self, t)"),
    Call(f"{_FAKE}.FakeTensorConverter.invalidate_constant_aliases", "(self, tensor)"),
    Call(f"{_FAKE}._check_for_subclass", "(flat_args)"),
    Call(f"{_FAKE}.unset_fake_temporarily", "()"),
    Call("torch._prims_common.suggest_memory_format", "(x)"),
)

#: torch's objects and the attributes the estimator reads of them
FIELDS = (
    (f"{_FAKE}._DispatchCacheEntryOutputInfo", ("inplace_idx", "metadata", "view_idx")),
    (
        f"{_FAKE}.TensorMetadata",
        (
            "dtype",
            "shape",
            "stride",
            "device",
            "layout",
            "storage_offset",
            "requires_grad",
            "is_conj",
            "is_neg",
        ),
    ),
    (
        "a new FakeTensorMode()",
        ("shape_env", "fake_tensor_converter", "_allow_unsafe_data_ptr_access"),
    ),
    (
        "a new FakeTensorMode().fake_tensor_converter.meta_converter",
        ("tensor_memo", "describer"),
    ),
)

_DISTRIBUTED = "torch.distributed"
_FSDP = f"{_DISTRIBUTED}.fsdp._fully_shard"
#: the calls and replacements of :mod:`.distributed`, checked when a world first starts
DISTRIBUTED_CALLS = (
    Call(f"{_FSDP}._fsdp_param.alloc_storage", "(tensor)"),
    Call(f"{_FSDP}._fsdp_param.free_storage", "(tensor)"),
    Call(
        f"{_DISTRIBUTED}.device_mesh.DeviceMesh.__init__", "(self, device_type, mesh, *, _rank_map)"
    ),
    Call(f"{_DISTRIBUTED}.device_mesh._get_device_handle", "(device_type)"),
    Call(
        f"{_DISTRIBUTED}.tensor._random.OffsetBasedRNGTracker.__init__",
        "(self, device_mesh, *, run_state_sync)",
    ),
    Call("torch._higher_order_ops.utils.redirect_to_mode", "(hop, mode)"),
)
#: names that must exist for sharded training (DDP's start-up checks are replaced by
#: functions that take any arguments: only their names matter)
DISTRIBUTED_REQUIRED = (
    f"{_DISTRIBUTED}.device_mesh.init_device_mesh",
    "torch.nn.parallel.distributed._verify_param_shape_across_processes",
    "torch.nn.parallel.distributed._sync_module_states",
    "torch._prims.rng_prims.run_dtensor_rng_op.python_key_table",
)

_INDUCTOR = "torch._inductor"
#: what the estimate of compiled code uses (``compiled``, ``kernels.pad_mm``), checked when
#: a scope first compiles: a torch that moved one refuses compiled code only
COMPILE_REQUIRED = (
    "torch._dynamo.callback.callback_handler.register_start_callback",
    "torch._dynamo.callback.callback_handler.register_end_callback",
    "torch._dynamo.callback.callback_handler.remove_start_callback",
    "torch._dynamo.callback.callback_handler.remove_end_callback",
    "torch._dynamo.device_interface.CudaInterface",
    "torch._dynamo.device_interface.caching_worker_device_properties",
    "torch._dynamo.types.FrameExecStrategy",
    "torch._dynamo.trace_rules.get_torch_obj_rule_map",
    "torch._dynamo.types.FrameAction.SKIP",
    "torch._C._dynamo.eval_frame.set_code_exec_strategy",
    "torch._dynamo.config.automatic_dynamic_local_pgo",
    "torch._dynamo.config.automatic_dynamic_remote_pgo",
    "torch._functorch.config.enable_autograd_cache",
    "torch._functorch.config.enable_remote_autograd_cache",
    "torch._subclasses.functional_tensor.FunctionalTensor",
    "torch._subclasses.functional_tensor.FunctionalTensorMode.__torch_dispatch__",
    "torch._C.TensorBase._make_wrapper_subclass",
    "torch.fx.experimental.proxy_tensor.CONSTANT_NUMEL_LIMIT",
    "torch._C._conv_determine_backend_memory_format",
    f"{_INDUCTOR}.fx_passes.joint_graph.UniformValueConstantFolder._deduce_value",
    f"{_INDUCTOR}.runtime.hints.DeviceProperties.create",
    f"{_INDUCTOR}.async_compile.AsyncCompile.triton",
    f"{_INDUCTOR}.codecache.PyCodeCache.load_by_key_path",
    f"{_INDUCTOR}.compile_fx.clone_preserve_strides",
    f"{_INDUCTOR}.fx_passes.pad_mm.can_pad",
    f"{_INDUCTOR}.fx_passes.pad_mm.hint_symbols",
    f"{_INDUCTOR}.config.triton.cudagraphs",
    f"{_INDUCTOR}.config.max_autotune",
    f"{_INDUCTOR}.config.max_autotune_gemm",
    f"{_INDUCTOR}.config.max_autotune_pointwise",
    f"{_INDUCTOR}.config.cpp_wrapper",
    f"{_INDUCTOR}.config.force_shape_pad",
    f"{_INDUCTOR}.config.compile_threads",
    f"{_INDUCTOR}.config.fx_graph_cache",
    f"{_INDUCTOR}.config.fx_graph_remote_cache",
    f"{_INDUCTOR}.config.autotune_local_cache",
    f"{_INDUCTOR}.config.autotune_remote_cache",
    f"{_INDUCTOR}.config.bundled_autotune_remote_cache",
)
#: the compiler's functions the estimate replaces while compiling (torch calls them)
COMPILE_OVERRIDES = (
    Override(
        "torch._dynamo.variables.optimizer.OptimizerVariable.call_method",
        "(self, tx, name, args, kwargs)",
    ),
    Override(f"{_INDUCTOR}.fx_passes.pad_mm.should_pad", "(match, mat1, mat2, op, input)"),
)
#: the compiler's functions the estimate calls
COMPILE_CALLS = (
    Call(f"{_INDUCTOR}.compile_fx.compile_fx", "(model_, example_inputs_, *, config_patches)"),
    Call(f"{_INDUCTOR}.fx_passes.pad_mm.should_pad_bench_key", "(match, mat1, mat2, op, input)"),
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

_MISSING = object()


def _lookup(path: str) -> Any:
    """The object a dotted name names (importing its modules), or ``_MISSING``."""
    head, *rest = path.split(".")
    try:
        obj: Any = importlib.import_module(head)
        for i, part in enumerate(rest):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                obj = importlib.import_module(".".join([head, *rest[: i + 1]]))
    except (ImportError, AttributeError):
        return _MISSING
    return obj


def _has(path: str) -> bool:
    return _lookup(path) is not _MISSING


def _shape(signature: inspect.Signature) -> str:
    """A signature's parameter names and kinds, as written, without annotations or defaults."""
    params = [p.replace(annotation=p.empty, default=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=signature.empty))


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # a C++ binding: no signature to compare
        return None


def _override_problem(spec: Override) -> str | None:
    obj = _lookup(spec.path)
    if obj is _MISSING:
        return None  # reported by missing() unless optional
    signature = _signature(obj)
    found = "no Python signature" if signature is None else _shape(signature)
    if found == spec.params:
        return None
    return f"{spec.path} (overridden): expected {spec.params}, found {found}"


def _call_problem(spec: Call) -> str | None:
    obj = _lookup(spec.path)
    if obj is _MISSING:
        return None  # reported by missing()
    signature = _signature(obj)
    if signature is None:
        return f"{spec.path} (called as {spec.call}): found no Python signature"
    positional, _, keywords = spec.call.strip("()").partition("*")
    n = len([name for name in positional.split(",") if name.strip()])
    names = [name.strip() for name in keywords.split(",") if name.strip()]
    try:
        signature.bind(*[None] * n, **dict.fromkeys(names))
    except TypeError:
        return f"{spec.path} (called as {spec.call}): found {_shape(signature)}"
    return None


def _missing_fields() -> list[str]:
    mode: Any = None
    problems = []
    for owner, fields in FIELDS:
        if owner.startswith("a new FakeTensorMode()"):
            mode = mode if mode is not None else fake_tensor.FakeTensorMode()
            obj = mode
            if owner.endswith(".meta_converter"):
                obj = getattr(getattr(mode, "fake_tensor_converter", None), "meta_converter", None)
        else:
            obj = _lookup(owner)
            if obj is _MISSING:
                problems.append(owner)
                continue
        declared = getattr(obj, "__dataclass_fields__", None)
        gone = [
            f for f in fields if not (hasattr(obj, f) or (declared is not None and f in declared))
        ]
        problems += [f"{owner}.{f}" if obj is not mode else f"{owner}: .{f}" for f in gone]
    return problems


def _schema(op: str) -> Any:
    return getattr(torch.ops.aten, op).default._schema


def _positional_problems() -> list[str]:
    problems = []
    for op, index, name in POSITIONAL_ARGS:
        try:
            args = _schema(op).arguments
        except AttributeError:
            continue  # the operator itself is reported as missing
        if len(args) <= index or args[index].name != name:
            problems.append(f"argument {index} of aten.{op} named {name!r}")
    for op, index, name in POSITIONAL_OUTPUTS:
        try:
            rets = _schema(op).returns
        except AttributeError:
            continue
        if len(rets) <= index or rets[index].name != name:
            problems.append(f"output {index} of aten.{op} named {name!r}")
    return problems


def missing(cpu_only: bool) -> list[str]:
    """What this torch lacks of what the estimator needs (empty when all is there)."""
    gone = [name for name in REQUIRED if not _has(name)]
    gone += [s.path for s in (*OVERRIDES, *CALLS) if not _has(s.path) and not _optional(s)]
    gone += _missing_fields() + _positional_problems()
    if cpu_only and not _has("torch._C._acc.register_python_privateuseone_device_guard"):
        gone.append("torch._C._acc.register_python_privateuseone_device_guard")
    return gone


def changed() -> list[str]:
    """The overridden or called internals whose signature this torch changed."""
    problems = [p for spec in OVERRIDES if (p := _override_problem(spec)) is not None]
    return problems + [p for spec in CALLS if (p := _call_problem(spec)) is not None]


def _optional(spec: Override | Call) -> bool:
    return isinstance(spec, Override) and spec.optional


def _message(gone: list[str], different: list[str]) -> str | None:
    parts = []
    if gone:
        parts.append(f"torch internals that torch {torch.__version__} lacks: {'; '.join(gone)};")
    if different:
        parts.append(
            f"torch internals whose signature torch {torch.__version__} changed: "
            f"{'; '.join(different)};"
        )
    if not parts:
        return None
    return (
        f"the estimate backend needs {' and '.join(parts)} use a torch the estimator "
        f"supports ({SUPPORTED_TORCH}) or measure with --vram-backend=cuda"
    )


def check(cpu_only: bool) -> str | None:
    """The error message for what this torch lacks or changed, or None when all is fit."""
    return _message(missing(cpu_only), changed())


def check_distributed() -> str | None:
    """As :func:`check`, for the internals of sharded training (a world's first start)."""
    gone = [name for name in DISTRIBUTED_REQUIRED if not _has(name)]
    gone += [spec.path for spec in DISTRIBUTED_CALLS if not _has(spec.path)]
    different = [p for spec in DISTRIBUTED_CALLS if (p := _call_problem(spec)) is not None]
    return _message(gone, different)


def check_compile() -> str | None:
    """As :func:`check`, for the estimate of compiled code (a scope's first compile)."""
    gone = [name for name in COMPILE_REQUIRED if not _has(name)]
    gone += [spec.path for spec in (*COMPILE_OVERRIDES, *COMPILE_CALLS) if not _has(spec.path)]
    different = [p for spec in COMPILE_OVERRIDES if (p := _override_problem(spec)) is not None]
    different += [p for spec in COMPILE_CALLS if (p := _call_problem(spec)) is not None]
    return _message(gone, different)
