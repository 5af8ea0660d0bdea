"""pytest-vram: GPU-memory regressions as pytest tests.

Importing this package does not import torch; torch is loaded only when a measurement
happens, so a project that installs the plugin and runs no vram test pays nothing.
"""

from __future__ import annotations

__version__ = "0.1.0"
