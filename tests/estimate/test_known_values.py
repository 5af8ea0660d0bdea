"""Known values: reads of fake tensors whose every element is one known value are answered
exactly; everything else (a partial write, a random fill, an inexact kernel) stays unknown
and fails with the value-dependent error, as before."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends.estimate import EstimateUnsupported, transformers_support  # noqa: E402
from pytest_vram.backends.estimate.known import KnownValues  # noqa: E402
from pytest_vram.backends.estimate.transformers_support import value_dependent_hint  # noqa: E402
from pytest_vram.backends.patching import Patches  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402

CUDA = "cuda"


def unknown(read: Any) -> None:
    with pytest.raises(EstimateUnsupported, match="depends on tensor values"):
        read()


def test_factories_are_known(scope: Any) -> None:
    assert bool(torch.ones(4, device=CUDA).all())
    assert not bool(torch.zeros(4, device=CUDA).any())
    assert torch.full((2, 3), 7, device=CUDA).sum().item() == 42
    assert torch.ones(1, device=CUDA, dtype=torch.float16).item() == 1.0
    assert torch.ones(3, device=CUDA).tolist() == [1.0, 1.0, 1.0]
    assert 3 not in torch.ones(3, device=CUDA)


def test_a_partial_write_forgets_the_value(scope: Any) -> None:
    m = torch.ones(4, device=CUDA)
    m[1] = 0
    unknown(lambda: bool(m.all()))


def test_a_write_through_a_view_is_a_write_of_the_storage(scope: Any) -> None:
    m = torch.ones(4, 4, device=CUDA)
    m.view(-1)[:4].fill_(1)  # the value it already holds: still known
    assert bool(m.all())
    m[0].add_(1)
    unknown(lambda: bool(m.all()))
    unknown(lambda: bool(m[3].all()))  # the whole storage is forgotten, not just the view


def test_a_whole_write_of_a_known_value_makes_it_known(scope: Any) -> None:
    m = torch.empty(2, 3, device=CUDA)
    unknown(lambda: bool(m.all()))
    m.fill_(2)
    assert m.amax().item() == 2
    m.copy_(torch.zeros(3, device=CUDA))  # broadcast over the whole tensor
    assert not bool(m.any())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.uniform_(),
        lambda m: m.copy_(torch.randn(4, device=CUDA)),
        lambda m: torch.add(torch.randn(4, device=CUDA), 1, out=m),
        lambda m: m.resize_(8),
        lambda m: m.index_put_((torch.tensor([0], device=CUDA),), torch.tensor(5.0)),
    ],
    ids=["random-fill", "copy-of-unknown", "out", "resize", "index_put"],
)
def test_a_mutation_forgets_the_value(scope: Any, mutate: Any) -> None:
    m = torch.ones(4, device=CUDA)
    view = m[:2]
    mutate(m)
    unknown(lambda: bool(m[:4].all()))
    unknown(lambda: bool(view.all()))


def test_a_view_in_another_dtype_is_unknown(scope: Any) -> None:
    m = torch.ones(4, device=CUDA)
    assert bool(m.view(2, 2).t()[1].all())
    unknown(lambda: bool(m.view(torch.int32).all()))


def test_pointwise_results_are_computed(scope: Any) -> None:
    ids = torch.randint(0, 100, (2, 8), device=CUDA)
    mask = torch.ones_like(ids)
    assert bool(mask.bool().sum() == mask.numel())  # transformers' fast_all
    assert bool((~mask.bool()).logical_not().all())
    half = torch.full((3,), 2.5, dtype=torch.float16, device=CUDA)
    assert (half * 2 + 1).amin().item() == 6.0
    unknown(lambda: bool((ids == 1).all()))
    unknown(lambda: half.exp().amax().item())  # not exactly rounded on every GPU


def test_one_known_input_decides_or_and_where(scope: Any) -> None:
    flags = torch.randn(4, device=CUDA) > 0
    true = torch.full((4,), True, device=CUDA)
    false = torch.zeros(4, dtype=torch.bool, device=CUDA)
    assert bool((flags | true).all())
    assert not bool((flags & false).any())
    assert torch.where(true, 3, flags).amin().item() == 3
    unknown(lambda: bool((flags | false).any()))
    ints = torch.randint(0, 9, (4,), device=CUDA)
    unknown(lambda: (ints | true).amax().item())  # x | 1 of an int is not 1
    assert bool(torch.logical_or(ints, true).all())
    done = false.clone()
    done |= flags
    unknown(lambda: bool(done.any()))
    done |= true
    assert bool(done.all())


def test_operators_and_bool_under_inference_mode_are_known(scope: Any) -> None:
    """Under ``torch.inference_mode()`` ``x | y``, ``x & y`` and ``bool(t)`` reach the fake
    mode as ``__or__``, ``__and__`` and ``is_nonzero`` (elsewhere decomposed first):
    generate's stopping bookkeeping, read as outside inference mode."""
    with torch.inference_mode():
        flags = torch.randn(4, device=CUDA) > 0
        true = torch.full((4,), True, device=CUDA)
        false = torch.zeros(4, dtype=torch.bool, device=CUDA)
        unfinished = torch.ones(4, dtype=torch.long, device=CUDA)
        done = false | (false | true)
        assert bool(done.all())
        unfinished = unfinished & ~done
        assert bool(unfinished.max() == 0)
        assert bool((flags | true).all())
        assert not bool((flags & false).any())
        assert bool((true ^ false).all())
        unknown(lambda: bool((flags | false).any()))


