"""The report's language model, one class for both phases.

Token ids -> low-rank embedding -> n_layers pre-norm blocks -> final LayerNorm -> untied
lm_head. Phase 7 and Phase 8 differ only in the attention module of each block; every
module takes ``device``/``dtype`` factory arguments so the whole model can be built on the
meta device in the target dtype and materialised later (see :mod:`model_zoo.build`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from model_zoo.config import ModelConfig, check_phase
from model_zoo.hyperbolic import TangentLinearAttention

Device = torch.device | str | None


class Phase7Attention(nn.MultiheadAttention):
    """Phase 7 self-attention: ``nn.MultiheadAttention`` called the way the report called it.

    ``(B, N, d_model) -> (B, N, d_model)`` with ``need_weights=False`` (the default ``True``
    would materialise a (B, H, N, N) weight matrix) and no attention mask: the report's
    protocol used none, so neither phase is causal. Subclassing keeps the parameter names of
    the original (``attn.in_proj_weight``, ``attn.out_proj.weight``, ...).
    """

    def __init__(
        self, d_model: int, n_heads: int, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(d_model, n_heads, batch_first=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, _ = super().forward(x, x, x, need_weights=False)
        return out


class LowRankEmbedding(nn.Module):
    """``Embedding(vocab, d/4)`` then ``Linear(d/4, d)``: the report's "75% compression"."""

    def __init__(
        self, config: ModelConfig, *, device: Device = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(config.vocab_size, config.embed_rank, **factory)
        self.proj = nn.Linear(config.embed_rank, config.d_model, **factory)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(idx))  # (B, N) -> (B, N, d/4) -> (B, N, d)


class LowRankFFN(nn.Module):
    """``d -> d/8 -> 4d -> GELU -> d/8 -> d``: the report's "87.5% compression" FFN."""

    def __init__(
        self, config: ModelConfig, *, device: Device = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        d, r, h = config.d_model, config.ffn_rank, config.ffn_hidden
        self.down_in = nn.Linear(d, r, **factory)
        self.up_in = nn.Linear(r, h, **factory)
        self.act = nn.GELU()
        self.down_out = nn.Linear(h, r, **factory)
        self.up_out = nn.Linear(r, d, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up_in(self.down_in(x))  # (B, N, d) -> (B, N, d/8) -> (B, N, 4d)
        x = self.act(x)
        return self.up_out(self.down_out(x))  # (B, N, 4d) -> (B, N, d/8) -> (B, N, d)


def make_attention(
    config: ModelConfig, phase: str, *, device: Device = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """The attention module of ``phase``; there is no fallback from one phase to the other."""
    if check_phase(phase) == "phase7":
        return Phase7Attention(config.d_model, config.n_heads, device=device, dtype=dtype)
    return TangentLinearAttention(config, device=device, dtype=dtype)


class Block(nn.Module):
    """Pre-norm residual layer: ``x + attn(LN1(x))``, then ``x + ffn(LN2(x))``."""

    def __init__(
        self,
        config: ModelConfig,
        phase: str,
        *,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.ln1 = nn.LayerNorm(config.d_model, **factory)
        self.attn = make_attention(config, phase, **factory)
        self.ln2 = nn.LayerNorm(config.d_model, **factory)
        self.ffn = LowRankFFN(config, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class LanguageModel(nn.Module):
    """Token ids (B, N) -> logits (B, N, vocab) for ``phase`` in :data:`model_zoo.PHASES`.

    In training mode each block runs under non-reentrant activation checkpointing when
    ``config.gradient_checkpointing`` is set (the report's setting), so only block inputs
    are kept for backward.
    """

    def __init__(
        self,
        config: ModelConfig,
        phase: str,
        *,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.phase = check_phase(phase)
        self.embedding = LowRankEmbedding(config, **factory)
        self.blocks = nn.ModuleList(Block(config, phase, **factory) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, **factory)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, **factory)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embedding(idx)  # (B, N, d)
        use_checkpoint = self.training and self.config.gradient_checkpointing
        for block in self.blocks:
            if use_checkpoint:
                # The model has no randomness, so there is no RNG state to replay; not saving
                # it also spares a device RNG query that fails under fake CUDA tensors.
                x = checkpoint(block, x, use_reentrant=False, preserve_rng_state=False)
            else:
                x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, N, vocab)
