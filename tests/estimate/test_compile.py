"""``torch.compile``'d code on the estimator: Inductor's program, counted by the allocator
model; the modes it cannot follow refused with the fix.

Inductor needs triton; without it (the ``compile`` extra not installed) only the refusals
are tested here.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_vram.backends.estimate import EstimateUnsupported  # noqa: E402
from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402
from pytest_vram.backends.estimate.compiled import triton_installed  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vram"))
import compiled_workloads as workloads  # noqa: E402

needs_triton = pytest.mark.skipif(
    not triton_installed(),
    reason="Inductor on the estimator needs triton: pip install 'pytest-vram[compile]'",
)
emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")
pytestmark = emulated

D, H, B = 256, 1024, 64  # the MLP: D -> H -> D, batch B, fp32
PARAMS = sum(round_size(n * 4) for n in (H * D, H, D * H, D))
X, HIDDEN, OUT = round_size(B * D * 4), round_size(B * H * 4), round_size(B * D * 4)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D)).cuda()


def measure(backend: Any, build: Callable[[], Any], work: Callable[[Any], Any]) -> Any:
    meter = Meter(backend)
    meter.start()
    state = meter.build(build)
    meter.run(work, state)
    del state
    meter.finish()
    return meter.measurements[0]


@pytest.fixture
def wrappers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The source of every module Inductor loads (its wrappers), in order."""
    from torch._inductor.codecache import PyCodeCache

    load = PyCodeCache.load_by_key_path.__func__
    found: list[str] = []

    def load_by_key_path(cls: Any, key: str, path: str, *args: Any, **kwargs: Any) -> Any:
        found.append(Path(path).read_text())
        return load(cls, key, path, *args, **kwargs)

    monkeypatch.setattr(PyCodeCache, "load_by_key_path", classmethod(load_by_key_path))
    yield found


_ALLOC = re.compile(r"(\w+) = empty_strided_cuda\(\(([^)]*)\), \(([^)]*)\), torch\.(\w+)\)")
_REUSE = re.compile(r"(\w+) = (?:reinterpret_tensor\()?(\w+)\b.*; del (\w+)  # reuse")


def replay_peak(source: str) -> int:
    """The peak of a wrapper's ``call``, read from its source: every ``empty_strided_cuda``
    a request of its storage's bytes (512-byte rounded), ``# reuse`` none, ``del`` a free;
    what ``return`` hands back stays."""
    body = source.split("def call(self, args):", 1)[1].split("\n    return ", 1)[0]
    live: dict[str, int] = {}
    peak = 0
    for line in body.splitlines():
        line = line.strip()
        if m := _ALLOC.match(line):
            name, size, stride, dtype = m.groups()
            sizes = [int(s) for s in size.split(",") if s.strip()]
            strides = [int(s) for s in stride.split(",") if s.strip()]
            elements = 1 + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
            live[name] = round_size(elements * getattr(torch, dtype).itemsize)
        elif m := _REUSE.match(line):
            live[m.group(1)] = live.pop(m.group(3))
        elif line.startswith("del "):
            for name in line[4:].split(", "):
                live.pop(name, None)
        peak = max(peak, sum(live.values()))
    return peak


# -- hand-checked figures -------------------------------------------------------------------
@needs_triton
def test_compiled_inference_is_the_replay_of_its_wrapper(backend: Any, wrappers: list[str]):
    """The estimate of a compiled call is its wrapper's allocations, in order: replayed
    from the generated source, its peak is the measured one above the model and input."""

    def build() -> Any:
        return torch.compile(mlp().eval()), torch.empty(B, D, device="cuda")

    def work(state: Any) -> Any:
        model, x = state
        with torch.no_grad():
            return model(x)

    record = measure(backend, build, work)
    assert len(wrappers) == 1
    assert record.model_bytes == PARAMS + X
    assert record.activation_bytes == replay_peak(wrappers[0])
    # the GELU runs in place in the first matmul's output: one hidden activation, and the
    # output, where eager code holds the matmul's output and the GELU's at once
    assert record.activation_bytes == HIDDEN + OUT
    eager = measure(backend, lambda: (mlp().eval(), torch.empty(B, D, device="cuda")), work)
    assert eager.activation_bytes == 2 * HIDDEN


