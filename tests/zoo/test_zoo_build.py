"""build_model: structure per phase, dtype and device, seeded initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import model_zoo


def cpu_model(phase: str, seed: int = 0, **kwargs) -> nn.Module:
    return model_zoo.build_model(
        "tiny", phase, device="cpu", dtype=torch.float32, seed=seed, **kwargs
    )


def modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_phase8_has_no_multihead_attention() -> None:
    model = cpu_model("phase8")
    assert modules_of(model, nn.MultiheadAttention) == []
    assert len(modules_of(model, model_zoo.TangentLinearAttention)) == model.config.n_layers


def test_phase7_has_no_phase8_attention() -> None:
    model = cpu_model("phase7")
    assert modules_of(model, model_zoo.TangentLinearAttention) == []
    assert len(modules_of(model, nn.MultiheadAttention)) == model.config.n_layers


def test_same_seed_gives_identical_weights() -> None:
    first, second = cpu_model("phase8", seed=7), cpu_model("phase8", seed=7)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("phase", model_zoo.PHASES)
def test_different_seed_gives_different_random_weights(phase: str) -> None:
    first, second = cpu_model(phase, seed=0), cpu_model(phase, seed=1)
    b = second.state_dict()
    # Every randomly initialised tensor differs; constant ones (LayerNorm, zeroed biases,
    # curvature) are equal by design.
    random = [n for n in b if n.endswith("weight") and ".ln" not in n and not n.startswith("ln_f")]
    assert random
    for name in random:
        assert not torch.equal(first.state_dict()[name], b[name]), name


def test_build_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cpu_model("phase8", seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_initialisation_is_pytorchs_default() -> None:
    model = cpu_model("phase7")
    block = model.blocks[0]
    assert torch.equal(block.ln1.weight, torch.ones_like(block.ln1.weight))
    assert torch.equal(block.ln1.bias, torch.zeros_like(block.ln1.bias))
    # MultiheadAttention zeroes both biases after its out_proj Linear initialised itself;
    # initialising parents before children would leave a random out_proj bias.
    assert not block.attn.in_proj_bias.any()
    assert not block.attn.out_proj.bias.any()
    # Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1 / model.config.d_model**0.5
    weight = block.ffn.down_in.weight
    assert weight.abs().max() <= bound and weight.abs().max() > bound / 2


def test_phase8_curvature_is_initialised_to_the_configured_value() -> None:
    model = cpu_model("phase8", curvature=0.8)
    for attn in modules_of(model, model_zoo.TangentLinearAttention):
        assert attn.curvature.item() == pytest.approx(0.8)
        assert (attn.mode, attn.computes_exact) == ("hybrid", True)


@pytest.mark.parametrize("feature_map", model_zoo.FEATURE_MAPS)
def test_feature_map_argument_reaches_every_layer(feature_map: str) -> None:
    model = cpu_model("phase8", feature_map=feature_map)
    kinds = {a.feature_map.kind for a in modules_of(model, model_zoo.TangentLinearAttention)}
    assert kinds == {feature_map}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("phase", model_zoo.PHASES)
def test_parameters_are_made_in_the_target_dtype_on_the_target_device(phase, dtype) -> None:
    model = model_zoo.build_model(
        "tiny", phase, device="cpu", dtype=dtype, feature_map="random_fourier"
    )
    tensors = list(model.parameters()) + list(model.buffers())
    assert {(t.device.type, t.dtype) for t in tensors} == {("cpu", dtype)}
    assert all(torch.isfinite(t).all() for t in tensors)


def test_a_config_can_be_built_directly() -> None:
    config = model_zoo.ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64)
    model = model_zoo.build_model(config, "phase8", device="cpu", dtype=torch.float32)
    assert isinstance(model, model_zoo.LanguageModel)
    assert model.config == config
    assert model_zoo.count_parameters(config, "phase8") == sum(
        p.numel() for p in model.parameters()
    )


def test_meta_device_returns_an_unmaterialised_model() -> None:
    model = model_zoo.build_model("tiny", "phase8", device="meta")
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")  # the fake-tensor path: materialise where you like
    assert {p.device.type for p in model.parameters()} == {"cpu"}
