"""cuDNN convolution workspaces, without a GPU: a table measured on one, looked up by call.

A CUDA convolution (``aten.convolution``) and its backward (``aten.convolution_backward``)
run through cuDNN, which needs a workspace for the algorithm its heuristics pick
(``torch.backends.cudnn.benchmark=False``), and PyTorch converts tensors to the layout the
algorithm wants. Both come from the caching allocator for the duration of the call and are
gone when it returns: the peak sees them, ``allocated`` does not. The algorithm, and so the
size, depends on the GPU, the cuDNN version and every property of the call; no formula
covers it (the ResNet-34 step on the H200 holds 0 B to 134 MB per convolution). So the
sizes are measured on the GPU the estimate models (``tools/cudnn_workspace.py``) and
shipped as a table, ``data/cudnn_workspace_<arch>_cudnn<version>.json.gz``, keyed by
:func:`call_key`: direction, dtype, shapes and strides of every tensor cuDNN reads, the
convolution's parameters, bias, the backward's output mask and the global cuDNN flags
that change the choice (TF32, deterministic, benchmark).

A table entry is the *transient*: the peak during the call minus what was allocated before
it and minus its (512-byte rounded) outputs. The estimator allocates it as one buffer after
the outputs and frees it at once (``tracker.StorageTracker.transient``), which gives the call's
peak exactly under expandable segments, where only the sum of live requests counts.

A project adds its own measurements: the ``cuda`` backend records the transient of every
convolution a test runs when it updates baselines (``backends.workspace_recorder``), the
session writes them to ``baselines/cudnn-workspaces/<arch>_cudnn<version>.yaml`` and hands
the file's entries for the setup the estimate models to the estimator
(:class:`ProjectWorkspaces`, in force as :data:`project` while the estimator's scope is),
which looks a call up there first, then in the shipped table.

ATen's own CUDA convolutions (the NCHW depthwise kernel; ``slow_conv2d`` with cuDNN
disabled) follow rules the same measurements confirm (:func:`_native`). A cuDNN call that
is in neither is counted without a workspace, since no rule covers cuDNN's choice, and
reported: one :class:`ConvWorkspaceUnknown` warning per test (``tracker.StorageTracker``),
whose fix is the recording run. :func:`cuda_memory_format` gives the results the layout
cuDNN gives them, which the meta kernel does not know. docs/estimator.md, "cuDNN
convolution workspaces", has the data.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch._prims_common import suggest_memory_format

from pytest_vram.backends.estimate.kernels.reductions import bias_grad_buffers

DATA_DIR = Path(__file__).parent / "data"
#: where the shipped tables are, as a user finds them in the package
TABLE_DIR = "pytest_vram/backends/estimate/kernels/data"
#: the GPU and cuDNN the estimate models where no GPU is usable: the H200 (sm90) with the
#: cuDNN of torch 2.11.0+cu130
EMULATED_ARCH = "sm90"
EMULATED_CUDNN = 91900
TABLE_FORMAT = 1


#: where a project's recorded workspaces live, inside its baselines directory
PROJECT_DIR = "cudnn-workspaces"


@dataclasses.dataclass
class ProjectWorkspaces:
    """The convolution workspaces a project recorded for the setup the estimate models
    (key -> transient bytes), and the file they are read from, as the session names it
    (None: the estimator was not told of a project). One per backend, updated in place by
    ``EstimateBackend.use_workspaces``."""

    entries: Mapping[str, int] = dataclasses.field(default_factory=dict)
    source: str | None = None


#: the project's workspaces while the estimator's scope is active (``scope.Scope`` sets it
#: for the scope and restores it; a module attribute, so the autograd engine's thread sees
#: it too); None outside, or without a project
project: ProjectWorkspaces | None = None


class ConvWorkspaceUnknown(UserWarning):
    """A convolution whose cuDNN workspace the estimator does not know; the estimate may
    be low by up to that workspace."""


def _dims(values: Sequence[Any]) -> str:
    return ",".join(str(int(v)) for v in values)


def _tensor(t: Any) -> str:
    return f"{_dims(t.shape)}:{_dims(t.stride())}"


def flags() -> tuple[bool, bool, bool]:
    """The global cuDNN settings that change the algorithm: TF32, deterministic, benchmark."""
    cudnn = torch.backends.cudnn
    return bool(cudnn.allow_tf32), bool(cudnn.deterministic), bool(cudnn.benchmark)


def call_key(
    direction: str,
    inp: Any,
    weight: Any,
    grad_output: Any,
    bias: bool,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool] | None,
    cudnn_flags: tuple[bool, bool, bool],
) -> str:
    """The table key of one call: every property that decides what cuDNN runs."""
    tf32, det, bench = cudnn_flags
    parts = [direction, str(inp.dtype).removeprefix("torch.")]
    if grad_output is not None:
        parts.append(f"go={_tensor(grad_output)}")
    parts += [
        f"x={_tensor(inp)}",
        f"w={_tensor(weight)}",
        f"bias={int(bool(bias))}",
        f"s={_dims(stride)}",
        f"p={_dims(padding)}",
        f"d={_dims(dilation)}",
        f"t={int(bool(transposed))}",
        f"op={_dims(output_padding)}",
        f"g={int(groups)}",
    ]
    if output_mask is not None:
        parts.append("mask=" + "".join(str(int(bool(m))) for m in output_mask))
    parts.append(f"tf32={int(tf32)} det={int(det)} bench={int(bench)}")
    return " ".join(parts)


def _arg(args: Any, kwargs: Any, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


def forward_key(args: Any, kwargs: Any, cudnn_flags: tuple[bool, bool, bool]) -> str:
    """:func:`call_key` of ``aten.convolution(input, weight, bias, stride, padding,
    dilation, transposed, output_padding, groups)``."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed")
    inp, weight, bias, stride, padding, dilation, transposed = (
        _arg(args, kwargs, i, n) for i, n in enumerate(names)
    )
    output_padding = _arg(args, kwargs, 7, "output_padding")
    groups = _arg(args, kwargs, 8, "groups")
    return call_key(
        "fwd", inp, weight, None, bias is not None, stride, padding, dilation, transposed,
        output_padding, groups, None, cudnn_flags,
    )  # fmt: skip


