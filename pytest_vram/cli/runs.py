"""Reading a run: a ``--vram-json`` file, a baseline file (``baselines/estimate.yaml``), or
a baseline file as committed on a branch (``git:main:baselines/estimate.yaml``, read with
``git show``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from pytest_vram.core.runs import Run


class RunError(ValueError):
    """A run file that cannot be read; the message names it and the fix."""


def load_run(spec: str) -> Run:
    """A ``--vram-json`` file, a baseline YAML file, or ``git:REF:PATH``."""
    if spec.startswith("git:"):
        ref, _, path = spec[4:].partition(":")
        if not ref or not path:
            raise RunError(f"{spec}: expected git:REF:PATH, e.g. git:main:baselines/estimate.yaml")
        try:
            text = subprocess.run(
                ["git", "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RunError(f"{spec}: git show {ref}:{path} failed: {detail.strip()}") from None
        return _parse(spec, text, yaml_file=not path.endswith(".json"))
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise RunError(f"{spec}: cannot read it ({exc.strerror})") from None
    return _parse(spec, text, yaml_file=not spec.endswith(".json"))


def _parse(label: str, text: str, yaml_file: bool) -> Run:
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RunError(f"{label}: not valid {'YAML' if yaml_file else 'JSON'}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("measurements"), list):
        measurements = {m["key"]: m for m in data["measurements"] if "key" in m}
        return Run(label, measurements, data.get("run") or {})
    if isinstance(data, dict) and isinstance(data.get("entries"), dict):
        entries = {k: {"key": k, **v} for k, v in data["entries"].items() if isinstance(v, dict)}
        return Run(label, entries, {"recorded_with": data.get("recorded_with", {})})
    raise RunError(
        f"{label}: neither a --vram-json file (with 'measurements') nor a baseline file "
        f"(with 'entries')"
    )
