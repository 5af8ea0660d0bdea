"""CNN training steps beyond the corpus, on the GPU and on the estimator: the conv table's test.

Three standard networks written out here (no torchvision): ResNet-50 (bottleneck blocks),
MobileNetV2 (depthwise and pointwise convolutions) and VGG-11 with batch norm (3 x 3
convolutions with bias), each trained one SGD step at batch 32 on 224 x 224 images in
three settings: fp32 NCHW, fp16 autocast channels-last, bf16 autocast NCHW. Each step
runs under the plugin's own ``Meter`` on the backend given, so its figures are what a
test would record; the estimator's side also lists the convolutions it found no
workspace for (``ConvWorkspaceUnknown``).

    # the GPU
    PYTHONPATH=$PWD python benchmarks/cnn_accuracy.py --backend cuda --out "$OUT"
    # the estimator (CPU), then the table of both
    PYTHONPATH=$PWD python benchmarks/cnn_accuracy.py --backend estimate --out d
    python benchmarks/cnn_accuracy.py --compare "$OUT"/cnn_cuda.json d/cnn_estimate.json

Figures: docs/results/estimator-accuracy.md (raw: docs/data/estimator-accuracy/cnn-*.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, width * 4, 1),
        )  # fmt: skip
        self.down = None
        if stride != 1 or cin != width * 4:
            self.down = nn.Sequential(*_conv_bn(cin, width * 4, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += x if self.down is None else self.down(x)
        return F.relu(out, inplace=True)


def resnet50() -> nn.Module:
    layers: list[nn.Module] = [*_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for j in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, mid, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU6(inplace=True)]
        layers += _conv_bn(mid, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    # (expansion, output channels, repeats, first stride)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2)]
    settings += [(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def vgg11_bn() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


NETS = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "vgg11_bn": vgg11_bn}
#: (name, autocast dtype or None, memory format)
SETTINGS = [
    ("fp32", None, torch.contiguous_format),
    ("fp16-autocast-channels_last", torch.float16, torch.channels_last),
    ("bf16-autocast", torch.bfloat16, torch.contiguous_format),
]


def _build(net: str, fmt: torch.memory_format, device: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[net]().to(device=device, memory_format=fmt)


def _step(model: nn.Module, amp: torch.dtype | None, fmt: torch.memory_format, device: str) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(32, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (32,), device=device)
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def _gpu_conv_keys(net: str, amp: torch.dtype | None, fmt: torch.memory_format) -> list[str]:
    """The table keys of the convolutions one step makes on the GPU (an extra, unmeasured
    run under a dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pytest_vram.backends.estimate.kernels import convolution as cw

    keys: set[str] = set()

    class Keys(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func is torch.ops.aten.convolution.default:
                keys.add(cw.forward_key(args, kwargs, cw.flags()))
            elif func is torch.ops.aten.convolution_backward.default:
                keys.add(cw.backward_key(args, kwargs, cw.flags()))
            return func(*args, **kwargs)

    model = _build(net, fmt, "cuda")
    with Keys():
        _step(model, amp, fmt, "cuda")
    del model
    torch.cuda.empty_cache()
    return sorted(keys)


def measure(backend_name: str) -> list[dict[str, Any]]:
    from pytest_vram.backends import create
    from pytest_vram.backends.estimate.kernels import convolution as _conv_workspace
    from pytest_vram.measure.meter import Meter

    backend = create(backend_name)
    backend.warmup()
    rows = []
    seen: set[str] = set()
    if backend_name == "estimate":  # the keys the estimator looks up
        for name in ("forward_key", "backward_key"):
            original = getattr(_conv_workspace, name)

            def recording(*a: Any, _original: Any = original) -> str:
                key = _original(*a)
                seen.add(key)
                return key

            setattr(_conv_workspace, name, recording)
    for net in NETS:
        for setting, amp, fmt in SETTINGS:
            started = time.perf_counter()
            seen.clear()
            meter = Meter(backend)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", _conv_workspace.ConvWorkspaceUnknown)
                meter.start()
                model = meter.build(_build, net, fmt, backend.device)
                meter.run(_step, model, amp, fmt, backend.device)
                del model
                meter.finish()
            record = meter.measurements[0]
            unknown_type = _conv_workspace.ConvWorkspaceUnknown
            unknown = [str(w.message) for w in caught if w.category is unknown_type]
            row = {
                "workload": f"{net}-{setting}",
                "model_bytes": record.model_bytes,
                "peak_bytes": record.peak_bytes,
                "unknown_conv": unknown,
                "seconds": round(time.perf_counter() - started, 2),
                "conv_keys": sorted(seen) if backend_name == "estimate" else None,
            }
            if backend_name == "cuda":
                row["conv_keys"] = _gpu_conv_keys(net, amp, fmt)
            print(json.dumps(row)[:300], flush=True)
            rows.append(row)
    return rows


def oplog(workload: str) -> list[list[Any]]:
    """Per-operator rows of one workload on the GPU: [operator, outputs, allocated before,
    peak during], logged by a dispatch mode (under which the autograd engine accumulates
    gradients out of place, as on the estimator)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pytest_vram.backends import create
    from pytest_vram.measure.meter import Meter

    net, setting = workload.split("-", 1)
    _, amp, fmt = next(s for s in SETTINGS if s[0] == setting)
    backend = create("cuda")
    backend.warmup()
    rows: list[list[Any]] = []

    def shapes(out: Any) -> str:
        items = out if isinstance(out, (tuple, list)) else [out]
        return " ".join(
            f"{str(t.dtype)[6:]}{list(t.shape)}/{list(t.stride())}"
            for t in items
            if isinstance(t, torch.Tensor)
        )

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = func(*args, **(kwargs or {}))
            peak = torch.cuda.max_memory_allocated()
            rows.append([str(func), shapes(out), before, peak, shapes(list(args))])
            return out

    meter = Meter(backend)
    meter.start()
    model = meter.build(_build, net, fmt, backend.device)
    with Log():
        meter.run(_step, model, amp, fmt, backend.device)
    del model
    meter.finish()
    return rows


def compare(cuda_path: Path, estimate_path: Path) -> str:
    cuda = {r["workload"]: r for r in json.loads(cuda_path.read_text())["rows"]}
    est = {r["workload"]: r for r in json.loads(estimate_path.read_text())["rows"]}
    lines = [
        "| workload | model bytes, cuda | model, estimate - cuda | peak bytes, cuda "
        "| peak bytes, estimate | peak diff | unknown convolutions "
        "| GPU calls the estimate keyed otherwise |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, c in cuda.items():
        e = est.get(name)
        if e is None:
            continue
        diff = e["peak_bytes"] - c["peak_bytes"]
        missed = len(set(c["conv_keys"]) - set(e["conv_keys"]))
        lines.append(
            f"| {name} | {c['model_bytes']:,} | {e['model_bytes'] - c['model_bytes']:+,} "
            f"| {c['peak_bytes']:,} | {e['peak_bytes']:,} "
            f"| {diff:+,} ({100 * diff / c['peak_bytes']:+.3f}%) | {len(e['unknown_conv'])} "
            f"| {missed} of {len(c['conv_keys'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("cuda", "estimate"), default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("CUDA", "ESTIMATE"))
    parser.add_argument("--oplog", metavar="WORKLOAD", help="a per-operator log on the GPU")
    ns = parser.parse_args()
    if ns.oplog:
        ns.out.mkdir(parents=True, exist_ok=True)
        path = ns.out / f"ops-{ns.oplog}-cuda.json"
        path.write_text(json.dumps(oplog(ns.oplog)))
        print(f"-> {path}")
        return 0
    if ns.compare:
        print(compare(*ns.compare))
        return 0
    rows = measure(ns.backend)
    ns.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "backend": ns.backend}
    if ns.backend == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
        meta["cudnn"] = torch.backends.cudnn.version()
    path = ns.out / f"cnn_{ns.backend}.json"
    path.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
