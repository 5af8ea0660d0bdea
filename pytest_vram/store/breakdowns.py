"""The stored breakdowns (``baselines/breakdowns/<profile>.yaml``): each measurement's live
bytes at its peak by module and category, written by ``--vram-update`` and compared with in
failure messages and the PR comment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pytest_vram.core.breakdown import collapse

#: Folder of the stored breakdowns, inside the baselines folder: apart from the
#: ``<profile>.yaml`` files, so that whatever reads every ``baselines/*.yaml`` as a
#: baseline file does not meet them.
STORE_DIR = "breakdowns"


def path_for(baseline: Path) -> Path:
    """``baselines/estimate.yaml`` -> ``baselines/breakdowns/estimate.yaml``."""
    return baseline.parent / STORE_DIR / baseline.name


def load(path: Path) -> dict[str, dict[str, int]]:
    """The stored breakdowns by baseline key; an unreadable file counts as empty."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {
        str(k): {str(g): int(n) for g, n in v.items() if isinstance(n, int)}
        for k, v in entries.items()
        if isinstance(v, dict)
    }


#: Groups stored per entry (each module of all layers together, so the count does not grow
#: with depth); a group not stored reads as new in a comparison.
STORED_GROUPS = 80


def compact(breakdown: dict[str, Any]) -> dict[str, int]:
    rows = sorted(collapse(breakdown).items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(sorted(rows[:STORED_GROUPS]))


def write(
    path: Path, updates: dict[str, dict[str, Any]], remove: list[str] | tuple[str, ...] = ()
) -> bool:
    """Merge ``key -> breakdown`` into the store at ``path`` and drop the ``remove`` keys
    (pruned from the baseline); True if the file changed."""
    entries = load(path)
    for key, breakdown in updates.items():
        entries[key] = compact(breakdown)
    for key in remove:
        entries.pop(key, None)
    if not entries and not path.exists():
        return False
    text = yaml.safe_dump(
        {
            "about": "live bytes at each measurement's peak by module and category, "
            "written by pytest --vram-update; compared with in failure messages",
            "entries": dict(sorted(entries.items())),
        },
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    old = path.read_text(encoding="utf-8") if path.exists() else None
    if old == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True
