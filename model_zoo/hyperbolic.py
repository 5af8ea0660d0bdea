"""Phase 8 attention: tangent-space linear attention on the Poincare ball.

The block input is mapped to the tangent space at the origin (``log_0``), projected to
per-head queries, keys and values, attended to with a kernel feature map in O(N), projected
out and mapped back onto the ball (``exp_0``). The curvature picks one of three modes:

* ``c < 0.1``  "linear": only the O(N) kernel attention (what the report measured);
* ``0.1 <= c <= 1.0`` "hybrid": the linear result, blended with the exact one when the blend
  weight ``alpha = (c - 0.1) / (1.0 - 0.1)`` exceeds 0.5 (the exact one is computed only then);
* ``c > 1.0``  "exact": softmax over negative Poincare distances, O(N^2). It materialises a
  ``(B*H, N, N, d_head)`` difference tensor on purpose: that is what made the original
  expensive, and the memory suite must be able to show it.

Nothing here reads a tensor value on the host, so the module runs under ``FakeTensorMode``.
The mode is therefore fixed at construction from the configured (Python float) curvature;
the learnable ``curvature`` parameter enters the maps and the distances but never switches
modes. (The original read it with ``.item()`` in every forward.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_zoo.config import FEATURE_MAPS, ModelConfig

MODES = ("linear", "hybrid", "exact")

# Norm clamps of the original maps: |x| in [1e-6, 0.999] for log_0, |v| in [1e-6, 15] for exp_0.
_MIN_NORM = 1e-6
_MAX_BALL_NORM = 0.999
_MAX_TANGENT_NORM = 15.0
# artanh is finite only below 1. For c <= 1 the norm clamp already guarantees that; for
# c > 1 the original returned NaN, and this keeps the exact mode finite instead.
_MAX_ARTANH_ARG = 1.0 - 1e-5
# Guards a division by sqrt(c)|x| in both maps, as the original did.
_DIV_EPS = 1e-8


def curvature_mode(curvature: float, low: float = 0.1, high: float = 1.0) -> str:
    """Return the mode for a configured curvature: "linear", "hybrid" or "exact"."""
    if curvature < low:
        return "linear"
    if curvature > high:
        return "exact"
    return "hybrid"


def blend_weight(curvature: float, low: float = 0.1, high: float = 1.0) -> float:
    """Weight ``alpha`` of the exact result in hybrid mode, clamped to [0, 1]."""
    return min(1.0, max(0.0, (curvature - low) / (high - low)))


def computes_exact(curvature: float, low: float = 0.1, high: float = 1.0) -> bool:
    """Whether a module with this curvature computes the O(N^2) exact attention at all."""
    mode = curvature_mode(curvature, low, high)
    if mode != "hybrid":
        return mode == "exact"
    # alpha > 0.5 is the same as c > (low + high) / 2, and comparing curvatures directly
    # keeps the boundary exact: (0.55 - 0.1) / 0.9 is 0.5000000000000001 in floating point.
    return curvature > (low + high) / 2


def log_map_zero(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``log_0(x) = artanh(sqrt(c)|x|) / (sqrt(c)|x|) * x`` over the last dimension."""
    sqrt_c = c.sqrt()
    norm = x.norm(dim=-1, keepdim=True).clamp(min=_MIN_NORM, max=_MAX_BALL_NORM)  # (..., 1)
    scaled = (sqrt_c * norm).clamp(max=_MAX_ARTANH_ARG)
    return torch.atanh(scaled) / (scaled + _DIV_EPS) * x


def exp_map_zero(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``exp_0(v) = tanh(sqrt(c)|v|) / (sqrt(c)|v|) * v`` over the last dimension."""
    sqrt_c = c.sqrt()
    norm = v.norm(dim=-1, keepdim=True).clamp(min=_MIN_NORM, max=_MAX_TANGENT_NORM)  # (..., 1)
    scaled = sqrt_c * norm
    return torch.tanh(scaled.clamp(max=_MAX_TANGENT_NORM)) / (scaled + _DIV_EPS) * v


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Pairwise Poincare distances of ``x`` (M, N, D) and ``y`` (M, K, D), shape (M, N, K).

    ``d(x, y) = arcosh(1 + 2c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))) / sqrt(c)``, with the
    denominator clamped at 1e-6 and the arcosh argument at 1 + 1e-6. Deliberately the
    straightforward way: the broadcast difference is a full (M, N, K, D) tensor.
    """
    diff = x.unsqueeze(2) - y.unsqueeze(1)  # (M, N, K, D)
    sq_dist = diff.pow(2).sum(dim=-1)  # (M, N, K)
    x_sq = x.pow(2).sum(dim=-1, keepdim=True)  # (M, N, 1)
    y_sq = y.pow(2).sum(dim=-1).unsqueeze(1)  # (M, 1, K)
    denom = ((1 - c * x_sq) * (1 - c * y_sq)).clamp(min=1e-6)
    arg = (1 + 2 * c * sq_dist / denom).clamp(min=1.0 + 1e-6)
    return torch.acosh(arg) / c.sqrt()


def linear_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))`` for features (B, H, N, F), v (B, H, N, D).

    Non-causal, like the report's attention: every position sees every other one.
    """
    kv = torch.einsum("bhnd,bhnf->bhfd", v, phi_k)  # (B, H, F, D): O(N) in memory
    numer = torch.einsum("bhnf,bhfd->bhnd", phi_q, kv)  # (B, H, N, D)
    k_sum = phi_k.sum(dim=2)  # (B, H, F)
    denom = torch.einsum("bhnf,bhf->bhn", phi_q, k_sum).clamp(min=eps)  # (B, H, N)
    return numer / denom.unsqueeze(-1)


def exact_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Softmax over negative Poincare distances of q (B, H, N, D) to k; O(N^2 D) memory."""
    B, H, N, D = q.shape
    dist = poincare_distance(q.reshape(B * H, N, D), k.reshape(B * H, N, D), c)
    weights = F.softmax(-dist.view(B, H, N, N), dim=-1)  # (B, H, N, N)
    return torch.einsum("bhij,bhjd->bhid", weights, v)  # (B, H, N, D)


