"""Model configuration and the size presets of the Phase 7 / Phase 8 report.

A preset is a plain :class:`ModelConfig`; :func:`get_config` looks one up by name and
applies overrides. Real presets reproduce the report's four sizes; ``tiny`` and ``small``
exist for tests and sequence-length studies and are not in the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FEATURE_MAPS = ("elu", "relu", "softmax", "random_fourier")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and attention settings of one language model (both phases share it).

    The low-rank factors are fixed by the report: the embedding goes through ``d_model / 4``
    and every FFN through ``d_model / 8`` on the way to and from its ``4 * d_model`` hidden
    width. The Phase 8 fields are ignored by Phase 7.
    """

    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int = 50257
    # Phase 8 (tangent-space linear attention). The report forces c = 0.01 ("linear" mode).
    curvature: float = 0.01
    feature_map: str = "elu"
    # Random-Fourier feature count; None means d_head, which is what the report passed.
    num_features: int | None = None
    low_curvature_threshold: float = 0.1
    high_curvature_threshold: float = 1.0
    eps: float = 1e-6
    # The report checkpoints every layer whenever the model is in training mode.
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        # d_model / 8 must be whole for the low-rank FFN, d_model / n_heads for the heads.
        if self.d_model <= 0 or self.d_model % 8:
            raise ValueError(f"d_model must be a positive multiple of 8, got {self.d_model}")
        if self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_layers <= 0 or self.vocab_size <= 0:
            raise ValueError("n_layers and vocab_size must be positive")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"unknown feature_map {self.feature_map!r}; valid: {', '.join(FEATURE_MAPS)}"
            )
        # A Poincare ball needs c > 0; the mode is chosen from this value at construction.
        if not self.curvature > 0:
            raise ValueError(f"curvature must be > 0, got {self.curvature}")
        if not 0 < self.low_curvature_threshold < self.high_curvature_threshold:
            raise ValueError("need 0 < low_curvature_threshold < high_curvature_threshold")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embed_rank(self) -> int:
        return self.d_model // 4

    @property
    def ffn_rank(self) -> int:
        return self.d_model // 8

    @property
    def ffn_hidden(self) -> int:
        return 4 * self.d_model


PRESETS: dict[str, ModelConfig] = {
    # The report's four sizes. Its labels were wrong; the parameter counts (1.19B, 1.54B,
    # 2.57B, 3.08B) identify them.
    "standard": ModelConfig(d_model=2048, n_layers=48, n_heads=16),
    "deep": ModelConfig(d_model=2048, n_layers=64, n_heads=16),
    "large": ModelConfig(d_model=3072, n_layers=48, n_heads=24),
    "maximum": ModelConfig(d_model=4096, n_layers=32, n_heads=32),
    # Not in the report. `tiny` runs forward and backward on a CPU in milliseconds.
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=512),
    # Sequence-length studies: d_head 64 like real models, and a vocabulary small enough
    # that the logits do not hide what attention costs (the report's inference flaw).
    "small": ModelConfig(d_model=256, n_layers=2, n_heads=4, vocab_size=4096),
}

REAL_PRESETS = ("standard", "deep", "large", "maximum")
PHASES = ("phase7", "phase8")


def get_config(preset: str, **overrides: object) -> ModelConfig:
    """Return the named preset, with any :class:`ModelConfig` fields replaced.

    Raises ``ValueError`` naming the valid presets (or fields) when a name is unknown.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return with_overrides(PRESETS[preset], **overrides)


def with_overrides(config: ModelConfig, **overrides: object) -> ModelConfig:
    """``config`` with fields replaced; an unknown field name raises ``ValueError``."""
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown ModelConfig field(s) {', '.join(unknown)}; valid: {', '.join(fields)}"
        )
    return dataclasses.replace(config, **overrides) if overrides else config


def check_phase(phase: str) -> str:
    """Return ``phase`` if it is one of :data:`PHASES`, else raise ``ValueError`` listing them."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)}")
    return phase
