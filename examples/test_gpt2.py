"""A transformers model built from its config (no download): GPT-2 small's shape."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def build_gpt2(device: str, dtype: torch.dtype) -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=4)  # GPT-2 small's width, four layers
    return transformers.GPT2LMHeadModel(config).to(device=device, dtype=dtype)


@pytest.mark.vram(tolerance="0.1%")
def test_gpt2_inference(vram):
    model = vram.build(build_gpt2, vram.device, torch.float16).eval()
    ids = vram.build(torch.randint, 0, 50257, (4, 512), device=vram.device)

    @torch.no_grad()
    def forward():
        return model(input_ids=ids).logits

    vram.run(forward)


def test_gpt2_train_step(vram):
    model = vram.build(build_gpt2, vram.device, torch.float32)
    ids = vram.build(torch.randint, 0, 50257, (2, 256), device=vram.device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()

    vram.run(step)
