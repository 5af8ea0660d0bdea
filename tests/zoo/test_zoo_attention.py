"""Phase 8 attention against naive per-query references, and its curvature modes."""

from __future__ import annotations

import pytest
import torch
import zoo_reference as ref

import model_zoo
from model_zoo import hyperbolic

B, N, D_MODEL, HEADS = 2, 5, 8, 2


def make_attention(curvature: float, feature_map: str = "elu") -> model_zoo.TangentLinearAttention:
    config = model_zoo.ModelConfig(
        d_model=D_MODEL,
        n_layers=1,
        n_heads=HEADS,
        vocab_size=16,
        curvature=curvature,
        feature_map=feature_map,
    )
    torch.manual_seed(0)
    return model_zoo.TangentLinearAttention(config, dtype=torch.float64)


def make_input() -> torch.Tensor:
    # Mostly inside the 0.999 norm clamp of log_0 so the map itself is exercised; one row
    # far outside it so the clamp is exercised too.
    x = 0.2 * torch.randn(
        B, N, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    x[0, 0] *= 20
    return x


def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("feature_map", model_zoo.FEATURE_MAPS)
def test_linear_mode_equals_naive_per_query_sums(feature_map: str) -> None:
    module = make_attention(0.01, feature_map)
    x = make_input()
    # Random Fourier features can be negative, so the normaliser can nearly cancel and the
    # quotient is ill-conditioned; summation order alone then moves it by ~1e-6 relative.
    tol = {"rtol": 1e-4, "atol": 1e-6} if feature_map == "random_fourier" else {}
    expected = ref.attention_module(module, x, mode="linear")
    torch.testing.assert_close(run(module, x), expected, **tol)


@pytest.mark.parametrize("curvature", [1.5, 4.0])
def test_exact_mode_equals_naive_softmax_over_negative_poincare_distance(curvature: float) -> None:
    module = make_attention(curvature)
    x = make_input()
    torch.testing.assert_close(run(module, x), ref.attention_module(module, x, mode="exact"))


def test_hybrid_above_half_blends_linear_and_exact_with_alpha() -> None:
    module = make_attention(0.8)
    x = make_input()
    alpha = (0.8 - 0.1) / (1.0 - 0.1)
    expected = ref.attention_module(module, x, mode="blend", alpha=alpha)
    torch.testing.assert_close(run(module, x), expected)
    # The blend is a real mixture, not one of its ends.
    assert not torch.allclose(expected, ref.attention_module(module, x, mode="linear"))
    assert not torch.allclose(expected, ref.attention_module(module, x, mode="exact"))


@pytest.mark.parametrize("curvature", [0.1, 0.3, 0.55])
def test_hybrid_at_or_below_half_is_the_linear_result(curvature: float) -> None:
    module = make_attention(curvature)
    x = make_input()
    torch.testing.assert_close(run(module, x), ref.attention_module(module, x, mode="linear"))


@pytest.mark.parametrize(
    ("curvature", "mode", "exact_computed"),
    [
        (0.01, "linear", False),
        (0.0999, "linear", False),
        (0.1, "hybrid", False),
        (0.55, "hybrid", False),  # alpha == 0.5 exactly: not > 0.5
        (0.5501, "hybrid", True),
        (1.0, "hybrid", True),
        (1.0001, "exact", True),
        (3.0, "exact", True),
    ],
)
def test_mode_follows_the_report_thresholds(
    curvature: float, mode: str, exact_computed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_exact = hyperbolic.exact_attention
    monkeypatch.setattr(hyperbolic, "exact_attention", lambda *a: calls.append(1) or real_exact(*a))
    module = make_attention(curvature)
    assert (module.mode, module.computes_exact) == (mode, exact_computed)
    run(module, make_input())
    assert len(calls) == (1 if exact_computed else 0)


def test_blend_weight_is_one_half_at_the_midpoint() -> None:
    assert model_zoo.blend_weight(0.55) == pytest.approx(0.5)
    assert model_zoo.blend_weight(0.1) == 0.0
    assert model_zoo.blend_weight(1.0) == pytest.approx(1.0)


def test_learnable_curvature_enters_the_math_but_does_not_switch_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = make_attention(0.01)
    x = make_input()
    before = run(module, x)
    monkeypatch.setattr(hyperbolic, "exact_attention", lambda *a: pytest.fail("exact ran"))
    with torch.no_grad():
        module.curvature.fill_(5.0)  # would be "exact" if the mode followed the parameter
    after = run(module, x)
    assert module.mode == "linear"
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref.attention_module(module, x, mode="linear"))


@pytest.mark.parametrize("curvature", [0.01, 0.8, 2.0])
def test_gradient_reaches_the_curvature(curvature: float) -> None:
    module = make_attention(curvature)
    module(make_input()).sum().backward()
    assert module.curvature.grad is not None
    assert module.curvature.grad.item() != 0.0


@pytest.mark.parametrize("feature_map", model_zoo.FEATURE_MAPS)
def test_each_feature_map_matches_its_definition(feature_map: str) -> None:
    module = make_attention(0.01, feature_map)
    fmap = module.feature_map
    z = torch.randn(3, module.d_head, dtype=torch.float64)
    omega = getattr(fmap, "omega", None)
    expected = torch.stack([ref.feature(row, feature_map, omega) for row in z])
    torch.testing.assert_close(fmap(z), expected)
    width = 2 * module.d_head if feature_map == "random_fourier" else module.d_head
    assert expected.shape == (3, width)


def test_log_and_exp_maps_match_the_formulas() -> None:
    x = make_input()
    c = torch.tensor(0.5, dtype=torch.float64)
    # The original adds 1e-8 to the denominators; hence rtol 1e-6 rather than exactness.
    torch.testing.assert_close(model_zoo.log_map_zero(x, c), ref.log0(x, 0.5), rtol=1e-6, atol=1e-9)
    v = 3 * x  # some rows above the |v| <= 15 clamp
    torch.testing.assert_close(model_zoo.exp_map_zero(v, c), ref.exp0(v, 0.5), rtol=1e-6, atol=1e-9)


def test_exp_map_inverts_log_map_inside_the_ball() -> None:
    x = 0.2 * torch.randn(4, 6, dtype=torch.float64)
    c = torch.tensor(0.9, dtype=torch.float64)
    roundtrip = model_zoo.exp_map_zero(model_zoo.log_map_zero(x, c), c)
    torch.testing.assert_close(roundtrip, x, rtol=1e-6, atol=1e-9)


def test_log_map_stays_finite_above_unit_curvature() -> None:
    # sqrt(c) * 0.999 > 1 for c > 1.002: artanh would be NaN without the argument clamp.
    x = 10 * torch.randn(3, 8, dtype=torch.float64)
    assert torch.isfinite(model_zoo.log_map_zero(x, torch.tensor(4.0, dtype=torch.float64))).all()


def test_poincare_distance_materialises_pairwise_and_matches_naive() -> None:
    q = 0.3 * torch.randn(2, 4, 3, dtype=torch.float64)
    k = 0.3 * torch.randn(2, 6, 3, dtype=torch.float64)
    c = torch.tensor(1.5, dtype=torch.float64)
    dist = model_zoo.poincare_distance(q, k, c)
    expected = torch.tensor(
        [
            [[ref.poincare(q[m, i], k[m, j], 1.5) for j in range(6)] for i in range(4)]
            for m in range(2)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(dist, expected)


def test_unknown_feature_map_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="elu, relu, softmax, random_fourier"):
        make_attention(0.01, "cosine")


@pytest.mark.parametrize("curvature", [0.0, -0.5])
def test_non_positive_curvature_is_rejected(curvature: float) -> None:
    with pytest.raises(ValueError, match="curvature must be > 0"):
        make_attention(curvature)
