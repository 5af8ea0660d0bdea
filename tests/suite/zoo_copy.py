"""A copy of the memory suite, with regressions that can be planted in its model.

This file is not collected from here: ``test_suite_catches_plants.py`` writes it into a
pytester directory as ``test_zoo_copy.py`` and runs pytest there. It has the shape of
``tests/vram/test_zoo.py`` (one preset, ``tiny`` so that a run takes seconds; both phases;
``inference`` and ``train_step`` measured through the ``vram`` fixture), but builds the
model through :func:`build`, a wrapper around ``model_zoo.build_model`` that plants a
regression in every Phase 8 block when the environment variable ``ZOO_PLANT`` asks for one.
``model_zoo`` itself is never changed: the planted model is this wrapper's copy.

Plants (``ZOO_PLANT``):

* unset or empty: the model as ``model_zoo`` builds it;
* ``buffer``: an extra 1 MiB fp16 buffer registered in every Phase 8 block;
* ``attention``: every Phase 8 block also runs a Phase 7 attention
  (``nn.MultiheadAttention``) on the same input and adds its output, like the report's
  earlier bug where two sequence mixers ran in every layer.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import model_zoo

PRESET = "tiny"
#: Size of plant A's buffer; the outer test reads it from here to compute the expected delta.
PLANT_BUFFER_BYTES = 1024**2


class TwoAttentions(nn.Module):
    """The planted attention: the block's own attention plus a second one, outputs added."""

    def __init__(self, attn: nn.Module, extra: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + self.extra(x)


def _extra_attention(config: model_zoo.ModelConfig, dtype: torch.dtype, device: str) -> nn.Module:
    # Built the way build_model builds: meta first, then materialised and initialised on
    # the device. Random init directly on a fake CUDA device would need a CUDA generator.
    extra = model_zoo.Phase7Attention(config.d_model, config.n_heads, device="meta", dtype=dtype)
    extra.to_empty(device=device)
    model_zoo.init_weights(extra, seed=1)
    return extra


def build(preset: str, phase: str, *, device: str) -> nn.Module:
    """``model_zoo.build_model(preset, phase)`` in fp16, with ``ZOO_PLANT`` planted in Phase 8."""
    dtype = torch.float16
    model = model_zoo.build_model(preset, phase, device=device, dtype=dtype, seed=0)
    # Read at build time, not import time: the outer test changes it between runs of one
    # process, and an in-process pytester run may reuse an imported copy of this module.
    plant = os.environ.get("ZOO_PLANT", "")
    if phase != "phase8" or not plant:
        return model
    for block in model.blocks:
        if plant == "buffer":
            numel = PLANT_BUFFER_BYTES // dtype.itemsize
            block.register_buffer("planted", torch.zeros(numel, dtype=dtype, device=device))
        elif plant == "attention":
            block.attn = TwoAttentions(block.attn, _extra_attention(model.config, dtype, device))
        else:
            raise ValueError(f"ZOO_PLANT={plant!r}: expected '', 'buffer' or 'attention'")
    return model


PAIRS = [(PRESET, phase) for phase in model_zoo.PHASES]
# Ids as in tests/vram/test_zoo.py ("tiny-phase8"), so a failure names the model.
pair = pytest.mark.parametrize(("preset", "phase"), PAIRS, ids=[f"{p}-{q}" for p, q in PAIRS])


@pytest.mark.vram
@pair
def test_inference(vram, preset: str, phase: str) -> None:
    model = vram.build(build, preset, phase, device=vram.device)
    vram.run(model_zoo.inference, model, batch=1, seq_len=512)


@pytest.mark.vram
@pair
def test_train(vram, preset: str, phase: str) -> None:
    model = vram.build(build, preset, phase, device=vram.device)
    vram.run(model_zoo.train_step, model, batch=1, seq_len=512)
