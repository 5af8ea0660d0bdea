"""The two workloads whose peak memory the suite measures.

:func:`inference` is the report's protocol (eval, no grad, FP16 autocast, one forward).
:func:`train_step` is what the report claimed but never measured: forward with per-layer
checkpointing under FP16 autocast, next-token cross-entropy, backward.

Neither reads tensor values on the host nor calls ``torch.cuda``: tokens are made on the
model's device from ``arange``, so both run on fake tensors as well as real ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _device_and_vocab(model: nn.Module) -> tuple[torch.device, int]:
    device = next(model.parameters()).device
    return device, model.config.vocab_size


def tokens(batch: int, seq_len: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Deterministic token ids (batch, seq_len) made on ``device``; one int64 allocation."""
    return torch.arange(batch * seq_len, device=device).remainder_(vocab_size).view(batch, seq_len)


def inference(model: nn.Module, *, batch: int = 1, seq_len: int = 512) -> torch.Tensor:
    """One forward pass the way the report measured it; returns the logits (B, N, vocab).

    ``model.eval()``, ``torch.no_grad()`` and ``torch.autocast(<model device>, float16)``.
    """
    device, vocab = _device_and_vocab(model)
    model.eval()
    idx = tokens(batch, seq_len, vocab, device)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16):
        return model(idx)


def train_step(model: nn.Module, *, batch: int = 1, seq_len: int = 512) -> torch.Tensor:
    """One training step without an optimiser; returns the detached loss.

    ``model.train()`` (so each block is checkpointed), gradients cleared to ``None``, forward
    and next-token cross-entropy under FP16 autocast, ``backward()``. The gradients stay in
    ``.grad``: they are part of what a training step costs.
    """
    device, vocab = _device_and_vocab(model)
    model.train()
    model.zero_grad(set_to_none=True)
    # seq_len + 1 ids so that inputs and targets are both seq_len long and no logits slice
    # (which would copy the (B, N, vocab) tensor) is needed.
    ids = tokens(batch, seq_len + 1, vocab, device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    with torch.autocast(device_type=device.type, dtype=torch.float16):
        logits = model(inputs)  # (B, N, vocab)
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    loss.backward()
    return loss.detach()
