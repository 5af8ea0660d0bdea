"""Check the reduction staging-buffer model against per-operator logs measured on a GPU.

Reads per-operator logs ``ops-<workload>-<size>-cuda.json.gz`` of corpus workloads run on
the GPU under a logging dispatch mode (rows: op, outputs, allocated at the op's start, peak
until the next op, inputs as ``dtype[shape]/[stride]`` and the other arguments; the H200's
are in ``docs/data/estimator-accuracy/operator-logs/``), takes every call of an operator in
``_fake_kernels.INTERNAL_BUFFERS`` that is a reduction, rebuilds its arguments on the meta
device and compares the measured transient (peak - start - the rounded outputs) with the
model's buffers (rounded). Storage offsets are not logged: inputs are taken as starting at
their allocation.

    python benchmarks/reduce_corpus_check.py docs/data/estimator-accuracy/operator-logs \
        [--json out.json] [--all]

A few seconds on a CPU, no GPU needed. Figures: docs/results/estimator-accuracy.md.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from pytest_vram.backends.estimate import kernels as _fake_kernels
from pytest_vram.backends.estimate.allocator import round_size

_TENSOR = re.compile(r"(\w+)\[([^\]]*)\](?:/\[([^\]]*)\])?")
REDUCTIONS = {
    "aten.sum.dim_IntList",
    "aten.sum.default",
    "aten.mean.dim",
    "aten.mean.default",
    "aten.linalg_vector_norm.default",
    "aten.amax.default",
    "aten.amin.default",
    "aten.max.dim",
    "aten.min.dim",
    "aten.argmax.default",
    "aten.argmin.default",
    "aten.var_mean.correction",
    "aten.var.correction",
    "aten.std.correction",
    "aten.all.default",
    "aten.all.dim",
    "aten.any.default",
    "aten.any.dim",
    "aten.prod.default",
    "aten.prod.dim_int",
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _tensors(spec: str) -> list[tuple[str, list[int], list[int] | None]]:
    return [
        (m[1], _ints(m[2]), _ints(m[3]) if m[3] is not None else None)
        for m in _TENSOR.finditer(spec)
    ]


def _meta(dtype: str, shape: list[int], stride: list[int] | None) -> torch.Tensor:
    dt = getattr(torch, dtype)
    if stride is None:
        return torch.empty(shape, dtype=dt, device="meta")
    return torch.empty_strided(shape, stride, dtype=dt, device="meta")


def _call(op: str, inputs: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The overload and its arguments, from the logged inputs string."""
    first = _TENSOR.match(inputs)
    assert first is not None, inputs
    t = _meta(first[1], _ints(first[2]), _ints(first[3]) if first[3] else None)
    rest = inputs[first.end() :].split()
    nums = [int(x) for x in rest if re.fullmatch(r"-?\d+", x)]
    flags = [x == "True" for x in rest if x in ("True", "False")]
    keepdim = flags[-1] if flags else False
    _, name, overload = op.split(".")
    func = getattr(getattr(torch.ops.aten, name), overload)
    if name == "linalg_vector_norm":
        ord_ = nums[0] if nums else 2
        dims = nums[1:] or None
        return func, (t, ord_, dims, keepdim), {}
    if overload in ("default",) and name in ("sum", "mean", "all", "any", "prod"):
        return func, (t,), {}
    if name in ("argmax", "argmin"):
        return func, (t, nums[0] if nums else None, keepdim), {}
    if name in ("max", "min", "prod", "all", "any") and overload in ("dim", "dim_int"):
        return func, (t, nums[0], keepdim), {}
    if name in ("var_mean", "var", "std"):
        return func, (t, nums or None), {"keepdim": keepdim}
    if name in ("amax", "amin"):
        return func, (t, nums, keepdim), {}
    return func, (t, nums, keepdim), {}


def _outputs_bytes(outputs: str) -> int:
    total = 0
    for dtype, shape, _ in _tensors(outputs):
        n = 1
        for s in shape:
            n *= s
        total += round_size(n * torch.empty((), dtype=getattr(torch, dtype)).element_size())
    return total


def check(directory: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(directory.glob("ops-*-cuda.json.gz")):
        workload = path.name[len("ops-") : -len("-cuda.json.gz")]
        with gzip.open(path) as f:
            log = json.load(f)
        for row in log["ops"]:
            if row[0] not in REDUCTIONS or len(row) < 5:
                continue
            op, outputs, start, peak, inputs = row[:5]
            func, args, kwargs = _call(op, inputs)
            out = func(*args, **kwargs)
            model = _fake_kernels.INTERNAL_BUFFERS.get(func)
            predicted = sum(round_size(n) for n in model(args, kwargs, out)) if model else 0
            measured = peak - start - _outputs_bytes(outputs)
            rows.append(
                {
                    "workload": workload,
                    "op": op,
                    "inputs": inputs,
                    "outputs": outputs,
                    "measured": measured,
                    "predicted": predicted,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--all", action="store_true", help="print every distinct case")
    ns = parser.parse_args()
    rows = check(ns.directory)
    cases: dict[tuple[str, str, int, int], int] = collections.Counter()
    for r in rows:
        cases[(r["op"], r["inputs"], r["measured"], r["predicted"])] += 1
    exact = sum(1 for r in rows if r["measured"] == r["predicted"])
    print(f"{exact} of {len(rows)} reduction calls exact; {len(cases)} distinct cases")
    for (op, inputs, measured, predicted), n in sorted(cases.items()):
        if ns.all or measured != predicted:
            mark = "==" if measured == predicted else "!="
            print(f"{n:5d} {op:34s} {inputs:55s} {measured:>11,} {mark} {predicted:>11,}")
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1))
    return 0 if exact == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