class KernelFeatureMap(nn.Module):
    """Positive feature map phi of linear attention, applied per head to the last dimension.

    "elu": ELU(z) + 1 (the report's); "relu": ReLU(z); "softmax": softmax over features;
    "random_fourier": [cos(z W), sin(z W)] / sqrt(F) with a fixed Gaussian W (d_head, F),
    kept as a buffer, so its output has 2F features.
    """

    def __init__(
        self,
        kind: str,
        d_head: int,
        num_features: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kind not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {kind!r}; valid: {', '.join(FEATURE_MAPS)}")
        self.kind = kind
        self.d_head = d_head
        self.num_features = num_features
        if kind == "random_fourier":
            self.register_buffer(
                "omega", torch.empty(d_head, num_features, device=device, dtype=dtype)
            )
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "random_fourier":
            with torch.no_grad():
                self.omega.normal_().div_(math.sqrt(self.d_head))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "elu":
            return F.elu(z) + 1
        if self.kind == "relu":
            return F.relu(z)
        if self.kind == "softmax":
            return F.softmax(z, dim=-1)
        proj = torch.matmul(z, self.omega)  # (..., F)
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1) / math.sqrt(self.num_features)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class TangentLinearAttention(nn.Module):
    """Phase 8 self-attention: (B, N, d_model) -> (B, N, d_model), a drop-in for Phase 7's.

    ``mode``, ``alpha`` and ``computes_exact`` are fixed from ``config.curvature`` here; the
    ``curvature`` parameter (initialised to it) is used in the maps and distances only.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d = config.d_model
        factory = {"device": device, "dtype": dtype}
        self.n_heads = config.n_heads
        self.d_head = config.d_head
        self.eps = config.eps
        self.initial_curvature = config.curvature
        low, high = config.low_curvature_threshold, config.high_curvature_threshold
        self.mode = curvature_mode(config.curvature, low, high)
        self.alpha = {"linear": 0.0, "exact": 1.0}.get(
            self.mode, blend_weight(config.curvature, low, high)
        )
        self.computes_exact = computes_exact(config.curvature, low, high)

        self.curvature = nn.Parameter(torch.empty((), **factory))
        self.q_proj = nn.Linear(d, d, **factory)
        self.k_proj = nn.Linear(d, d, **factory)
        self.v_proj = nn.Linear(d, d, **factory)
        self.out_proj = nn.Linear(d, d, **factory)
        self.feature_map = KernelFeatureMap(
            config.feature_map, self.d_head, config.num_features or self.d_head, **factory
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set ``curvature`` to the configured value (the projections reset themselves)."""
        with torch.no_grad():
            self.curvature.fill_(self.initial_curvature)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, N, d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # abs/clamp keep a trained curvature on a valid ball without a host-side check.
        c = self.curvature.abs().clamp(min=1e-6)
        x_tan = log_map_zero(x, c)
        q = self._heads(self.q_proj(x_tan))
        k = self._heads(self.k_proj(x_tan))
        v = self._heads(self.v_proj(x_tan))

        if self.mode == "exact":
            out = exact_attention(q, k, v, c)
        else:
            out = linear_attention(self.feature_map(q), self.feature_map(k), v, self.eps)
            if self.computes_exact:  # hybrid with alpha > 0.5
                # Exact first, then the blend: the original's order, hence its peak.
                exact = exact_attention(q, k, v, c)
                out = (1 - self.alpha) * out + self.alpha * exact

        out = out.transpose(1, 2).reshape(B, N, D)  # (B, N, d_model)
        return exp_map_zero(self.out_proj(out), c)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, curvature={self.initial_curvature}, alpha={self.alpha:.3f}, "
            f"computes_exact={self.computes_exact}"
        )
