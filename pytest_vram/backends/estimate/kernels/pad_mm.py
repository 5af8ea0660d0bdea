"""Inductor's ``pad_mm`` decisions for a compiled program, as the GPU makes them.

Inductor's ``pad_mm`` pass (``config.shape_padding``, on by default) looks at every
``mm``, ``addmm`` and ``bmm`` with a dimension that is not a multiple of its dtype's
alignment (GPT-2's 50,257-token vocabulary): if the matmul is compute-bound on the GPU,
it **times** the padded and the unpadded matmul on random operands and pads when that is
at least 10% faster. Padding changes the program (the operands are copied into padded
buffers, the result sliced), so the decision is part of the figure, and only the GPU can
make it. The estimator therefore reads it from a table recorded on the GPU it models,
``data/pad_mm_<arch>.json.gz`` (``benchmarks/compile_accuracy.py`` records one: every
matmul that Inductor could pad, keyed by Inductor's own ``should_pad_bench_key``: shapes,
strides and dtypes of the operands, the operator, whether the padding is free, TF32).

Without a table entry, a matmul is **not padded**. That is the GPU's answer where the
matmul is memory-bound, which Inductor decides without timing: its arithmetic intensity
``M*N*K / (M*K + K*N + M*N)`` is at most half the card's FLOPS per byte of memory
bandwidth. Below :data:`MEMORY_BOUND_INTENSITY` that holds on every card the estimator
names, in any dtype, so such a matmul is answered without a word; any other gets one
:class:`MatmulPaddingUnknown` warning per test naming it and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_vram.backends.patching import Patches

DATA_DIR = Path(__file__).parent / "data"
#: where the shipped tables are, as a user finds them in the package
TABLE_DIR = "pytest_vram/backends/estimate/kernels/data"
TABLE_FORMAT = 1


#: below this arithmetic intensity a matmul is memory-bound for Inductor on every named
#: card: half the lowest FLOPS-to-bandwidth ratio among them is the A100's fp32 one,
#: 19.5 TFLOPS / 2.0 TB/s / 2 = 4.9 (Inductor's ``is_mm_compute_bound``)
MEMORY_BOUND_INTENSITY = 4.0


class MatmulPaddingUnknown(UserWarning):
    """A compiled matmul whose ``pad_mm`` decision on the GPU is not known; the estimate
    assumes it is not padded."""


def table_name(capability: tuple[int, int]) -> str:
    return f"pad_mm_sm{capability[0]}{capability[1]}.json.gz"


@functools.cache
def load_table(name: str) -> dict[str, bool]:
    """The decisions of one table (empty where none is shipped)."""
    path = DATA_DIR / name
    if not path.exists():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != TABLE_FORMAT:
        raise ValueError(f"{TABLE_DIR}/{name}: format {data.get('format')!r}, not {TABLE_FORMAT}")
    return {str(k): bool(v) for k, v in data["decisions"].items()}


def _describe(mat1: Any, mat2: Any, op: Any) -> str:
    return (
        f"{op} of {tuple(mat1.shape)} x {tuple(mat2.shape)} {str(mat1.dtype).replace('torch.', '')}"
    )


def _intensity(mat1: Any, mat2: Any, op: Any) -> float:
    """Inductor's arithmetic intensity of the matmul (its size hints for symbolic sizes)."""
    import torch
    from torch._inductor.fx_passes.pad_mm import hint_symbols

    if op is torch.ops.aten.bmm:
        m, k, n = mat1.shape[1], mat1.shape[2], mat2.shape[2]
    else:
        m, k, n = mat1.shape[0], mat1.shape[1], mat2.shape[1]
    m, k, n = hint_symbols((m, k, n))
    moved = m * k + n * k + m * n
    return m * n * k / moved if moved else 0.0


def install(patches: Patches, tracker: Any, capability: tuple[int, int]) -> None:
    """While compiling: ``pad_mm`` decides from the table, without timing anything."""
    import torch._inductor.config as config
    from torch._inductor.fx_passes import pad_mm as inductor_pad_mm

    name = table_name(capability)
    decisions = load_table(name)

    def should_pad(match: Any, mat1: Any, mat2: Any, op: Any, input: Any = None) -> bool:
        if not inductor_pad_mm.can_pad(mat1, mat2, op, input):
            return False  # nothing to pad, or padding is not possible: no timing on a GPU
        if config.force_shape_pad:
            return True
        if _intensity(mat1, mat2, op) < MEMORY_BOUND_INTENSITY:
            return False
        key = inductor_pad_mm.should_pad_bench_key(match, mat1, mat2, op, input)
        decision = decisions.get(key)
        if decision is not None:
            return decision
        tracker.warn_once(
            MatmulPaddingUnknown,
            f"the estimate does not know whether Inductor pads the compiled "
            f"{_describe(mat1, mat2, op)} on the GPU (its pad_mm pass decides by timing the "
            f"padded and unpadded matmul there; it is not in {TABLE_DIR}/{name}), and "
            "counts it unpadded; padded, the operands are copied into padded buffers. Fix: "
            "record the table on the GPU the estimate models with benchmarks/"
            "compile_accuracy.py from pytest-vram's repository, or measure this test with "
            "--vram-backend=cuda. Further matmuls of this test that are not in the table "
            "are not reported again.",
        )
        return False

    patches.set(inductor_pad_mm, "should_pad", should_pad)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, bool]]:
    """On a GPU: the decisions Inductor's ``pad_mm`` makes while compiling, by the keys the
    estimator looks up (every matmul it could pad; the compute-bound ones timed)."""
    from torch._inductor.fx_passes import pad_mm as inductor_pad_mm

    original = inductor_pad_mm.should_pad
    found: dict[str, bool] = {}

    def should_pad(match: Any, mat1: Any, mat2: Any, op: Any, input: Any = None) -> bool:
        decision = original(match, mat1, mat2, op, input)
        if inductor_pad_mm.can_pad(mat1, mat2, op, input):
            key = inductor_pad_mm.should_pad_bench_key(match, mat1, mat2, op, input)
            found[key] = bool(decision)
        return decision

    inductor_pad_mm.should_pad = should_pad
    try:
        yield found
    finally:
        inductor_pad_mm.should_pad = original


def write_table(path: Path, decisions: dict[str, bool], source: str) -> None:
    """Write ``decisions`` as a table the estimator reads (``data/pad_mm_<arch>.json.gz``)."""
    data = {"format": TABLE_FORMAT, "source": source, "decisions": dict(sorted(decisions.items()))}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f, indent=0)
