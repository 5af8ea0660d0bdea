"""The staging buffer and semaphores of CUDA reductions (``kernels.reductions``).

The expected figures are real H200 measurements (torch 2.11.0+cu130, expandable
segments): the per-operator logs of the realistic corpus workloads
(``docs/data/estimator-accuracy/operator-logs/``; transient = peak during the call -
allocated at its start - the rounded outputs). The workload each case comes from is named
with it.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.estimate import allocator, kernels  # noqa: E402
from pytest_vram.backends.estimate.kernels import reduce_launch  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402

aten = torch.ops.aten
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16

#: (workload, op, dtype, shape, stride, further arguments, transient measured on the H200)
H200_CASES = [
    ("transformer-encoder", aten.sum.dim_IntList, f32, [1024, 1024], None, ([0], True), 8_389_120),
    ("transformer-encoder", aten.sum.dim_IntList, f32, [1024, 4096], None, ([0], True), 33_554_944),
    (
        "transformer-encoder",
        aten.sum.dim_IntList,
        f32,
        [512, 2, 3072],
        [6144, 3072, 1],
        ([0, 1], True),
        25_166_336,
    ),
    ("vit-fp16", aten.sum.dim_IntList, f16, [3152, 3072], None, ([0], True), 78_643_712),
    ("vit-fp16", aten.sum.dim_IntList, f16, [3152, 768], None, ([0], True), 19_661_312),
    ("vit-fp16", aten.sum.dim_IntList, f32, [16, 197, 768], None, ([0], True), 0),
    ("gpt2-bf16", aten.sum.dim_IntList, bf16, [1024, 2304], None, ([0], True), 18_874_880),
    (
        "llama-gqa-train",
        aten.sum.dim_IntList,
        bf16,
        [2, 512, 1024],
        None,
        ([0, 1], True),
        8_389_120,
    ),
    ("llama-gqa-train", aten.sum.dim_IntList, f32, [2, 512, 1024], None, ([2], True), 0),
    ("optim-Adam", aten.sum.dim_IntList, f32, [2048, 16384], None, ([0], True), 142_606_848),
    ("t5-adafactor", aten.sum.dim_IntList, f32, [2, 12, 512, 512], None, ([0], True), 0),
    ("mixtral-moe", aten.sum.dim_IntList, f32, [1024, 2, 512], [1024, 512, 1], ([1],), 0),
    ("optim-Adam", aten.mean.default, f32, [2048, 4096], None, (), 3_072),
    ("vit-fp16", aten.mean.default, f32, [16, 197, 768], None, (), 2_048),
    ("llama-gqa-train", aten.mean.dim, f32, [2, 512, 1024], None, ([-1], True), 0),
    ("resnet-cnn", aten.mean.dim, f32, [32, 512, 7, 7], None, ([-1, -2], True), 0),
    ("optim-Adafactor", aten.linalg_vector_norm.default, f32, [16384, 4096], None, (), 3_072),
    (
        "optim-Adafactor",
        aten.linalg_vector_norm.default,
        f32,
        [16384, 4096],
        None,
        (2, [-2], True),
        138_412_544,
    ),
    (
        "optim-Adafactor",
        aten.linalg_vector_norm.default,
        f32,
        [4096, 16384],
        None,
        (2, [-2], True),
        142_606_848,
    ),
    ("t5-adafactor", aten.linalg_vector_norm.default, f32, [768, 768], None, (), 1_024),
    (
        "t5-adafactor",
        aten.linalg_vector_norm.default,
        f32,
        [3072, 768],
        None,
        (2, [-2], True),
        18_874_880,
    ),
    ("t5-adafactor", aten.linalg_vector_norm.default, f32, [768, 3072], None, (2, [-2], True), 0),
    ("llama-kv-cache", aten.argmax.default, bf16, [1, 1, 32000], None, (-1,), 0),
    ("bert-fp16", aten.all.default, torch.bool, [2, 512], None, (), 0),
]


def _meta(dtype: Any, shape: list[int], stride: list[int] | None) -> Any:
    if stride is None:
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


@pytest.mark.parametrize(
    ("workload", "op", "dtype", "shape", "stride", "rest", "measured"),
    H200_CASES,
    ids=[f"{c[0]}-{c[1].__name__}-{c[3]}-{c[5]}" for c in H200_CASES],
)
def test_transient_as_measured_on_the_h200(
    workload: str, op: Any, dtype: Any, shape: list[int], stride: Any, rest: Any, measured: int
) -> None:
    x = _meta(dtype, shape, stride)
    args = (x, *rest)
    out = op(*args)
    sizes = kernels.INTERNAL_BUFFERS[op](args, {}, out)
    assert sum(allocator.round_size(n) for n in sizes) == measured


def test_column_sum_buffer_and_semaphores() -> None:
    """fp32 [1024, 1024] over dim 0: 16 blocks per output, 8 MiB staging + 8 semaphores."""
    x = torch.empty(1024, 1024, device="meta")
    assert kernels.INTERNAL_BUFFERS[aten.sum.dim_IntList]((x, [0], True), {}, x[:1]) == [
        8 * (1 << 20),
        32,
    ]


def test_row_reductions_need_no_global_memory() -> None:
    it = reduce_launch.build_iter([4096, 4096], [4096, 1], 0, 4, [1, 0], 4, [False, True])
    config = reduce_launch.set_reduce_config(it, arg_size=4, scalar_size=4, input_vec_size=4)
    assert not config.should_global_reduce()
    assert config.global_memory_size() == config.semaphore_size() == 0


def test_iterator_puts_reduced_dims_first_and_coalesces() -> None:
    # sum over dims (0, 1) of a contiguous [2, 512, 1024]: one reduced dim of 1024, one kept
    it = reduce_launch.build_iter(
        [2, 512, 1024], [524288, 1024, 1], 0, 2, [0, 0, 1], 2, [True, True, False]
    )
    assert it.shape == [1024, 1024]
    assert it.strides == [[0, 2], [2048, 2]]
    assert it.num_reduce_dims() == 1


def test_more_than_2_gib_addressed_splits_into_32bit_reductions() -> None:
    it = reduce_launch.build_iter([40000, 30000], [30000, 1], 0, 2, [0, 1], 2, [True, False])
    assert not it.can_use_32bit_indexing()
    subs = reduce_launch._split_32bit(it)
    assert len(subs) > 1 and all(s.can_use_32bit_indexing() for s in subs)
    assert sum(s.shape[0] for s in subs) == 40000


def test_estimate_of_a_column_sum_includes_the_buffer() -> None:
    backend = create("estimate")
    meter = Meter(backend)
    meter.start()
    x = meter.build(lambda: torch.empty(1024, 1024, device="cuda"))  # 4 MiB
    out = meter.run(lambda t: t.sum(0), x)  # 4 KiB, and 8 MiB + 512 B during the call
    del x, out
    meter.finish()
    record = meter.measurements[0]
    assert record.model_bytes == 4 * (1 << 20)
    assert record.peak_bytes == 4 * (1 << 20) + 4096 + 8 * (1 << 20) + 512
