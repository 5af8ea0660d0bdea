"""``python -m pytest_vram record-json RUN.json``: turn a run's ``--vram-json`` into baselines.

A CI job on a GPU writes ``--vram-json``; anyone can then record its figures into
``baselines/<profile>.yaml`` without that GPU. Each measurement goes to the file of its own
profile, exactly as ``--vram-update`` would have written it on that machine (same merge:
other entries and per-entry tolerances kept, a file whose entries do not change stays
byte-identical). ``--new-only`` records only keys the file lacks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pytest_vram.render.json_report import JSON_VERSION
from pytest_vram.store import baselines
from pytest_vram.store.baselines import BaselineError, Entry


class RecordError(Exception):
    """The JSON file cannot be turned into baseline entries; the message says why."""


def measurements(path: Path) -> list[dict[str, Any]]:
    """The measurements of a ``--vram-json`` file, checked for the fields a baseline needs."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: cannot read a --vram-json document: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != JSON_VERSION:
        raise RecordError(
            f"{path}: not a --vram-json document of version {JSON_VERSION} (written by "
            f"`pytest --vram-json=PATH`)"
        )
    found = document.get("measurements", [])
    for i, m in enumerate(found):
        for field in ("key", "profile", "model_bytes", "peak_bytes", "context"):
            if field not in m:
                raise RecordError(f"{path}: measurements[{i}] has no {field!r}")
    return found


def record(
    path: Path, directory: Path, *, new_only: bool = False
) -> dict[str, baselines.UpdateResult]:
    """Merge the measurements of ``path`` into ``directory``; return the result per profile."""
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for m in measurements(path):
        by_profile.setdefault(m["profile"], []).append(m)
    results = {}
    for profile, found in sorted(by_profile.items()):
        target = baselines.profile_path(directory, profile)
        existing = baselines.load(target)
        entries = existing.entries if existing else {}
        measured = {
            m["key"]: Entry(m["model_bytes"], m["peak_bytes"], params=m.get("params"))
            for m in found
            if not (new_only and m["key"] in entries)
        }
        if new_only and existing is not None:
            setup = existing.setup
        else:  # "context": the setup's key in --vram-json
            setup = {str(k): str(v) for k, v in found[0]["context"].items()}
        results[profile] = baselines.update(target, profile, measured, setup=setup)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_vram record-json",
        description="Record the measurements of a --vram-json file as baseline entries.",
    )
    parser.add_argument("json", type=Path, help="a file written by `pytest --vram-json=PATH`")
    parser.add_argument(
        "--baselines", type=Path, default=Path("baselines"), help="baseline directory"
    )
    parser.add_argument(
        "--new-only", action="store_true", help="record only keys the baseline file lacks"
    )
    args = parser.parse_args(argv)
    try:
        results = record(args.json, args.baselines, new_only=args.new_only)
    except (RecordError, BaselineError) as exc:
        print(f"error: {exc} (no baseline file was changed)")
        return 2
    if not results:
        print(f"{args.json}: no measurements; nothing recorded")
    for profile, result in results.items():
        changes = len(result.added), len(result.changed), len(result.unchanged)
        state = "written" if result.written else "unchanged"
        print(
            f"{result.path} ({profile}): {state}; {changes[0]} added, {changes[1]} changed, "
            f"{changes[2]} unchanged"
        )
    return 0