def backward_key(args: Any, kwargs: Any, cudnn_flags: tuple[bool, bool, bool]) -> str:
    """:func:`call_key` of ``aten.convolution_backward(grad_output, input, weight,
    bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
    output_mask)``."""
    names = (
        "grad_output", "input", "weight", "bias_sizes", "stride", "padding", "dilation",
        "transposed", "output_padding", "groups", "output_mask",
    )  # fmt: skip
    go, inp, weight, bias_sizes, stride, padding, dilation, transposed, out_pad, groups, mask = (
        _arg(args, kwargs, i, n) for i, n in enumerate(names)
    )
    # The bias gradient is what the mask asks for (autograd passes bias sizes either way).
    return call_key(
        "bwd", inp, weight, go, bool(mask[2]), stride, padding, dilation, transposed,
        out_pad, groups, mask, cudnn_flags,
    )  # fmt: skip


def table_name(arch: str, cudnn_version: int) -> str:
    return f"cudnn_workspace_{arch}_cudnn{cudnn_version}.json.gz"


@functools.cache
def load_table(name: str) -> dict[str, int] | None:
    """The entries of a shipped table (key -> transient bytes), None if there is none."""
    path = DATA_DIR / name
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    if data.get("format") != TABLE_FORMAT:
        raise ValueError(
            f"{path}: table format {data.get('format')!r}, this plugin reads {TABLE_FORMAT}; "
            "regenerate it with tools/cudnn_workspace.py --table"
        )
    return {key: int(n) for key, n in data["entries"].items()}


class Buffers(list):  # type: ignore[type-arg]
    """Transient byte sizes of one call, and what the estimator could not know about it.

    ``unmodelled`` is a description of the call when its workspace is unknown (counted as
    nothing); the estimator warns about it once per test.
    """

    unmodelled: str | None = None


def _unknown(description: str) -> Buffers:
    buffers = Buffers()
    buffers.unmodelled = description
    return buffers


def gpu_visible() -> bool:
    """Whether a real GPU is visible (``torch.cuda.is_available()`` without the emulation)."""
    return torch.cuda._is_compiled() and torch._C._cuda_getDeviceCount() > 0


def current_setup() -> tuple[str, int]:
    """The GPU architecture and cuDNN version the estimate models: a real GPU's where one
    is visible (asked of the runtime itself: inside the estimator's scope
    ``torch.cuda.is_available()`` answers for the emulated card), else the H200's."""
    if gpu_visible():
        major, minor = torch.cuda.get_device_capability()
        return f"sm{major}{minor}", int(torch.backends.cudnn.version() or 0)
    return EMULATED_ARCH, EMULATED_CUDNN


def cudnn_text(version: int) -> str:
    """``91900`` -> ``"9.19.0"`` (cuDNN 9 numbers its versions major*10000 + minor*100 +
    patch, cuDNN 8 major*1000 + minor*100 + patch)."""
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    if version >= 8000:
        return f"{version // 1000}.{version // 100 % 10}.{version % 100}"
    return str(version)


