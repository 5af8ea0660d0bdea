"""The estimate backend on CPU-only torch: hand-computable bytes, autocast, SDPA, backward,
determinism and the real model-zoo presets (fake tensors: no real memory is used)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.measure.meter import Meter  # noqa: E402

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def measure(backend: Any, build: Callable[[], Any], work: Callable[[Any], Any]) -> Any:
    meter = Meter(backend)
    meter.start()
    obj = meter.build(build)
    out = meter.run(work, obj)
    del obj, out
    meter.finish()
    return meter.measurements[0]


def test_identity(backend: Any) -> None:
    assert backend.name == "estimate"
    assert backend.device == "cuda"
    assert backend.profile() == "estimate"
    assert {"backend", "device", "torch", "allocator"} <= set(backend.context())


def test_matmul_of_known_shapes(backend: Any) -> None:
    def build() -> Any:
        a = torch.empty(1024, 1024, device="cuda", dtype=torch.float16)  # 2 MiB
        return a, torch.empty(1024, 2048, device="cuda", dtype=torch.float16)  # 4 MiB

    record = measure(backend, build, lambda ab: ab[0] @ ab[1])  # 4 MiB output
    assert record.model_bytes == 6 * MiB
    assert record.peak_bytes == 10 * MiB
    assert record.leaked_bytes == 0


def test_freed_tensor_no_longer_counts(backend: Any) -> None:
    meter = Meter(backend)
    meter.start()
    with backend.scope():
        t = torch.empty(3 * MiB, device="cuda", dtype=torch.uint8)
        assert backend.allocated() == 3 * MiB
        view = t[1:]
        del t
        assert backend.allocated() == 3 * MiB  # the view keeps the storage alive
        del view
        assert backend.allocated() == 0
    meter.finish()


def test_autocast_is_active_and_casts_are_counted(backend: Any) -> None:
    def build() -> Any:
        with torch.device("meta"):
            layer = torch.nn.Linear(1024, 1024)  # fp32 weights: 4 MiB + 4 KiB bias
        layer.to_empty(device="cuda")
        return layer, torch.empty(512, 1024, device="cuda")  # fp32 input: 2 MiB

    seen: dict[str, Any] = {}

    def work(obj: Any) -> None:
        layer, x = obj
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            seen["enabled"] = torch.is_autocast_enabled("cuda")
            seen["dtype"] = layer(x).dtype

    record = measure(backend, build, work)
    assert seen == {"enabled": True, "dtype": torch.float16}
    # fp16 casts of weight (2 MiB), bias (2 KiB -> one 512 B multiple) and input (1 MiB),
    # plus the fp16 output (1 MiB) exist together at the peak.
    assert record.peak_bytes - record.model_bytes >= 4 * MiB


def test_sdpa_does_not_materialise_the_attention_matrix(backend: Any) -> None:
    L = 4096

    def build() -> Any:
        return torch.empty(1, 4, L, 64, device="cuda", dtype=torch.float16)  # 2 MiB

    def work(q: Any) -> Any:
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    record = measure(backend, build, work)
    # the math path would hold a (1, 4, L, L) matrix: 128 MiB in fp16
    assert record.activation_bytes < 8 * MiB


def _tiny_train_model() -> Any:
    import model_zoo

    return model_zoo.build_model("tiny", "phase7", device="cuda")


def test_backward_with_checkpointing_runs_on_cpu_only_torch(backend: Any) -> None:
    import model_zoo

    grads: dict[str, Any] = {}

    def work(model: Any) -> Any:
        loss = model_zoo.train_step(model)
        p = next(model.parameters())
        grads["device"], grads["dtype"] = p.grad.device.type, p.grad.dtype
        return loss

    record = measure(backend, _tiny_train_model, work)
    assert grads == {"device": "cuda", "dtype": torch.float16}
    # gradients alone are as large as the fp16 model
    assert record.peak_bytes >= 2 * record.model_bytes


def _pairs() -> list[tuple[str, str, str]]:
    return [
        ("tiny", "phase7", "train_step"),
        ("tiny", "phase8", "inference"),
        ("small", "phase8", "train_step"),
        ("small", "phase7", "inference"),
    ]


def _run_pairs(backend: Any, pairs: list[tuple[str, str, str]]) -> dict[str, list[int]]:
    import model_zoo

    out = {}
    for preset, phase, work in pairs:
        meter = Meter(backend)
        meter.start()
        model = meter.build(model_zoo.build_model, preset, phase, device=backend.device)
        result = meter.run(getattr(model_zoo, work), model)
        del model, result
        meter.finish()
        r = meter.measurements[0]
        out["/".join((preset, phase, work))] = [r.model_bytes, r.peak_bytes, r.leaked_bytes]
    return out


def test_deterministic_in_any_order_and_process(backend: Any) -> None:
    pairs = _pairs()
    first = _run_pairs(backend, pairs)
    assert _run_pairs(backend, pairs) == first
    assert _run_pairs(backend, list(reversed(pairs))) == first
    code = (
        "import json, sys; sys.path.insert(0, '.');"
        "from tests.estimate.test_estimate import _pairs, _run_pairs;"
        "from pytest_vram.backends import create;"
        "print(json.dumps(_run_pairs(create('estimate'), _pairs()[::-1])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == first


@pytest.mark.parametrize(
    ("preset", "phase", "work", "model_bytes"),
    [
        ("maximum", "phase8", "inference", 6_163_679_232),
        ("standard", "phase7", "train_step", 2_375_959_552),
    ],
)
def test_real_presets(backend: Any, preset: str, phase: str, work: str, model_bytes: int) -> None:
    """The 3.08B model runs in CI: the estimator uses no real memory."""
    import model_zoo

    meter = Meter(backend)
    meter.start()
    model = meter.build(model_zoo.build_model, preset, phase, device=backend.device)
    result = meter.run(getattr(model_zoo, work), model)
    del model, result
    assert meter.finish() == 0
    record = meter.measurements[0]
    # fp16 parameters, each counted as its 512-B-rounded size (expandable segments)
    assert record.model_bytes == model_bytes
    assert record.peak_bytes > record.model_bytes
    if work == "train_step":
        assert record.peak_bytes > 2 * record.model_bytes  # fp16 grads + activations


def test_sdpa_on_hopper_is_cudnn_unless_deprioritized(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch >= 2.10 on an H200 runs cuDNN attention (measured with torch 2.11)."""
    from pytest_vram.backends.estimate import sdpa_choice

    q = torch.empty(1, 16, 512, 128, device="meta", dtype=torch.float16)
    expected = "cudnn" if sdpa_choice.prefers_cudnn_attention() else "flash"
    assert sdpa_choice.sdp_choice(q, q, q, None, False, False) == expected
    monkeypatch.setenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", "1")
    assert sdpa_choice.sdp_choice(q, q, q, None, False, False) == "flash"


