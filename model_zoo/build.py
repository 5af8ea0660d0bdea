"""Building models: on the meta device first, then straight onto the target device.

The report built every model in FP32 on the CPU (12 GB of host memory for the largest) and
then ran ``.half().to("cuda")``. Here the module tree is created on the meta device in the
target dtype (no storage at all), ``to_empty`` allocates the parameters once on the target
device, and a seeded initialisation fills them there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from model_zoo.config import ModelConfig, check_phase, get_config, with_overrides
from model_zoo.model import LanguageModel


def resolve_config(preset: str | ModelConfig, **overrides: object) -> ModelConfig:
    """The config of a preset name, or the config itself, with ``overrides`` applied."""
    if isinstance(preset, ModelConfig):
        return with_overrides(preset, **overrides)
    return get_config(preset, **overrides)


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        yield from _post_order(child)
    yield module


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Re-run each module's own PyTorch initialisation, seeded, on the device it lives on.

    Children go before parents, the order of construction: ``nn.MultiheadAttention`` zeroes
    its ``out_proj`` bias after the Linear inside it initialised itself. The caller's RNG
    state is restored afterwards. Fake CUDA tensors on a CPU-only torch cannot run these
    random ops (no CUDA generator); build on ``device="meta"`` and ``to_empty`` there.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # Fork only the RNG the ops will draw from; the index is read from the materialised
    # parameter rather than asked of torch.cuda.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cpu"):
        torch.manual_seed(seed)
        for module in _post_order(model):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            elif isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()  # its own init; torch gives it no public name


def build_model(
    preset: str | ModelConfig,
    phase: str,
    *,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    curvature: float | None = None,
    feature_map: str | None = None,
) -> nn.Module:
    """Build ``phase`` of ``preset`` directly on ``device`` in ``dtype``, seeded.

    Args:
        preset: a name in :data:`model_zoo.PRESETS` or a :class:`ModelConfig`.
        phase: ``"phase7"`` or ``"phase8"``.
        device: where the parameters live. ``"meta"`` returns the uninitialised meta model
            (no storage), e.g. to ``to_empty(device="cuda")`` inside ``FakeTensorMode``.
        dtype: parameter dtype; the report used float16.
        seed: the same seed gives identical weights on the same device.
        curvature: Phase 8 curvature (default: the preset's, 0.01); it fixes the mode.
        feature_map: Phase 8 kernel feature map (default: the preset's, "elu").

    Returns:
        A :class:`model_zoo.LanguageModel` in training mode (as ``nn.Module`` builds it).
    """
    chosen = {"curvature": curvature, "feature_map": feature_map}
    config = resolve_config(preset, **{k: v for k, v in chosen.items() if v is not None})
    check_phase(phase)
    model = LanguageModel(config, phase, device="meta", dtype=dtype)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    init_weights(model, seed)
    return model


def count_parameters(preset: str | ModelConfig, phase: str, **overrides: object) -> int:
    """Exact number of parameters (buffers excluded), counted on the meta device."""
    config = resolve_config(preset, **overrides)
    model = LanguageModel(config, phase, device="meta")
    return sum(p.numel() for p in model.parameters())