def current_table() -> tuple[str, dict[str, int] | None]:
    """The shipped table for the setup the estimate models (:func:`current_setup`), by
    file name, and its entries."""
    name = table_name(*current_setup())
    return name, load_table(name)


def _layout(t: Any) -> str:
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return f"strides {list(t.stride())}"


def describe(direction: str, inp: Any, weight: Any, params: dict[str, Any]) -> str:
    """A convolution as a user recognises it: shapes, dtype, layout, parameters."""
    what = "convolution backward" if direction == "bwd" else "convolution"
    text = (
        f"{what} of input {str(inp.dtype).removeprefix('torch.')}{list(inp.shape)} "
        f"({_layout(inp)}), weight {list(weight.shape)} ({_layout(weight)}), "
        f"stride {list(params['stride'])}, padding {list(params['padding'])}"
    )
    if any(int(d) != 1 for d in params["dilation"]):
        text += f", dilation {list(params['dilation'])}"
    if int(params["groups"]) != 1:
        text += f", groups {int(params['groups'])}"
    if params["transposed"]:
        text += ", transposed"
    if params["bias"]:
        text += ", bias"
    if params.get("mask") is not None:
        text += ", gradients of " + "/".join(
            n for n, m in zip(("input", "weight", "bias"), params["mask"], strict=True) if m
        )
    return text


def _is_depthwise(inp: Any, weight: Any, groups: int, transposed: bool) -> bool:
    """``ConvParams::is_depthwise``: one group per input channel (a multiplier allowed)."""
    return (
        not transposed
        and inp.dim() in (4, 5)
        and groups > 1
        and int(inp.shape[1]) == groups
        and int(weight.shape[0]) % int(inp.shape[1]) == 0
    )


def _columns(inp: Any, weight: Any, stride: Sequence[int], padding: Sequence[int]) -> int:
    """Bytes of the im2col buffer of the native ``slow_conv2d`` (one image at a time)."""
    cin, kh, kw = int(weight.shape[1]), int(weight.shape[2]), int(weight.shape[3])
    h, w = int(inp.shape[2]), int(inp.shape[3])
    h_out = (h + 2 * int(padding[0]) - kh) // int(stride[0]) + 1
    w_out = (w + 2 * int(padding[1]) - kw) // int(stride[1]) + 1
    return cin * kh * kw * h_out * w_out * inp.element_size()


def _native(direction: str, inp: Any, weight: Any, params: dict[str, Any]) -> Buffers | None:
    """The buffers of ATen's own CUDA convolutions, where a rule measured on the H200
    covers the call (``tools/cudnn_workspace.py``: every depthwise call of the grid, 129 calls
    with cuDNN disabled); None where none does.

    * The native depthwise kernel (``conv_depthwise2d``, what a depthwise convolution in
      NCHW runs in fp32 and bf16, and any depthwise one with cuDNN disabled) holds
      nothing; a bias gradient is ``grad_output.sum((0, 2, 3))`` with its reduction's
      staging buffer.
    * ``slow_conv2d`` (cuDNN disabled) unfolds one image at a time into a
      ``(C_in * kH * kW, H_out * W_out)`` buffer of the input's dtype, with or without
      bias, for any backward mask, except a forward 1x1 convolution with stride 1 and no
      padding, which needs none.
    """
    contiguous = inp.is_contiguous() and weight.is_contiguous()
    if not contiguous or inp.dim() != 4:
        return None
    groups, transposed = int(params["groups"]), bool(params["transposed"])
    mask = params.get("mask")
    if _is_depthwise(inp, weight, groups, transposed):
        if direction == "bwd" and mask[2]:
            return Buffers(bias_grad_buffers(params["grad_output"], params["grad_bias"]))
        return Buffers()
    if torch.backends.cudnn.enabled or groups != 1 or transposed:
        return None
    if any(int(d) != 1 for d in params["dilation"]):
        return None
    pointwise = (
        tuple(int(n) for n in weight.shape[2:]) == (1, 1)
        and all(int(s) == 1 for s in params["stride"])
        and all(int(p) == 0 for p in params["padding"])
    )
    if direction == "fwd" and pointwise:
        return Buffers()
    return Buffers([_columns(inp, weight, params["stride"], params["padding"])])