def test_sdpa_with_a_mask_strided_in_its_last_dim_takes_the_math_path() -> None:
    """check_last_dim_stride_equals_1_dense covers the mask: T5's position bias, a permuted
    view (stride num_heads), sends training to the math path on an H200."""
    from pytest_vram.backends.estimate import sdpa_choice

    q = torch.empty(2, 12, 512, 64, device="meta")
    bias = torch.empty(512, 512, 12, device="meta").permute(2, 0, 1).unsqueeze(0)
    assert sdpa_choice.sdp_choice(q, q, q, bias.contiguous(), False, False) == "efficient"
    assert sdpa_choice.sdp_choice(q, q, q, bias, False, False) == "math"


@pytest.mark.parametrize(("heads", "measured"), [(16, 4_227_328), (24, 6_340_864)])
def test_cudnn_attention_backward_workspace_as_measured(heads: int, measured: int) -> None:
    """The workspace the H200 allocated inside cuDNN's SDPA backward (S=512, D=128)."""
    from pytest_vram.backends.estimate.kernels import attention

    q = torch.empty(1, heads, 512, 128, device="meta", dtype=torch.float16)
    args = (q, q, q, q, q)
    assert attention._cudnn_sdpa_bwd_buffers(args, {}, None) == [measured]


@pytest.mark.parametrize("grad", [False, True])
def test_cudnn_attention_forward_allocations(backend: Any, grad: bool) -> None:
    from pytest_vram.backends.estimate import sdpa_choice

    if not sdpa_choice.prefers_cudnn_attention():
        pytest.skip("this torch keeps flash attention first")

    def build() -> Any:
        return torch.empty(1, 16, 512, 128, device="cuda", dtype=torch.float16).requires_grad_(grad)

    def work(q: Any) -> Any:
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    record = measure(backend, build, work)
    # int64 philox seed and offset (one 512 B block each), the fp16 output (2 MiB), the fp32
    # softmax statistics (1, 16, 512, 1) only when backward needs them, a 256 B workspace.
    lse = 16 * 512 * 4 if grad else 0
    assert record.peak_bytes - record.model_bytes == 512 + 512 + 2 * MiB + lse + 512