def test_generate_under_inference_mode_runs(scope: Any) -> None:
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers)
    ids = torch.randint(0, 1000, (2, 16), device=CUDA)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=4, eos_token_id=None)
    assert out.shape == (2, 20)


def test_only_a_read_in_generation_itself_gets_the_eos_fix() -> None:
    """A read in a model's mask builder that ``generate`` called is not its stopping check."""
    site = os.path.join("site-packages", "transformers")
    generation = traceback.FrameSummary(
        os.path.join(site, "generation", "utils.py"), 383, "_has_unfinished_sequences"
    )
    masking = traceback.FrameSummary(os.path.join(site, "masking_utils.py"), 269, "sdpa_mask")
    user = traceback.FrameSummary("tests/test_x.py", 12, "test_x")
    assert "eos_token_id=None" in (value_dependent_hint([generation, user]) or "")
    assert value_dependent_hint([masking, generation, user]) is None
    assert value_dependent_hint([user]) is None


def test_reductions_of_empty_tensors(scope: Any) -> None:
    x = torch.randn(4, device=CUDA)
    assert bool(x[4:].all()) and not bool(x[4:].any())
    assert x[4:].sum().item() == 0


def test_real_tensors_moved_to_the_gpu(real: dict[str, Any], scope: Any) -> None:
    assert not isinstance(real["ones"], torch._subclasses.FakeTensor)
    assert bool((real["ones"].to(CUDA) == 1).all())
    unknown(lambda: bool(real["arange"].to(CUDA).all()))


@pytest.fixture
def real() -> dict[str, Any]:
    # real CPU tensors (e.g. a tokenizer's output): request this fixture before ``scope``
    return {"ones": torch.ones(2, 16, dtype=torch.long), "arange": torch.arange(1, 9)}


def test_a_fused_optimizer_step_forgets_the_parameters(scope: Any) -> None:
    p = torch.nn.Parameter(torch.ones(8, device=CUDA))
    p.grad = torch.ones(8, device=CUDA)
    torch.optim.SGD([p], lr=0.5, fused=True).step()
    unknown(lambda: bool((p == 1).all()))


