"""The models of the Phase 7 / Phase 8 report, rebuilt to be measured.

Usage::

    import model_zoo
    model = model_zoo.build_model("maximum", "phase8", device="cuda")
    logits = model_zoo.inference(model)      # the report's protocol
    loss = model_zoo.train_step(model)       # forward + backward with checkpointing

See docs/zoo.md for the presets and the choices made.
"""

from __future__ import annotations

from model_zoo.build import build_model, count_parameters, init_weights
from model_zoo.config import (
    FEATURE_MAPS,
    PHASES,
    PRESETS,
    REAL_PRESETS,
    ModelConfig,
    get_config,
)
from model_zoo.hyperbolic import (
    MODES,
    KernelFeatureMap,
    TangentLinearAttention,
    blend_weight,
    computes_exact,
    curvature_mode,
    exact_attention,
    exp_map_zero,
    linear_attention,
    log_map_zero,
    poincare_distance,
)
from model_zoo.model import Block, LanguageModel, LowRankEmbedding, LowRankFFN, Phase7Attention
from model_zoo.workloads import inference, tokens, train_step

__all__ = [
    "FEATURE_MAPS",
    "MODES",
    "PHASES",
    "PRESETS",
    "REAL_PRESETS",
    "Block",
    "KernelFeatureMap",
    "LanguageModel",
    "LowRankEmbedding",
    "LowRankFFN",
    "ModelConfig",
    "Phase7Attention",
    "TangentLinearAttention",
    "blend_weight",
    "build_model",
    "computes_exact",
    "count_parameters",
    "curvature_mode",
    "exact_attention",
    "exp_map_zero",
    "get_config",
    "inference",
    "init_weights",
    "linear_attention",
    "log_map_zero",
    "poincare_distance",
    "tokens",
    "train_step",
]
