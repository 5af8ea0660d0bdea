"""A plain PyTorch model: an MLP classifier, its inference and one AdamW training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def build_mlp(device: str) -> nn.Module:
    return nn.Sequential(
        nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 10)
    ).to(device)


@pytest.mark.vram(budget="512MiB")
def test_mlp_inference(vram):
    model = vram.build(build_mlp, vram.device)  # what the build leaves: the model bytes
    x = vram.build(torch.randn, 256, 1024, device=vram.device)

    @torch.no_grad()
    def forward():
        return model(x)

    vram.run(forward)  # the workload's peak


def test_mlp_train_step(vram):
    def setup():
        model = build_mlp(vram.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(256, 1024, device=vram.device)
        y = torch.randint(0, 10, (256,), device=vram.device)
        return model, optimizer, x, y

    model, optimizer, x, y = vram.build(setup)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    vram.run(step, name="first")  # creates AdamW's state
    vram.run(step, name="steady")  # the state is part of the model bytes now
