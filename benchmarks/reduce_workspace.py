"""Measure the transient memory of CUDA reductions and compare it with the estimator's model.

For a grid of operators, dtypes, shapes, layouts (contiguous, transposed, channels-last,
offset views) and reduced dimensions, runs each reduction once on the GPU with the caching
allocator's expandable segments (the gated figure's mode) and records its transient: the
peak during the call minus what is allocated after it (the outputs stay alive, the
kernel's staging buffer and semaphores are gone). The model
(``_fake_kernels.INTERNAL_BUFFERS``, rounded to the allocator's 512 bytes) is evaluated on
meta tensors of the same shapes, strides and storage offsets. Cases include 32-bit-split
reductions (more than 2 GiB addressed).

    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD \\
        python benchmarks/reduce_workspace.py            # writes $OUT/reduce_workspace.json
    python benchmarks/reduce_workspace.py --model-only  # no GPU: the model's side only

About 20 s on an H200. Figures: docs/results/estimator-accuracy.md (raw:
docs/data/estimator-accuracy/reductions-h200.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

from pytest_vram.backends.estimate import kernels as _fake_kernels  # noqa: E402
from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402

aten = torch.ops.aten

#: (name, overload, arguments after the input: a function of the input's rank)
OPS: list[tuple[str, Any, Callable[[int], list[tuple[tuple[Any, ...], dict[str, Any]]]]]] = [
    ("sum", aten.sum.dim_IntList, lambda nd: [((d, k), {}) for d, k in _dims(nd)]),
    ("mean", aten.mean.dim, lambda nd: [((d, k), {}) for d, k in _dims(nd)]),
    ("sum_all", aten.sum.default, lambda nd: [((), {})]),
    ("mean_all", aten.mean.default, lambda nd: [((), {})]),
    ("norm", aten.linalg_vector_norm.default, lambda nd: [((2, d, k), {}) for d, k in _dims(nd)]),
    ("amax", aten.amax.default, lambda nd: [((d, k), {}) for d, k in _dims(nd)]),
    ("max_dim", aten.max.dim, lambda nd: [((d[0], k), {}) for d, k in _dims(nd) if len(d) == 1]),
    ("argmax", aten.argmax.default, lambda nd: [((None, False), {}), ((-1, False), {})]),
    (
        "var_mean",
        aten.var_mean.correction,
        lambda nd: [((d,), {"keepdim": k}) for d, k in _dims(nd)],
    ),
    ("prod", aten.prod.dim_int, lambda nd: [((0, False), {}), ((-1, True), {})]),
]

SHAPES = [
    [1024, 1024],
    [3152, 3072],
    [2048, 4097],
    [4096, 3],
    [3, 100000],
    [8, 512, 768],
    [16, 64, 56, 56],
    [1 << 22],
]
#: 32-bit-split reductions: more than 2**31 bytes addressed
LARGE = [("sum", torch.float16, [40000, 30000], [0]), ("sum", torch.float32, [20000, 30000], [1])]


def _dims(ndim: int) -> list[tuple[list[int], bool]]:
    out = [([0], True), ([ndim - 1], False)]
    if ndim >= 2:
        out.append(([0, 1], True))
    if ndim >= 3:
        out.append(([ndim - 2, ndim - 1], False))
    return out


def _layouts(shape: list[int]) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    yield "contiguous", lambda t: t
    if len(shape) >= 2:
        yield "transposed", lambda t: t.transpose(0, -1)
        yield "offset-view", lambda t: t[1:]
    if len(shape) == 4:
        yield "channels-last", lambda t: t.contiguous(memory_format=torch.channels_last)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    span = t.untyped_storage().nbytes() // t.element_size()
    base = torch.empty(span, dtype=t.dtype, device="meta")
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def _model(func: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    meta = _meta_like(x)
    out = func(meta, *args, **kwargs)
    model = _fake_kernels.INTERNAL_BUFFERS.get(func)
    if model is None:
        return 0
    return sum(round_size(n) for n in model((meta, *args), kwargs, out))


def _measure(func: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = func(x, *args, **kwargs)
    torch.cuda.synchronize()
    transient = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
    del out
    return transient


def _cases(device: str) -> Iterator[tuple[str, Any, torch.Tensor, tuple[Any, ...], dict[str, Any]]]:
    for name, func, arg_sets in OPS:
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
        if name in ("sum", "var_mean"):
            dtypes.append(torch.float64)
        for dtype in dtypes:
            for shape in SHAPES:
                base = torch.empty(shape, dtype=dtype, device=device)
                for layout, make in _layouts(shape):
                    x = make(base)
                    for args, kwargs in arg_sets(x.dim()):
                        yield f"{name} {layout}", func, x, args, kwargs
                del base
    for shape in ([8, 512, 768], [1 << 22], [4096, 3]):
        x = torch.empty(shape, dtype=torch.bool, device=device)
        for args in ((), (0, False), (-1, True)):
            func = aten.all.default if not args else aten.all.dim
            yield "all", func, x, args, {}
    for name, dtype, shape, dims in LARGE:
        x = torch.empty(shape, dtype=dtype, device=device)
        yield f"{name} 32-bit split", aten.sum.dim_IntList, x, (dims, False), {}
        del x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-only", action="store_true", help="no GPU: only the model")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ns = parser.parse_args()
    gpu = not ns.model_only
    device = "cuda" if gpu else "meta"
    if gpu:
        torch.empty(1, device="cuda").sum()  # context, allocator
    rows = []
    t0 = time.perf_counter()
    for label, func, x, args, kwargs in _cases(device):
        predicted = _model(func, x, args, kwargs)
        measured = _measure(func, x, args, kwargs) if gpu else None
        rows.append(
            {
                "case": label,
                "op": str(func),
                "dtype": str(x.dtype)[6:],
                "shape": list(x.shape),
                "stride": list(x.stride()),
                "storage_offset": x.storage_offset(),
                "args": repr(args),
                "kwargs": repr(kwargs),
                "measured": measured,
                "predicted": predicted,
            }
        )
    seconds = time.perf_counter() - t0
    exact = sum(1 for r in rows if r["measured"] == r["predicted"])
    context = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if gpu else "meta (model only)",
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "seconds": round(seconds, 1),
        "cases": len(rows),
        "exact": exact if gpu else None,
    }
    print(json.dumps(context))
    for r in rows:
        if gpu and r["measured"] != r["predicted"]:
            print(
                f"MISMATCH {r['case']:24s} {r['op']:36s} {r['dtype']:9s} {r['shape']} "
                f"{r['stride']} {r['args']} {r['kwargs']}: "
                f"measured {r['measured']:,} model {r['predicted']:,}"
            )
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "reduce_workspace.json").write_text(json.dumps({"context": context, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