@needs_triton
def test_the_compile_itself_is_not_counted(backend: Any) -> None:
    """The first call (which compiles) and the next have the same figure: tracing runs on
    Dynamo's own fake tensors, the compiler's device work is done without the device."""

    def build() -> Any:
        return torch.compile(mlp().eval()), torch.empty(B, D, device="cuda")

    def twice(state: Any) -> list[int]:
        model, x = state
        peaks = []
        for _ in range(2):
            backend.reset_peak()
            start = backend.allocated()
            with torch.no_grad():
                model(x)
            peaks.append(backend.peak() - start)
        return peaks

    meter = Meter(backend)
    meter.start()
    state = meter.build(build)
    first, second = meter.run(twice, state)
    del state
    meter.finish()
    assert first == second == HIDDEN + OUT


def mlp_training(backend_name: str) -> Callable[[], Any]:
    def build() -> Any:
        model = mlp()
        x = torch.empty(B, D, device="cuda")
        compiled = torch.compile(model, backend=backend_name) if backend_name else model
        step(compiled, x)  # warmed up: the measured step is the steady state
        return compiled, x

    return build


def step(model: Any, x: Any) -> None:
    for p in model.parameters():
        p.grad = None
    model(x).square().mean().backward()


@needs_triton
@pytest.mark.parametrize("backend_name", ["inductor", "aot_eager", "eager"])
def test_compiled_training_step(backend: Any, backend_name: str) -> None:
    """The steady-state step: its peak is at the backward's last matmul (the first layer's
    weight gradient), with every other gradient made, the hidden gradient (in place in the
    GELU's saved output) still alive, and the loss and its gradient (512 B each). The same
    for every backend here: AOTAutograd's partitioner saves what eager autograd saves (the
    input, the second weight, the matmul's and the GELU's outputs)."""
    record = measure(backend, mlp_training(backend_name), lambda state: step(*state))
    assert record.model_bytes == 2 * PARAMS + X
    assert record.peak_bytes == 2 * PARAMS + X + HIDDEN + 2 * 512
    uncompiled = measure(backend, mlp_training(""), lambda state: step(*state))
    assert (uncompiled.model_bytes, uncompiled.peak_bytes) == (
        record.model_bytes,
        record.peak_bytes,
    )


@needs_triton
def test_compiled_optimizer_step_allocates_nothing(backend: Any) -> None:
    """``torch.compile(opt.step)``: Dynamo makes the optimizer capturable, so AdamW's step
    counts live on the device (one 512-byte block each) next to ``exp_avg`` and
    ``exp_avg_sq``; the compiled update runs in place, where eager foreach AdamW holds a
    temporary the size of the parameters."""

    def build() -> Any:
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        compiled_step = torch.compile(opt.step)
        step(model, torch.empty(B, D, device="cuda"))
        compiled_step()  # creates the state (while compiling, as on the GPU)
        return compiled_step

    record = measure(backend, build, lambda compiled_step: compiled_step())
    state = 2 * PARAMS + 4 * 512  # exp_avg, exp_avg_sq, four step counts
    assert record.model_bytes == PARAMS + PARAMS + state  # parameters, gradients, state
    assert record.peak_bytes == record.model_bytes


@needs_triton
def test_dynamo_maps_torch_itself_whatever_ran_before(backend: Any) -> None:
    """Dynamo builds its table of torch's functions once, from what the names hold then.
    Where an earlier test had it built inside a scope (the scope's wrappers of torch's
    factories in place of torch's builtins) and then dropped, the next compile must still
    trace the compiled optimizer step whole: built again before the scope patches
    anything, the table holds torch's own objects, and the figure does not depend on
    which test ran first."""
    from torch._dynamo import trace_rules

    rule_map = trace_rules.get_torch_obj_rule_map
    rule_map.cache_clear()
    backend.begin_test()
    try:
        with backend.scope():
            assert rule_map()
    finally:
        backend.end_test()
        rule_map.cache_clear()
    test_the_compile_itself_is_not_counted(backend)  # a first compile in a test
    test_compiled_optimizer_step_allocates_nothing(backend)


