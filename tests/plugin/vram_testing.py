"""Helpers for the plugin's pytester tests (imported by conftest and the test modules)."""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from pytest_vram.core.units import Tolerance, parse_tolerance

# PyYAML's C parser (the `_yaml` extension, which Python never imports twice) builds its
# events from the `yaml` package it first saw. pytester's in-process runs drop the modules
# a run imported, so a run that imported `yaml` first left the next one a new `yaml` whose
# event classes the parser does not produce (UnboundLocalError in yaml.composer, in any
# file run alone). The tests import it up front, also where the plugin is not autoloaded.
from pytest_vram.store import baselines, yaml_dialect  # noqa: F401
from pytest_vram.store.baselines import BaselineFile, Entry

HERE = Path(__file__).parent
REPO = HERE.parent.parent
SCRIPTED = "--vram-backend=vram_scripted:ScriptedBackend"
#: Sub-sessions leave out plugins they do not need: pytester drops the modules a sub-session
#: imported, so hypothesis would be imported (and assertion-rewritten) again in every run.
QUIET = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
MiB = 1024**2


def plugin_args() -> list[str]:
    """Load the plugin in sub-sessions whether or not the package is installed."""
    installed = any(ep.name == "vram" for ep in entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        # It autoloads; `-p pytest_vram.pytest_plugin.entry` on top would register the module twice.
        return []
    return ["-p", "vram" if installed else "pytest_vram.pytest_plugin.entry"]


def write_baseline(
    pytester: pytest.Pytester,
    entries: dict[str, tuple[int, int]],
    *,
    profile: str = "scripted",
    tolerance: str | None = None,
    entry_tolerances: dict[str, str] | None = None,
) -> Path:
    """Write ``baselines/<profile>.yaml`` holding ``{key: (model_bytes, peak_bytes)}``."""
    per_entry = entry_tolerances or {}
    path = baselines.profile_path(pytester.path / "baselines", profile)
    baselines.write(
        BaselineFile(
            path=path,
            profile=profile,
            entries={
                key: Entry(model, peak, tolerance=_tolerance(per_entry.get(key)))
                for key, (model, peak) in entries.items()
            },
            setup={"backend": "scripted"},
            tolerance=_tolerance(tolerance),
        )
    )
    return path


def _tolerance(text: str | None) -> Tolerance | None:
    return None if text is None else parse_tolerance(text)


def load(path: Path) -> BaselineFile:
    loaded = baselines.load(path)
    assert loaded is not None, f"{path} does not exist"
    return loaded
