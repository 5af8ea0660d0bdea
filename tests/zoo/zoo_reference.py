"""Naive references for Phase 8 attention: one query, one key, one head at a time.

Written from the formulas in docs/zoo.md with Python scalars and explicit loops, sharing
no code with ``model_zoo.hyperbolic``, so that a test comparing the two can fail.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def feature(z: torch.Tensor, kind: str, omega: torch.Tensor | None = None) -> torch.Tensor:
    """phi(z) of one d_head vector."""
    values = z.tolist()
    if kind == "elu":  # ELU(t) + 1
        return torch.tensor([t + 1 if t > 0 else math.exp(t) for t in values], dtype=z.dtype)
    if kind == "relu":
        return torch.tensor([max(t, 0.0) for t in values], dtype=z.dtype)
    if kind == "softmax":
        exps = [math.exp(t - max(values)) for t in values]
        return torch.tensor([e / sum(exps) for e in exps], dtype=z.dtype)
    assert kind == "random_fourier" and omega is not None
    n_features = omega.shape[1]
    proj = [sum(z[i].item() * omega[i, f].item() for i in range(len(z))) for f in range(n_features)]
    values = [math.cos(p) for p in proj] + [math.sin(p) for p in proj]
    return torch.tensor(values, dtype=z.dtype) / math.sqrt(n_features)


def log0(x: torch.Tensor, c: float) -> torch.Tensor:
    """Row-wise log map at the origin, with the documented clamps."""
    out = torch.empty_like(x)
    for idx in _rows(x):
        norm = min(max(x[idx].norm().item(), 1e-6), 0.999)
        arg = min(math.sqrt(c) * norm, 1 - 1e-5)
        out[idx] = math.atanh(arg) / arg * x[idx]
    return out


def exp0(v: torch.Tensor, c: float) -> torch.Tensor:
    """Row-wise exp map at the origin, with the documented clamps."""
    out = torch.empty_like(v)
    for idx in _rows(v):
        arg = math.sqrt(c) * min(max(v[idx].norm().item(), 1e-6), 15.0)
        out[idx] = math.tanh(min(arg, 15.0)) / arg * v[idx]
    return out


def linear_head(q, k, v, kind: str, omega=None, eps: float = 1e-6) -> torch.Tensor:
    """sum_j phi(q_i).phi(k_j) v_j / max(sum_j phi(q_i).phi(k_j), eps) for q, k, v (N, D)."""
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        phi_q = feature(q[i], kind, omega)
        numer, denom = torch.zeros_like(v[0]), 0.0
        for j in range(k.shape[0]):
            score = torch.dot(phi_q, feature(k[j], kind, omega)).item()
            numer = numer + score * v[j]
            denom += score
        out[i] = numer / max(denom, eps)
    return out


def poincare(x: torch.Tensor, y: torch.Tensor, c: float) -> float:
    """Distance of two vectors, with the documented clamps."""
    sq = ((x - y) ** 2).sum().item()
    denom = max((1 - c * (x**2).sum().item()) * (1 - c * (y**2).sum().item()), 1e-6)
    return math.acosh(max(1 + 2 * c * sq / denom, 1 + 1e-6)) / math.sqrt(c)


def exact_head(q, k, v, c: float) -> torch.Tensor:
    """sum_j softmax_j(-d(q_i, k_j)) v_j for q, k, v (N, D)."""
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        scores = [-poincare(q[i], k[j], c) for j in range(k.shape[0])]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        out[i] = sum((w / total) * v[j] for j, w in enumerate(weights))
    return out


def attention_module(module, x: torch.Tensor, *, mode: str, alpha: float = 0.0) -> torch.Tensor:
    """The whole Phase 8 attention of ``module`` (its weights) on x (B, N, d_model).

    ``mode`` is "linear", "exact" or "blend" ((1 - alpha) linear + alpha exact); the test
    says which one it expects rather than asking the module.
    """
    c = max(abs(module.curvature.item()), 1e-6)
    kind = module.feature_map.kind
    omega = getattr(module.feature_map, "omega", None)
    x_tan = log0(x, c)
    q = F.linear(x_tan, module.q_proj.weight, module.q_proj.bias)
    k = F.linear(x_tan, module.k_proj.weight, module.k_proj.bias)
    v = F.linear(x_tan, module.v_proj.weight, module.v_proj.bias)
    d_head = module.d_head
    merged = torch.empty_like(q)
    for b in range(x.shape[0]):
        for h in range(module.n_heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            qh, kh, vh = q[b, :, cols], k[b, :, cols], v[b, :, cols]
            if mode == "linear":
                out = linear_head(qh, kh, vh, kind, omega, module.eps)
            elif mode == "exact":
                out = exact_head(qh, kh, vh, c)
            else:
                lin = linear_head(qh, kh, vh, kind, omega, module.eps)
                out = (1 - alpha) * lin + alpha * exact_head(qh, kh, vh, c)
            merged[b, :, cols] = out
    projected = F.linear(merged, module.out_proj.weight, module.out_proj.bias)
    return exp0(projected, c)


def _rows(t: torch.Tensor) -> itertools.product:
    """Index tuples of every vector along the last dimension."""
    return itertools.product(*(range(n) for n in t.shape[:-1]))
