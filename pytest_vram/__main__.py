"""``python -m pytest_vram``: the command line (:mod:`pytest_vram.cli.main`)."""

from __future__ import annotations

import sys

from pytest_vram.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
