"""Measure the transient memory of cuDNN convolutions on a GPU, for the estimator's table.

For every convolution of a grid (the layers of ResNet-18/34/50/101, VGG, MobileNetV2: 7x7
stems, 3x3, bottleneck and downsample 1x1s, depthwise and pointwise; batch 1 to 64; images
224, 32, 112, 160; fp32, fp16, bf16; contiguous and channels-last; with and without bias)
and for the convolutions the corpus ResNet really runs (captured from
``tests/vram/corpus_workloads.py``, both sizes), this calls ``aten.convolution`` and
``aten.convolution_backward`` directly, with tensors as autograd passes them (the
backward's output mask: input and weight gradients, and the bias gradient if there is a
bias; a first layer, whose image needs no gradient, weight (and bias) only), and records
the *transient*: the peak during the call minus what was allocated before it and minus its
512-byte-rounded outputs. Each configuration runs once first (cuDNN builds its plan, which
may allocate persistent handles), then is measured twice. The GPU runs with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (the gated figure's setting, as the
``cuda`` backend sets it) and torch's default cuDNN flags (``benchmark=False``, TF32
allowed for convolutions).

    # on the GPU machine: measure (about 3.5 minutes on an H200: --budget 200 s of grid
    # after about 5 s of the corpus's calls); writes $OUT/cudnn_workspace.jsonl
    python tools/cudnn_workspace.py --out "$OUT"
    # more of the grid: skip the calls the committed runs measured
    python tools/cudnn_workspace.py --no-corpus --budget 300 \
        --known docs/data/cudnn-workspace/*.jsonl.gz --out "$OUT"
    # anywhere (CPU, seconds): the shipped table from every run of one setup (GPU, torch,
    # cuDNN, flags), in pytest_vram/backends/estimate/kernels/data/:
    # cudnn_workspace_<arch>_cudnn<version>.json.gz
    python tools/cudnn_workspace.py --table \
        docs/data/cudnn-workspace/*.jsonl.gz "$OUT"/cudnn_workspace.jsonl

The H200's runs are kept gzipped in ``docs/data/cudnn-workspace/`` (gzipped files are read
as they are). tools/README.md says when to regenerate the table and how to check it.

The JSON-lines file is written as it goes (a first line with the setup, then one line per
measured call), so a run cut short still returns what it measured. The order is by
priority: the corpus calls, then fp32 contiguous at batch 32, other batches, other dtypes
and layouts, bias, other image sizes, then the rest of the grid, and finally a few calls
with cuDNN disabled (the native path's buffers, not part of the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))

import torch  # noqa: E402

from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402
from pytest_vram.backends.estimate.kernels import convolution as cw  # noqa: E402

aten = torch.ops.aten


@dataclass(frozen=True)
class Layer:
    """One convolution of a network, its input at ``level`` stride-2 reductions of the image."""

    family: str
    cin: int
    cout: int
    k: int
    stride: int
    level: int
    groups: int = 1
    #: None: "same" padding (k // 2); a patch embedding or patchify stem has 0
    pad: int | None = None

    @property
    def padding(self) -> int:
        return self.k // 2 if self.pad is None else self.pad


def _resnet_layers() -> list[Layer]:
    basic = [
        Layer("resnet-stem", 3, 64, 7, 2, 0),
        Layer("resnet34", 64, 64, 3, 1, 2),
        Layer("resnet34", 64, 128, 3, 2, 2),
        Layer("resnet34", 128, 128, 3, 1, 3),
        Layer("resnet34-down", 64, 128, 1, 2, 2),
        Layer("resnet34", 128, 256, 3, 2, 3),
        Layer("resnet34", 256, 256, 3, 1, 4),
        Layer("resnet34-down", 128, 256, 1, 2, 3),
        Layer("resnet34", 256, 512, 3, 2, 4),
        Layer("resnet34", 512, 512, 3, 1, 5),
        Layer("resnet34-down", 256, 512, 1, 2, 4),
    ]
    bottleneck = []
    for i, (width, level) in enumerate(((64, 2), (128, 2), (256, 3), (512, 4))):
        cin = 64 if i == 0 else width * 2
        stride = 1 if i == 0 else 2
        out_level = level if i == 0 else level + 1
        bottleneck += [
            Layer("resnet50", cin, width, 1, 1, level),
            Layer("resnet50", width, width, 3, stride, level),
            Layer("resnet50", width, width * 4, 1, 1, out_level),
            Layer("resnet50-down", cin, width * 4, 1, stride, level),
            Layer("resnet50", width * 4, width, 1, 1, out_level),
            Layer("resnet50", width, width, 3, 1, out_level),
        ]
    return basic + bottleneck


def _vgg_layers() -> list[Layer]:
    chans = [(3, 64, 0), (64, 64, 0), (64, 128, 1), (128, 128, 1), (128, 256, 2)]
    chans += [(256, 256, 2), (256, 512, 3), (512, 512, 3), (512, 512, 4)]
    return [Layer("vgg", cin, cout, 3, 1, level) for cin, cout, level in chans]


def _mobilenet_layers() -> list[Layer]:
    out = [Layer("mobilenet-stem", 3, 32, 3, 2, 0)]
    # (input channels, expanded channels, output channels, depthwise stride, input level)
    blocks = [(32, 32, 16, 1, 1), (16, 96, 24, 2, 1), (24, 144, 24, 1, 2), (24, 144, 32, 2, 2)]
    blocks += [(32, 192, 32, 1, 3), (32, 192, 64, 2, 3), (64, 384, 64, 1, 4)]
    blocks += [(64, 384, 96, 1, 4), (96, 576, 96, 1, 4), (96, 576, 160, 2, 4)]
    blocks += [(160, 960, 160, 1, 5), (160, 960, 320, 1, 5)]
    for cin, mid, cout, stride, level in blocks:
        if mid != cin:
            out.append(Layer("mobilenet-pw", cin, mid, 1, 1, level))
        out.append(Layer("mobilenet-dw", mid, mid, 3, stride, level, groups=mid))
        out.append(Layer("mobilenet-pw", mid, cout, 1, 1, level + (stride == 2)))
    out.append(Layer("mobilenet-pw", 320, 1280, 1, 1, 5))
    return out


def _stem_layers() -> list[Layer]:
    """First layers of ordinary image models: 3 -> 16 to 64 channels, 3x3 and 7x7, stride 1
    (CIFAR-style) and 2."""
    return [
        Layer("stem", 3, cout, k, stride, 0)
        for cout in (16, 24, 32, 48, 64)
        for k in (3, 7)
        for stride in (1, 2)
    ]


def _patch_layers() -> list[Layer]:
    """Patch embeddings (kernel = stride = patch, no padding): ViT/DeiT 16 and 32, DINOv2
    and CLIP-L 14, at their usual widths."""
    widths = {14: (384, 768, 1024, 1280), 16: (192, 384, 768, 1024), 32: (768, 1024)}
    return [
        Layer("patch", 3, width, patch, patch, 0, pad=0)
        for patch, ws in widths.items()
        for width in ws
    ]


def _efficientnet_layers() -> list[Layer]:
    """EfficientNet-B0's convolutions: MBConv expansions, depthwise 3x3 and 5x5, the
    squeeze-and-excitation 1x1s (on a 1x1 map: level 8 reduces any image to 1) and the
    projections."""
    out = [Layer("efficientnet-stem", 3, 32, 3, 2, 0)]
    # (input, expansion, output, depthwise kernel, stride, input level)
    blocks = [(32, 1, 16, 3, 1, 1), (16, 6, 24, 3, 2, 1), (24, 6, 24, 3, 1, 2)]
    blocks += [(24, 6, 40, 5, 2, 2), (40, 6, 40, 5, 1, 3), (40, 6, 80, 3, 2, 3)]
    blocks += [(80, 6, 80, 3, 1, 4), (80, 6, 112, 5, 1, 4), (112, 6, 112, 5, 1, 4)]
    blocks += [(112, 6, 192, 5, 2, 4), (192, 6, 192, 5, 1, 5), (192, 6, 320, 3, 1, 5)]
    for cin, expand, cout, k, stride, level in blocks:
        mid = cin * expand
        if expand != 1:
            out.append(Layer("efficientnet-pw", cin, mid, 1, 1, level))
        out.append(Layer("efficientnet-dw", mid, mid, k, stride, level, groups=mid))
        squeeze = max(1, cin // 4)
        out.append(Layer("efficientnet-se", mid, squeeze, 1, 1, 8))
        out.append(Layer("efficientnet-se", squeeze, mid, 1, 1, 8))
        out.append(Layer("efficientnet-pw", mid, cout, 1, 1, level + (stride == 2)))
    out.append(Layer("efficientnet-pw", 320, 1280, 1, 1, 5))
    return out


def _convnext_layers() -> list[Layer]:
    """ConvNeXt-T's convolutions: the 4x4 patchify stem, the depthwise 7x7s, the 2x2
    downsamplings (its 1x1s are linear layers)."""
    out = [Layer("convnext-stem", 3, 96, 4, 4, 0, pad=0)]
    widths = [(96, 2), (192, 3), (384, 4), (768, 5)]
    for i, (width, level) in enumerate(widths):
        out.append(Layer("convnext-dw", width, width, 7, 1, level, groups=width))
        if i + 1 < len(widths):
            out.append(Layer("convnext-down", width, widths[i + 1][0], 2, 2, level, pad=0))
    return out


def _unique(candidates: list[Layer]) -> list[Layer]:
    seen: set[Layer] = set()
    unique = []
    for layer in candidates:
        bare = dataclasses.replace(layer, family="")
        if bare not in seen:
            seen.add(bare)
            unique.append(layer)
    return unique


def layers() -> list[Layer]:
    """The layers of the model grid (ResNet, VGG, MobileNetV2)."""
    return _unique(_resnet_layers() + _vgg_layers() + _mobilenet_layers())


def common_layers() -> list[Layer]:
    """The layers of the common grid: stems, patch embeddings, EfficientNet, ConvNeXt."""
    models = set(dataclasses.replace(layer, family="") for layer in layers())
    extra = _stem_layers() + _patch_layers() + _efficientnet_layers() + _convnext_layers()
    return [
        layer for layer in _unique(extra) if dataclasses.replace(layer, family="") not in models
    ]


def spatial(image: int, level: int) -> int:
    for _ in range(level):
        image = (image + 2 - 3) // 2 + 1  # a 3x3 stride-2 convolution with padding 1
    return image


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class Config:
    layer: Layer
    batch: int
    image: int
    dtype: str
    fmt: str
    bias: bool


def _grid(which: str = "models") -> Iterator[tuple[str, Config]]:
    """Configurations in priority order (a run cut short keeps the most useful ones)."""
    if which == "common":
        yield from _common_grid()
        return
    all_layers = layers()
    batches = [1, 8, 16, 32, 64]
    done: set[Config] = set()

    def tier(name: str, configs: Iterator[Config]) -> Iterator[tuple[str, Config]]:
        for c in configs:
            if c not in done:
                done.add(c)
                yield name, c

    def product(images: list[int], batch: list[int], dtypes: list[str], fmts: list[str],
                biases: list[bool]) -> Iterator[Config]:  # fmt: skip
        for image, b, dt, fmt, bias in itertools.product(images, batch, dtypes, fmts, biases):
            for layer in all_layers:
                yield Config(layer, b, image, dt, fmt, bias)

    yield from tier("fp32-b32", product([224], [32], ["float32"], ["contiguous"], [False]))
    yield from tier("fp32-batches", product([224], batches, ["float32"], ["contiguous"], [False]))
    yield from tier(
        "dtypes-layouts-b32",
        product([224], [32], list(DTYPES), list(FORMATS), [False]),
    )
    yield from tier("bias-b32", product([224], [32], list(DTYPES), list(FORMATS), [True]))
    images = product([32, 112, 160], [8, 32], ["float32"], ["contiguous"], [False])
    yield from tier("images", images)
    rest = list(product([224], batches, list(DTYPES), list(FORMATS), [False, True]))
    rest += list(product([32, 112, 160], batches, list(DTYPES), list(FORMATS), [False, True]))
    random.Random(0).shuffle(rest)  # a cut-short run covers the rest evenly
    yield from tier("rest", iter(rest))


def _common_grid() -> Iterator[tuple[str, Config]]:
    """The common layers at the batch sizes and resolutions of ordinary training and
    inference: first 224 px at batch 1 (inference) and 8 to 128 in every dtype, layout and
    bias; then the other resolutions (CIFAR's 32 to ViT-384's and DINOv2's 518)."""
    common = common_layers()
    first = [layer for layer in common if layer.level == 0]  # stems and patch embeddings
    done: set[Config] = set()

    def tier(name: str, chosen: list[Layer], images: list[int], batches: list[int],
             dtypes: list[str], fmts: list[str]) -> Iterator[tuple[str, Config]]:  # fmt: skip
        for image, b, dt, fmt, bias in itertools.product(
            images, batches, dtypes, fmts, [False, True]
        ):
            for layer in chosen:
                h = spatial(image, layer.level)
                if h < layer.k - 2 * layer.padding or (layer.pad == 0 and h % layer.k):
                    continue  # the map is smaller than the kernel, or not a whole patch grid
                c = Config(layer, b, image, dt, fmt, bias)
                if c not in done:
                    done.add(c)
                    yield name, c

    dtypes, fmts = list(DTYPES), list(FORMATS)
    yield from tier("common-224", common, [224], [1, 8, 16, 32, 64, 128], dtypes, fmts)
    yield from tier("first-layers-images", first, [32, 64, 128, 256, 384, 518], [1, 8, 32, 128],
                    dtypes, fmts)  # fmt: skip
    yield from tier("common-images", common, [256, 384], [8, 32], dtypes, fmts)
    yield from tier("first-layers-batches", first, [224, 256], [2, 4, 24, 48, 96, 256],
                    dtypes, fmts)  # fmt: skip


# -- one call -----------------------------------------------------------------------------
def _outputs(out: Any) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else [out]
    return [t for t in items if isinstance(t, torch.Tensor)]


def _output_bytes(out: Any) -> int:
    seen, total = set(), 0
    for t in _outputs(out):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += round_size(storage.nbytes())
    return total


def _measure(fn: Any) -> tuple[int, int, Any]:
    """(transient, bytes still allocated beyond the outputs, outputs) of one call."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    outs = _output_bytes(out)
    return peak - before - outs, torch.cuda.memory_allocated() - before - outs, out


@dataclass
class Call:
    """One ``aten.convolution`` or ``aten.convolution_backward`` call, tensors as metadata."""

    direction: str  # "fwd" | "bwd"
    dtype: str
    x: tuple[list[int], list[int]]
    w: tuple[list[int], list[int]]
    go: tuple[list[int], list[int]] | None
    bias: bool
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    transposed: bool
    output_padding: list[int]
    groups: int
    mask: list[bool] | None


def _empty(spec: tuple[list[int], list[int]], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(spec[0], spec[1], dtype=dtype, device="cuda")


def _spec(t: torch.Tensor) -> tuple[list[int], list[int]]:
    return list(t.shape), list(t.stride())


def run_call(call: Call) -> dict[str, Any]:
    """Warm up, then measure ``call`` twice; its key and what it held."""
    dtype = DTYPES[call.dtype]
    x, w = _empty(call.x, dtype), _empty(call.w, dtype)
    cout = call.w[0][1] * call.groups if call.transposed else call.w[0][0]
    params = (call.stride, call.padding, call.dilation, call.transposed, call.output_padding)
    if call.direction == "fwd":
        b = torch.empty(cout, dtype=dtype, device="cuda") if call.bias else None

        def fn() -> Any:
            return aten.convolution.default(x, w, b, *params, call.groups)

        key = cw.forward_key((x, w, b, *params, call.groups), {}, cw.flags())
    else:
        assert call.go is not None and call.mask is not None
        go = _empty(call.go, dtype)
        sizes = [cout] if call.bias else None

        def fn() -> Any:
            return aten.convolution_backward.default(
                go, x, w, sizes, *params, call.groups, call.mask
            )

        key = cw.backward_key((go, x, w, sizes, *params, call.groups, call.mask), {}, cw.flags())
    backend = torch._C._select_conv_backend(
        x, w, None, call.stride, call.padding, call.dilation, call.transposed,
        call.output_padding, call.groups,
    )  # fmt: skip
    started = time.perf_counter()
    _, first_left, out = _measure(fn)  # the plan is built here
    del out
    t1, left1, out = _measure(fn)
    del out
    t2, left2, out = _measure(fn)
    outputs = _output_bytes(out)
    del out
    return {
        "key": key,
        "transient": t2,
        "repeat": [t1, t2],
        "left": [first_left, left1, left2],
        "outputs": outputs,
        "x_bytes": round_size(x.untyped_storage().nbytes()),
        "w_bytes": round_size(w.untyped_storage().nbytes()),
        "go_bytes": round_size(go.untyped_storage().nbytes()) if call.direction == "bwd" else 0,
        "backend": str(backend).split(".")[-1],
        "seconds": round(time.perf_counter() - started, 4),
        "call": asdict(call),
    }


def config_calls(c: Config) -> list[Call]:
    """The forward and the backward of one grid configuration, as autograd calls them."""
    layer, dtype = c.layer, DTYPES[c.dtype]
    h = spatial(c.image, layer.level)
    x = torch.empty(c.batch, layer.cin, h, h, dtype=dtype, device="meta")
    w = torch.empty(layer.cout, layer.cin // layer.groups, layer.k, layer.k, dtype=dtype,
                    device="meta")  # fmt: skip
    if c.fmt == "channels_last":
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    s, p = [layer.stride] * 2, [layer.padding] * 2
    fwd = Call("fwd", c.dtype, _spec(x), _spec(w), None, c.bias, s, p, [1, 1], False, [0, 0],
               layer.groups, None)  # fmt: skip
    # the output's layout is the forward's (cuDNN's suggested format); the gradient has it
    h_out = (h + 2 * layer.padding - layer.k) // layer.stride + 1
    out = torch.empty(c.batch, layer.cout, h_out, h_out, dtype=dtype, device="meta")
    if c.fmt == "channels_last":
        out = out.to(memory_format=torch.channels_last)
    mask = [layer.cin != 3, True, c.bias]  # an image needs no gradient
    bwd = Call("bwd", c.dtype, _spec(x), _spec(w), _spec(out), c.bias, s, p, [1, 1], False,
               [0, 0], layer.groups, mask)  # fmt: skip
    return [fwd, bwd]


def native_calls() -> list[Call]:
    """Calls for ``slow_conv2d`` (cuDNN disabled): the first ResNet layers at batch 8 in
    fp32 and fp16, with and without bias, and every backward also for the weight alone."""
    calls = []
    for layer in layers()[:12]:
        for dtype, bias in (("float32", False), ("float32", True), ("float16", False)):
            fwd, bwd = config_calls(Config(layer, 8, 224, dtype, "contiguous", bias))
            calls += [fwd, bwd]
            if bwd.mask and bwd.mask[0]:
                calls.append(dataclasses.replace(bwd, mask=[False, True, bias]))
    return calls


# -- the corpus's own calls ---------------------------------------------------------------
def capture_corpus(sizes: tuple[str, ...] = ("small", "realistic")) -> list[tuple[str, Call]]:
    """The convolution calls the corpus's convolutional workloads make on the GPU, in
    order, deduplicated."""
    from corpus_workloads import WORKLOADS
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[tuple[str, Call]] = []
    seen: set[str] = set()

    class Capture(TorchDispatchMode):
        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func is aten.convolution.default:
                x, w, b, s, p, d, t, op, g = args
                call = Call("fwd", str(x.dtype)[6:], _spec(x), _spec(w), None, b is not None,
                            list(s), list(p), list(d), bool(t), list(op), int(g), None)  # fmt: skip
                self._add(call)
            elif func is aten.convolution_backward.default:
                go, x, w, sizes, s, p, d, t, op, g, mask = args
                call = Call("bwd", str(x.dtype)[6:], _spec(x), _spec(w), _spec(go),
                            sizes is not None, list(s), list(p), list(d), bool(t), list(op),
                            int(g), [bool(m) for m in mask])  # fmt: skip
                self._add(call)
            return func(*args, **kwargs)

        def _add(self, call: Call) -> None:
            text = json.dumps(asdict(call))
            if text not in seen:
                seen.add(text)
                calls.append((self.label, call))

    for name in CORPUS_CONVOLUTIONS:
        workload = WORKLOADS[name]
        for size in sizes:
            torch.manual_seed(0)
            model = workload.build(size, "cuda")
            with Capture(f"corpus-{name.split('-')[0]}-{size}"):
                workload.work(model, size, "cuda")
            del model
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return calls


#: the corpus workloads that run convolutions (ViT's patch embedding is one)
CORPUS_CONVOLUTIONS = ("resnet-cnn-train-sgd-momentum", "vit-train-fp16-autocast-sgd")


def setup() -> dict[str, Any]:
    cudnn = torch.backends.cudnn
    major, minor = torch.cuda.get_device_capability()
    info: dict[str, Any] = {
        "setup": True,
        "gpu": torch.cuda.get_device_name(),
        "arch": f"sm{major}{minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn.version(),
        "cudnn_allow_tf32": cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_benchmark": cudnn.benchmark,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        info["cudnn_conv_fp32_precision"] = conv.fp32_precision
    return info


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            text = f.read()
    else:
        text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def measure(
    out_dir: Path, budget: float, corpus: bool, known: set[str] | None = None, grid: str = "models"
) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cudnn_workspace.jsonl"
    torch.empty(1, device="cuda").sum()  # context and allocator
    started = time.perf_counter()
    n = 0
    with path.open("w") as f:

        def write(row: dict[str, Any]) -> None:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            f.flush()

        write(setup())
        if corpus:
            for label, call in capture_corpus():
                write({"tier": label, **run_call(call)})
                n += 1
            print(f"corpus: {n} calls, {time.perf_counter() - started:.1f} s", flush=True)
        grid_start = time.perf_counter()
        last_print = grid_start
        for tier, config in _grid(grid):
            if time.perf_counter() - grid_start > budget:
                print(f"budget of {budget:.0f} s reached", flush=True)
                break
            for call in config_calls(config):
                if known and call_key(asdict(call), cw.flags()) in known:
                    continue
                try:
                    row = run_call(call)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    continue
                write({"tier": tier, "family": config.layer.family, "image": config.image,
                       "batch": config.batch, "fmt": config.fmt, **row})  # fmt: skip
                n += 1
            if time.perf_counter() - last_print > 10:
                last_print = time.perf_counter()
                print(f"{n} calls, {last_print - started:.0f} s, tier {tier}", flush=True)
        # the native path (cuDNN disabled), for the docs: not part of the table
        with torch.backends.cudnn.flags(enabled=False):
            for call in native_calls():
                write({"tier": "cudnn-disabled", **run_call(call)})
                n += 1
    print(f"{n} calls in {time.perf_counter() - started:.1f} s -> {path}", flush=True)
    return 0


# -- the shipped table --------------------------------------------------------------------
def call_key(call: dict[str, Any], cudnn_flags: tuple[bool, bool, bool]) -> str:
    """The estimator's key of a recorded call (recomputed: the file may predate a change)."""
    dtype = DTYPES[call["dtype"]]

    def meta(spec: Any) -> torch.Tensor | None:
        if spec is None:
            return None
        return torch.empty_strided(spec[0], spec[1], dtype=dtype, device="meta")

    return cw.call_key(
        call["direction"], meta(call["x"]), meta(call["w"]), meta(call["go"]),
        bool(call["mask"][2]) if call["mask"] else call["bias"], call["stride"],
        call["padding"], call["dilation"], call["transposed"], call["output_padding"],
        call["groups"], call["mask"], cudnn_flags,
    )  # fmt: skip


def make_table(jsonls: list[Path], dest_dir: Path) -> Path:
    """Turn measurement files (one setup) into the table the estimator ships."""
    lines = []
    for path in jsonls:
        rows = _read_rows(path)
        assert rows[0].get("setup"), f"{path}: the first line is not the setup"
        if lines and {k: v for k, v in rows[0].items()} != lines[0]:
            raise SystemExit(f"{path}: measured on another setup than {jsonls[0]}")
        lines += rows if not lines else rows[1:]
    info = lines[0]
    cudnn_flags = (info["cudnn_allow_tf32"], info["cudnn_deterministic"], info["cudnn_benchmark"])
    entries: dict[str, int] = {}
    unstable = 0
    backends: dict[str, int] = {}
    for row in lines[1:]:
        if row["tier"] == "cudnn-disabled":
            continue
        if len(set(row["repeat"])) != 1:
            unstable += 1
        transient = max(row["repeat"])
        key = call_key(row["call"], cudnn_flags)
        old = entries.get(key)
        if old is not None and old != transient:
            print(f"warning: {key}: {old} and {transient}", file=sys.stderr)
            transient = max(transient, old)
        entries[key] = transient
        backends[row["backend"]] = backends.get(row["backend"], 0) + 1
    table = {
        "format": cw.TABLE_FORMAT,
        "source": f"tools/cudnn_workspace.py on {info['gpu']}",
        "gpu": info["gpu"],
        "arch": info["arch"],
        "torch": info["torch"],
        "cudnn": info["cudnn"],
        "cudnn_allow_tf32": info["cudnn_allow_tf32"],
        "alloc_conf": info["alloc_conf"],
        "backends": backends,
        "entries": dict(sorted(entries.items())),
    }
    dest = dest_dir / cw.table_name(info["arch"], int(info["cudnn"]))
    with gzip.GzipFile(dest, "wb", mtime=0) as f:  # byte-identical for the same data
        f.write((json.dumps(table, indent=0) + "\n").encode())
    print(f"{len(entries)} entries ({unstable} calls whose two measurements differ) -> {dest}")
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--budget", type=float, default=200.0, help="seconds for the grid")
    parser.add_argument("--no-corpus", action="store_true", help="skip the corpus's calls")
    parser.add_argument("--list", action="store_true", help="count the grid, no GPU")
    parser.add_argument(
        "--grid",
        choices=("models", "common"),
        default="models",
        help="models: ResNet, VGG, MobileNetV2 layers; common: stems, patch embeddings, "
        "EfficientNet and ConvNeXt layers at ordinary batch sizes and resolutions",
    )
    parser.add_argument(
        "--table", type=Path, nargs="+", help="this script's .jsonl(.gz) files: write the table"
    )
    parser.add_argument(
        "--known", type=Path, nargs="*", default=[], help="skip calls already in these files"
    )
    parser.add_argument("--table-dir", type=Path, default=cw.DATA_DIR)
    ns = parser.parse_args()
    if ns.table:
        make_table(ns.table, ns.table_dir)
        return 0
    if ns.list:
        counts: dict[str, int] = {}
        for tier, _ in _grid(ns.grid):
            counts[tier] = counts.get(tier, 0) + 1
        chosen = layers() if ns.grid == "models" else common_layers()
        print(f"{len(chosen)} layers; configurations per tier: {counts}")
        return 0
    known: set[str] = set()
    for path in ns.known:
        rows = _read_rows(path)
        flags = (rows[0]["cudnn_allow_tf32"], rows[0]["cudnn_deterministic"],
                 rows[0]["cudnn_benchmark"])  # fmt: skip
        known |= {call_key(r["call"], flags) for r in rows[1:] if r["tier"] != "cudnn-disabled"}
    return measure(ns.out, ns.budget, not ns.no_corpus, known, ns.grid)


if __name__ == "__main__":
    raise SystemExit(main())