def test_cache_hit_outputs_are_fake_tensors_as_torch_makes_them(backend: Any) -> None:
    """A dispatch-cache hit's output is made from a template (``_new_fake``); it must carry
    exactly the attributes torch's own ``FakeTensor`` constructor gives."""
    from torch._subclasses.fake_tensor import FakeTensor

    backend.begin_test()
    try:
        with backend.scope():
            x = torch.empty(8, 8, device="cuda", requires_grad=True)
            x * 2  # a miss or a hit; the next one is a hit
            hit = x * 2
            view = hit.t()
            reference = FakeTensor(hit.fake_mode, torch.empty(8, 8, device="meta"), hit.device)
            assert type(hit) is FakeTensor and type(view) is FakeTensor
            assert vars(hit) == vars(reference)
            assert (hit.device, hit.requires_grad, hit.grad_fn is not None) == (
                torch.device("cuda", 0),
                True,
                True,
            )
            assert view.untyped_storage()._cdata == hit.untyped_storage()._cdata
            assert view.stride() == (1, 8)
    finally:
        backend.end_test()


def test_backward_stays_on_the_calling_thread_in_the_scope(backend: Any) -> None:
    """The emulated CUDA guard makes the engine start a device thread; a task's state left
    on it was released during interpreter shutdown and aborted the process (exit 134,
    "terminate called without an active exception") after the tests had passed, about
    one run in ten on the loaded 2-core machine. Inside the scope every backward runs on
    the calling thread, and the device thread is waited for until it has its Python
    thread state."""
    from pytest_vram.backends.estimate import autograd_engine

    if not backend._emulate:
        pytest.skip("only the CUDA emulation installs the guard")
    with backend.scope():
        assert not torch.autograd.is_multithreading_enabled()
        x = torch.empty(4, 4, device="cuda", requires_grad=True)
        (x * 2).sum().backward()
    assert torch.autograd.is_multithreading_enabled()
    assert autograd_engine._python_thread_states() >= (
        threading.active_count() + autograd_engine._autograd_device_threads()
    )


@pytest.mark.parametrize(
    "conf",
    [
        "expandable_segments:False",
        "backend:cudaMallocAsync",
        "expandable_segments:True,expandable_segments:False",
        "roundup_power2_divisions:4",
        "expandable_segments:maybe",
        "garbage",
    ],
)
def test_the_estimator_refuses_the_allocator_settings_the_cuda_backend_refuses(
    monkeypatch: pytest.MonkeyPatch, conf: str
) -> None:
    from pytest_vram.backends import BackendUnavailable, alloc_conf, create

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", conf)
    with pytest.raises(BackendUnavailable) as info:
        create("estimate")
    assert str(info.value) == alloc_conf.problem("expandable")  # the cuda backend's message
    assert f"PYTORCH_CUDA_ALLOC_CONF={conf}" in str(info.value).replace("'", "")


def test_the_estimator_accepts_what_leaves_the_gated_figure_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_vram.backends import create

    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True,max_split_size_mb:128")
    assert create("estimate").name == "estimate"


def test_a_refused_allocator_setting_errors_every_vram_test_with_the_fix(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    pytester.makepyfile(
        """
        def test_a(vram):
            vram.run(lambda: None)

        def test_b(vram):
            vram.run(lambda: None)
        """
    )
    result = pytester.runpytest_subprocess("--vram-backend=estimate", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*--vram-backend=estimate: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False "
            "(expandable_segments:False) rules out expandable segments*--vram-allocator=default*"
        ]
    )
    assert "Traceback" not in result.stdout.str()
