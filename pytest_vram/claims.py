"""Claims for test modules: ``vram_claims = [Claim.at_most(...), Claim.grows_like(...)]``.

Relations between measured figures, judged once the session's figures are in, and
reported as items of the declaring module (see :mod:`pytest_vram.core.claims`).
"""

from __future__ import annotations

from pytest_vram.core.claims import Claim, ClaimError, Figure, activation, model, peak

__all__ = ["Claim", "ClaimError", "Figure", "activation", "model", "peak"]
