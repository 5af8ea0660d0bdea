"""Scripts that choose their device when the module is imported, as most tutorials do.

``DEVICE = "cuda" if torch.cuda.is_available() else "cpu"`` at the top of a module runs
when pytest imports it, before any test. On a GPU it picks the GPU; on the estimator it
picks the card only with ``--vram-emulate=session`` (docs/usage.md, "The module-level
device idiom"), and without it every test here fails, naming that line and both fixes.
The project's suite keeps the default, so this file is not collected by ``pytest -m
vram`` (its name does not start with ``test_``): ``tests/estimate/
test_module_device_scripts.py`` runs it both ways, and ``benchmarks/ordinary_accuracy.py``
measures it on both backends.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
device = torch.device(DEVICE)


def test_module_device_train_epoch(vram):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    model = model.to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = TensorDataset(torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    loader = DataLoader(data, batch_size=32, shuffle=True, pin_memory=True)

    def train():
        model.train()
        for x, y in loader:
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    vram.run(train)


def test_module_device_amp_step(vram):
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(DEVICE)
    x = torch.randn(64, 512, device=device)

    def step():
        with torch.autocast(device_type=DEVICE, dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()

    vram.run(step)


def test_module_device_inference(vram):
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))
    model.to(device).eval()

    @torch.inference_mode()
    def predict(batch):
        return model(batch.to(device)).argmax(-1)

    vram.run(predict, torch.randn(256, 1024))