# -- the workloads of the memory suite --------------------------------------------------------
def run_workload(backend: Any, name: str) -> tuple[Any, list[warnings.WarningMessage]]:
    workload = workloads.WORKLOADS[name]
    meter = Meter(backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter.start()
        state = meter.build(workloads.warmed(workload), "small", "cuda")
        meter.run(workload.work, state, "small", "cuda")
        del state
        meter.finish()
    ours = [w for w in caught if type(w.message).__module__.startswith("pytest_vram")]
    return meter.measurements[0], ours


@needs_triton
def test_llama_block_runs_the_fused_attention_kernel_of_sm90(
    backend: Any, wrappers: list[str]
) -> None:
    """Compiled, transformers passes its causal mask to SDPA, and the kernel the graph
    calls is chosen while tracing as on the H200: with a mask, memory-efficient attention
    (cuDNN and flash do not take one), in the forward and the backward wrapper."""
    run_workload(backend, "llama-block-sdpa-gqa-bf16-train")
    calls = set(re.findall(r"aten\.(_scaled_dot_product_\w+)\.default\(", "".join(wrappers)))
    assert calls == {
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_efficient_attention_backward",
    }


@needs_triton
def test_second_length_compiles_a_dynamic_graph(backend: Any, wrappers: list[str]) -> None:
    """Two sequence lengths: the second recompiles with a symbolic length (Dynamo's
    automatic dynamic shapes), whose wrapper sizes its buffers per call; a third length
    then runs without compiling, estimated from the same wrapper."""
    record, _ = run_workload(backend, "gpt2-dynamic-lengths")
    assert len(wrappers) == 2
    assert not re.search(r"empty_strided_cuda\(\([^)]*s\d", wrappers[0])
    assert re.search(r"empty_strided_cuda\(\([^)]*s\d", wrappers[1])

    def build() -> Any:
        state = workloads.gpt2_dynamic_build("small", "cuda")
        workloads.gpt2_dynamic(state, "small", "cuda")
        return state[0], workloads._tokens("small", "cuda", 1000, 40)

    def third(state: Any) -> Any:
        model, ids = state
        loaded = len(wrappers)
        with torch.no_grad():
            logits = model(ids).logits
        assert len(wrappers) == loaded  # nothing compiled
        return logits

    third_length = measure(backend, build, third)
    assert third_length.model_bytes < record.model_bytes  # one input of 40, not 32 and 48
    assert third_length.peak_bytes > third_length.model_bytes


@needs_triton
def test_compiled_code_runs_again_in_a_later_test(backend: Any) -> None:
    """A compiled function kept from one test (module-level, as users write it) runs in
    the next test's scope on its new fake tensors, counted there."""
    compiled = torch.compile(lambda x: torch.nn.functional.gelu(x @ x))

    def build() -> Any:
        return torch.empty(B, B, device="cuda")

    first = measure(backend, build, compiled)
    second = measure(backend, build, compiled)
    assert first.activation_bytes == second.activation_bytes == round_size(B * B * 4)


# -- what is refused --------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"mode": "reduce-overhead"}, 'torch.compile(mode="reduce-overhead")'),
        ({"mode": "max-autotune"}, 'torch.compile(mode="max-autotune")'),
        ({"mode": "max-autotune-no-cudagraphs"}, 'mode="max-autotune-no-cudagraphs"'),
        ({"options": {"cpp_wrapper": True}}, 'options={"cpp_wrapper": True}'),
    ],
)
def test_a_mode_the_estimate_cannot_follow_is_refused_with_the_fix(
    backend: Any, options: dict[str, Any], named: str
) -> None:
    def build() -> Any:
        return torch.compile(mlp().eval(), **options), torch.empty(B, D, device="cuda")

    def work(state: Any) -> Any:
        model, x = state
        with torch.no_grad():
            return model(x)  # the call that compiles

    with pytest.raises(EstimateUnsupported) as refused:
        measure(backend, build, work)
    message = str(refused.value)
    assert named in message
    assert "test_compile.py" in message and "return model(x)" in message
    assert "--vram-backend=cuda" in message and "skip_estimate=" in message