def test_a_known_mask_is_read_by_transformers(backend: Any) -> None:
    """BERT with an all-ones mask runs as without one, as on the GPU (the mask is dropped);
    a padded mask is built into the attention."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=1000,
    )

    def peak(mask: Any) -> int:
        def work(model: Any) -> Any:
            ids = torch.randint(0, 1000, (2, 256), device=CUDA)
            with torch.no_grad():
                return model(ids, attention_mask=mask(ids)).last_hidden_state

        meter = Meter(backend)
        meter.start()
        model = meter.build(lambda: transformers.BertModel(config).to(CUDA).eval())
        meter.run(work, model)
        del model
        meter.finish()
        return meter.measurements[0].peak_bytes

    def padded(ids: Any) -> Any:
        mask = torch.ones_like(ids)
        mask[:, -8:] = 0
        return mask

    without = peak(lambda ids: None)
    ones = peak(torch.ones_like)
    assert ones == without + 2 * 256 * 8  # the int64 mask itself, nothing made from it
    assert peak(padded) > ones + 2 * 256 * 256  # a boolean (2, 1, 256, 256) mask, at least


def test_a_uniform_draw_compared_with_a_number_at_most_zero_is_known(scope: Any) -> None:
    """rand is in [0, 1): ``rand < 0.0`` is False for every element (LayerDrop's check)."""
    p = torch.rand([])  # transformers' LayerDrop draws on the CPU
    assert not bool(p < 0.0) and bool(p >= 0)
    assert not bool(p <= -0.5) and bool(p > -1)
    assert not bool(p < torch.zeros([]))  # a known tensor decides as its value
    assert not bool(torch.zeros([]) > p)  # the draw second: the mirrored comparison
    half = torch.rand(4, device=CUDA, dtype=torch.float16)
    assert bool((half >= 0).all()) and not bool((half[1:] < 0).any())  # views too
    like = torch.rand_like(half)
    assert not bool((like < 0).any())
    drawn = torch.empty(2, 3, device=CUDA).uniform_(0.5, 2.0)
    assert not bool((drawn < 0).any())
    # what no lower bound of 0 decides
    unknown(lambda: bool(p < 0.1))
    unknown(lambda: bool(p <= 0))
    unknown(lambda: bool(p < float("nan")))  # False, but no rule here says so
    unknown(lambda: bool(-p < 0))  # negated: no longer a draw
    unknown(lambda: bool((torch.empty(4, device=CUDA).uniform_(-1, 1) < -1).any()))
    unknown(lambda: bool((torch.randn(4, device=CUDA) < -100).any()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.mul_(-1),
        lambda d: d.sub_(1),
        lambda d: d[:2].fill_(-1),
        lambda d: d.copy_(torch.randn(4, device=CUDA)),
        lambda d: torch.sub(d, 2, out=d),
        lambda d: d.resize_(8),
    ],
    ids=["mul_", "sub_", "partial fill", "copy_", "out", "resize"],
)
def test_a_write_forgets_that_a_draw_is_nonnegative(scope: Any, mutate: Any) -> None:
    d = torch.rand(4, device=CUDA)
    view = d[1:]
    mutate(d)
    unknown(lambda: bool((d[:4] < 0).any()))
    unknown(lambda: bool((view < 0).any()))


def test_a_partial_draw_or_another_dtype_is_not_nonnegative(scope: Any) -> None:
    m = torch.full((4,), -1.0, device=CUDA)
    m[:2].uniform_()  # the rest of the storage still holds -1
    unknown(lambda: bool((m[:2] < 0).any()))
    d = torch.rand(4, device=CUDA)
    unknown(lambda: bool((d.view(torch.int32) < 0).any()))  # the sign bit of a float


def test_small_cpu_schedules_have_their_values(scope: Any) -> None:
    """A stochastic-depth schedule (timm, ConvNeXt, Swin-style models) is computed on the CPU
    and read with .item()/.tolist() while the model is built: exactly the real values."""
    real = torch.linspace(0, 0.1, 6).tolist()  # the expectation, computed outside the scope
    assert [x.item() for x in torch.linspace(0, 0.1, 6, device="cpu")] == real
    assert [x.tolist() for x in torch.linspace(0, 0.1, 6).split([2, 4])] == [real[:2], real[2:]]
    assert torch.arange(2, 12, 3).tolist() == [2, 5, 8, 11]
    assert (torch.arange(4) * 2 + 1).tolist() == [1, 3, 5, 7]  # propagated through ops
    assert torch.logspace(0, 2, 3).tolist() == [1.0, 10.0, 100.0]
    t = torch.arange(4)
    t[0] = 9  # a write of known values keeps them
    assert t.tolist() == [9, 1, 2, 3]
    # what stays unknown: random writes (for every alias), CUDA, and large CPU tensors
    view = t[:2]
    t.add_(torch.randint(0, 3, (4,)))
    unknown(lambda: t.tolist())
    unknown(lambda: view.tolist())
    unknown(lambda: torch.arange(4, device=CUDA)[1].item())
    unknown(lambda: torch.arange(5000)[7].item())


def test_autograd_on_the_cpu_with_small_values_stays_on_the_cpu(backend: Any) -> None:
    """CPU tensors with known values (``torch.tensor([...], requires_grad=True)``, an
    ``arange``) are differentiated on the CPU: their gradients are no CUDA bytes."""

    def work() -> Any:
        w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        (w * torch.arange(3.0)).sum().backward()
        assert w.grad is not None and w.grad.device.type == "cpu"
        assert w.grad.tolist() == [0.0, 1.0, 2.0]  # computed, as on a GPU machine's CPU
        return torch.empty(1000, device=CUDA)

    meter = Meter(backend)
    meter.start()
    meter.run(work)
    meter.finish()
    assert meter.measurements[0].peak_bytes == 4096  # the CUDA tensor alone (4000 B rounded)


def test_triangular_masks_are_known(scope: Any) -> None:
    inf = float("-inf")
    mask = torch.nn.Transformer.generate_square_subsequent_mask(35).to(CUDA)  # built on the CPU
    causal = torch.triu(torch.full((35, 35), inf, device=CUDA), diagonal=1)
    assert bool((mask == causal).all()) and not bool((mask != causal).any())
    assert bool((mask.half() == causal.half()).all())  # copies keep it, cast
    lower = torch.tril(torch.ones(4, 4, device=CUDA))
    assert bool((lower == 0).any()) and not bool((lower == 0).all())
    assert bool((torch.tril(torch.ones(3, 3, device=CUDA), -5) == 0).all())  # nothing kept
    # what stays unknown: another diagonal, a view, a broadcast, a written copy
    unknown(lambda: bool((mask == torch.triu(torch.full((35, 35), inf, device=CUDA), 2)).all()))
    unknown(lambda: bool((mask[:10, :10] == causal[:10, :10]).all()))
    unknown(lambda: bool((mask.expand(2, 35, 35) == causal).all()))
    written = mask.clone()
    written[0, 0] = 5.0
    unknown(lambda: bool((written == causal).all()))
    mask.add_(1)
    unknown(lambda: bool((mask == causal).all()))


def test_transformer_encoder_detects_a_causal_mask_as_on_the_gpu(backend: Any) -> None:
    """``nn.TransformerEncoder`` asks whether the mask is causal (``_detect_is_causal_mask``:
    ``bool((mask == causal).all())``); with the mask of PyTorch's nn.Transformer tutorial
    the answer is yes, as on a GPU, and the figure is that of ``is_causal=True`` (in fp16
    training the masked path allocates more, so a wrong answer would show)."""
    nn = torch.nn

    def peak(**causal: bool) -> int:
        def step(encoder: Any) -> None:
            x = torch.randn(4, 256, 64, device=CUDA)
            mask = nn.Transformer.generate_square_subsequent_mask(256, device=CUDA)
            with torch.autocast("cuda", dtype=torch.float16):
                encoder(x, mask, **causal).float().sum().backward()

        def build() -> Any:
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(CUDA)

        meter = Meter(backend)
        meter.start()
        meter.run(step, meter.build(build))
        meter.finish()
        return meter.measurements[0].peak_bytes

    detected = peak()
    assert detected == peak(is_causal=True) < peak(is_causal=False)


def test_layerdrop_of_transformers_runs_when_it_never_drops(backend: Any) -> None:
    """BART in training mode draws ``torch.rand([])`` per layer and compares it with
    ``layerdrop``: with 0.0 (its default) no layer is dropped, on the GPU and here; with
    0.5 which layers run is random, and the estimate says so with the value-dependent error."""
    transformers = pytest.importorskip("transformers")

    def train(layerdrop: float) -> int:
        config = transformers.BartConfig(
            vocab_size=1000,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_layerdrop=layerdrop,
            decoder_layerdrop=layerdrop,
        )

        def step(model: Any) -> None:
            ids = torch.randint(0, 1000, (2, 32), device=CUDA)
            model(input_ids=ids, labels=ids).loss.backward()

        meter = Meter(backend)
        meter.start()
        try:
            model = meter.build(lambda: transformers.BartForConditionalGeneration(config).to(CUDA))
            model.train()
            meter.run(step, model)
            del model
        finally:
            meter.finish()
        return meter.measurements[0].peak_bytes

    assert train(0.0) > 0
    with pytest.raises(EstimateUnsupported, match=r"dropout_probability < self\.layerdrop"):
        train(0.5)


def test_is_fake_tensor_answers_false_only_for_known_values(scope: Any) -> None:
    utils = pytest.importorskip("transformers.utils.import_utils")
    assert not utils.is_tracing(torch.ones(4, device=CUDA))
    assert utils.is_tracing(torch.randn(4, device=CUDA))


def test_the_transformers_patch_is_restored() -> None:
    utils = pytest.importorskip("transformers.utils.import_utils")
    original = utils.is_fake_tensor
    with Patches() as patches:
        transformers_support.install(patches, KnownValues())
        assert utils.is_fake_tensor is not original
    assert utils.is_fake_tensor is original


def test_a_module_imported_inside_the_scope_is_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_import_utils.py").write_text("def is_fake_tensor(x):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    known = KnownValues()
    with Patches() as patches:
        transformers_support.install(patches, known, module="fake_import_utils")
        import fake_import_utils

        assert fake_import_utils.is_fake_tensor(object())
        monkeypatch.setattr(known, "is_known", lambda x: True)
        assert not fake_import_utils.is_fake_tensor(object())
    assert fake_import_utils.is_fake_tensor(object())
    del sys.modules["fake_import_utils"]


def test_a_transformers_without_is_fake_tensor_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "old_import_utils.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with Patches() as patches:
        transformers_support.install(patches, KnownValues(), module="old_import_utils")
        import old_import_utils

        assert not hasattr(old_import_utils, "is_fake_tensor")
    del sys.modules["old_import_utils"]


def _gpt2(transformers: Any) -> Any:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128
    )
    return transformers.GPT2LMHeadModel(config).to(CUDA).eval()