def _buffers(direction: str, key: str, inp: Any, weight: Any, params: dict[str, Any]) -> Buffers:
    if inp.device.type != "cuda" or inp.numel() == 0 or weight.numel() == 0:
        return Buffers()
    if torch.backends.cudnn.enabled:
        recorded = project.entries if project is not None else {}
        _, table = current_table()
        transient = recorded.get(key)
        if transient is None and table is not None:
            transient = table.get(key)
        if transient is not None:
            return Buffers([transient] if transient else [])
        # ``use_cudnn_depthwise``: cuDNN takes a depthwise convolution in channels-last,
        # and in NCHW only in fp16 (depending on the shape); the rest is ATen's kernel.
        if inp.dtype not in (torch.float32, torch.bfloat16, torch.float64):
            return _unknown(describe(direction, inp, weight, params))
        groups, transposed = int(params["groups"]), bool(params["transposed"])
        if not _is_depthwise(inp, weight, groups, transposed):
            return _unknown(describe(direction, inp, weight, params))
    rule = _native(direction, inp, weight, params)
    if rule is None:
        return _unknown(describe(direction, inp, weight, params))
    return rule


def forward_buffers(args: Any, kwargs: Any, out: Any) -> Buffers:
    """The transient of one ``aten.convolution`` call (see the module's docstring)."""
    inp, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    params = {
        "bias": _arg(args, kwargs, 2, "bias") is not None,
        "stride": _arg(args, kwargs, 3, "stride"),
        "padding": _arg(args, kwargs, 4, "padding"),
        "dilation": _arg(args, kwargs, 5, "dilation"),
        "transposed": _arg(args, kwargs, 6, "transposed"),
        "groups": _arg(args, kwargs, 8, "groups"),
    }
    return _buffers("fwd", forward_key(args, kwargs, flags()), inp, weight, params)


def backward_buffers(args: Any, kwargs: Any, out: Any) -> Buffers:
    """The transient of one ``aten.convolution_backward`` call."""
    inp, weight = _arg(args, kwargs, 1, "input"), _arg(args, kwargs, 2, "weight")
    mask = [bool(m) for m in _arg(args, kwargs, 10, "output_mask")]
    params = {
        "grad_output": _arg(args, kwargs, 0, "grad_output"),
        "bias": mask[2],
        "stride": _arg(args, kwargs, 4, "stride"),
        "padding": _arg(args, kwargs, 5, "padding"),
        "dilation": _arg(args, kwargs, 6, "dilation"),
        "transposed": _arg(args, kwargs, 7, "transposed"),
        "groups": _arg(args, kwargs, 9, "groups"),
        "mask": mask,
        "grad_bias": out[2] if mask[2] else None,
    }
    return _buffers("bwd", backward_key(args, kwargs, flags()), inp, weight, params)


def cuda_memory_format(inp: Any, weight: Any) -> torch.memory_format | None:
    """The layout of a CUDA convolution's results: ``cudnn_conv_suggest_memory_format``.

    cuDNN works channels-last when the input or the weight is (2-D, not fp64), and its
    outputs and input and weight gradients come out that way; ATen's kernels (cuDNN
    disabled, and the NCHW depthwise kernel, whose inputs are never channels-last) make
    contiguous ones. None where this is not modelled (3-D convolutions).
    """
    if inp.device.type != "cuda" or weight.dim() != 4:
        return None
    if not torch.backends.cudnn.enabled or torch.float64 in (inp.dtype, weight.dtype):
        return torch.contiguous_format
    if torch.channels_last in (suggest_memory_format(inp), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def forward_layout(args: Any, kwargs: Any, out: Any) -> list[torch.memory_format | None]:
    """The memory format of ``aten.convolution``'s output on CUDA."""
    inp, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    if bool(_arg(args, kwargs, 6, "transposed")):
        return [None]
    return [cuda_memory_format(inp, weight)]


def backward_layout(args: Any, kwargs: Any, out: Any) -> list[torch.memory_format | None]:
    """The memory formats of ``aten.convolution_backward``'s input and weight gradients."""
    inp, weight = _arg(args, kwargs, 1, "input"), _arg(args, kwargs, 2, "weight")
    if bool(_arg(args, kwargs, 7, "transposed")):
        return [None, None, None]
    fmt = cuda_memory_format(inp, weight)
    return [fmt, fmt, None]


#: operator overload -> (args, kwargs, outputs) -> byte sizes of transient buffers
INTERNAL_BUFFERS: dict[Any, Callable[[Any, Any, Any], list[int]]] = {
    torch.ops.aten.convolution.default: forward_buffers,
    torch.ops.aten.convolution_backward.default: backward_buffers,
}
#: The C++ meta kernel of a convolution picks no cuDNN layout (meta is not CUDA): its
#: results are contiguous where cuDNN makes channels-last ones.
OUTPUT_LAYOUT: dict[Any, Callable[[Any, Any, Any], list[Any]]] = {
    torch.ops.aten.convolution.default: forward_layout,
    torch.ops.aten.convolution_backward.default: backward_layout,
}