@needs_triton
def test_nothing_of_the_compile_outlives_the_scope(backend: Any) -> None:
    """The compile-time changes end with the compile, the scope's with the scope."""
    from torch._dynamo.callback import callback_handler
    from torch._inductor.codecache import PyCodeCache
    from torch._subclasses import functional_tensor

    before = (
        list(callback_handler.start_callbacks),
        torch.cuda._exchange_device,
        functional_tensor.FunctionalTensorMode.__dict__["__torch_dispatch__"],
        PyCodeCache.__dict__["load_by_key_path"],
        torch.Tensor.__dict__.get("_make_wrapper_subclass"),
    )

    def work(state: Any) -> None:
        step(*state)
        assert callback_handler.start_callbacks != before[0]  # in the scope: registered
        assert functional_tensor.FunctionalTensorMode.__dict__["__torch_dispatch__"] is before[2]

    measure(backend, mlp_training("inductor"), work)
    after = (
        list(callback_handler.start_callbacks),
        torch.cuda._exchange_device,
        functional_tensor.FunctionalTensorMode.__dict__["__torch_dispatch__"],
        PyCodeCache.__dict__["load_by_key_path"],
        torch.Tensor.__dict__.get("_make_wrapper_subclass"),
    )
    assert after == before


USER_TEST = """
import torch


def test_compiled(vram):
    model = vram.build(lambda: torch.compile(torch.nn.Linear(8, 8).to(vram.device)))
    vram.run(lambda: model(torch.empty(4, 8, device=vram.device)))
"""

NO_TRITON = """
import sys

sys.modules["triton"] = None  # `import triton` fails, as where it is not installed
"""


def test_without_triton_inductor_is_refused_with_the_install_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    if triton_installed():
        pytester.makeconftest(NO_TRITON)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly"
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "pip install 'pytest-vram[compile]'" in out
    assert "test_user.py:6" in out
    assert "--vram-backend=cuda" in out and "skip_estimate=" in out
    assert "backends/estimate/" not in out


REDUCE_OVERHEAD_TEST = """
import pytest
import torch


def build(device):
    return torch.compile(torch.nn.Linear(8, 8).to(device), mode="reduce-overhead")


def test_graphs(vram):
    model = vram.build(build, vram.device)
    vram.run(lambda: model(torch.empty(4, 8, device=vram.device)))


@pytest.mark.vram(skip_estimate="CUDA graph trees: measured on cuda")
def test_graphs_on_cuda_only(vram):
    model = vram.build(build, vram.device)
    vram.run(lambda: model(torch.empty(4, 8, device=vram.device)))
"""


@needs_triton
def test_reduce_overhead_fails_naming_the_mode_and_skip_estimate_skips_it(
    pytester: pytest.Pytester,
) -> None:
    """Through the plugin: the test fails with the mode, the user's line and the fixes,
    no traceback of the estimator's; the marked test is skipped with its reason."""
    pytester.makepyfile(test_user=REDUCE_OVERHEAD_TEST)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly", "-rs"
    )
    result.assert_outcomes(failed=1, skipped=1)
    out = result.stdout.str()
    assert 'torch.compile(mode="reduce-overhead")' in out
    assert "test_user.py:11" in out
    assert "--vram-backend=cuda" in out and "skip_estimate=" in out
    assert "CUDA graph trees: measured on cuda" in out
    assert "backends/estimate/" not in out