def test_generate_without_eos_runs(scope: Any) -> None:
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers)
    ids = torch.randint(0, 1000, (2, 16), device=CUDA)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, eos_token_id=None
    )
    assert out.shape == (2, 20)


def test_generate_stopping_on_eos_names_the_fix(scope: Any) -> None:
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers)
    ids = torch.randint(0, 1000, (2, 16), device=CUDA)
    with pytest.raises(EstimateUnsupported) as info:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4)
    message = str(info.value)
    assert "generation" in message and "eos_token_id=None" in message
    assert "called from" in message and "test_known_values.py" in message


@pytest.mark.parametrize(
    "write",
    [lambda t: t[:, -3:].fill_(0), lambda t: t.mul_(2)],
    ids=["through-a-view", "in-place"],
)
def test_a_real_tensor_written_in_the_scope_is_unknown(
    real: dict[str, Any], scope: Any, write: Any
) -> None:
    mask = real["ones"]
    write(mask)  # a real tensor, but the write runs on its fake: its data stays all ones
    unknown(lambda: bool(mask.to(CUDA).all()))


def test_a_real_tensor_changed_outside_the_scope_is_unknown(backend: Any) -> None:
    mask = torch.ones(2, 16, dtype=torch.long)
    backend.begin_test()
    try:
        with backend.scope():
            assert bool(mask.to(CUDA).all())
        mask[:, -3:] = 0  # real, between two scopes of one test
        with backend.scope():
            unknown(lambda: bool(mask.to(CUDA).all()))
    finally:
        backend.end_test()


def test_an_operator_outside_aten_writes_every_tensor_it_takes(scope: Any) -> None:
    """``c10d``'s collectives write their tensors without saying so in their schemas."""
    pytest.importorskip("torch.distributed")
    m = torch.ones(4, device=CUDA)
    allreduce = torch.ops.c10d.allreduce_.default
    assert not any(a.alias_info for a in allreduce._schema.arguments[:1])
    scope._mode.known.after(allreduce, ([m[:2]], None, None, None, -1), {}, None)
    unknown(lambda: bool(m.all()))


GENERATE_TEST = """
import torch
import transformers


def gpt2():
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128
    )
    return transformers.GPT2LMHeadModel(config).to("cuda").eval()


def generate(model, **kwargs):
    ids = torch.randint(0, 1000, (2, 16), device="cuda")
    return model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, **kwargs
    )


def test_stops_on_eos(vram):
    model = vram.build(gpt2)
    vram.run(generate, model)


def test_without_eos(vram):
    model = vram.build(gpt2)
    vram.run(lambda m: generate(m, eos_token_id=None), model)
"""


def test_a_user_sees_the_generate_fix(pytester: pytest.Pytester) -> None:
    pytest.importorskip("transformers")
    pytester.makepyfile(test_user=GENERATE_TEST)
    result = pytester.runpytest_subprocess("--vram-backend=estimate", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "transformers' generation reads the generated tokens" in out
    assert "Pass eos_token_id=None to generate" in out
    assert "called from" in out and "test_user.py:14 (return model.generate(" in out
    assert "test_without_eos" in out and "FAILED test_user.py::test_without_eos" not in out


def test_an_arange_of_one_element_is_known(scope: Any) -> None:
    assert torch.arange(3, 4, device=CUDA).item() == 3
    assert torch.arange(1, device=CUDA).item() == 0
    unknown(lambda: bool(torch.arange(1, 3, device=CUDA).all()))


def test_a_resized_storage_is_forgotten(scope: Any) -> None:
    """FSDP2 frees and re-allocates storages with ``storage.resize_`` (no operator)."""
    m = torch.ones(4, device=CUDA)
    scope._tracker.resized(m.untyped_storage())
    unknown(lambda: bool(m.all()))
