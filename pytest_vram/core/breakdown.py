"""A breakdown: what was live at a workload's peak, by module and category.

A breakdown is plain JSON-able data (``Collector.breakdown`` in
:mod:`pytest_vram.measure.attribution` makes it): ``{"peak_bytes", "groups": [[module,
category, bytes], ...], "patterns": [...], "sites": [...]}``. The functions here read it,
so that the controller of an xdist run, the stored breakdowns and the PR comment can work
on it without the collector.
"""

from __future__ import annotations

import re
from typing import Any

_INDEX = re.compile(r"\.\d+(?=\.|$)")


def pattern(module: str) -> str:
    """``blocks.3.attn`` -> ``blocks.*.attn``: the same module of every layer in one group."""
    return _INDEX.sub(".*", module)


def collapse(breakdown: dict[str, Any]) -> dict[str, int]:
    """``"module pattern (category)" -> bytes``: every layer's copy of a module in one row."""
    out: dict[str, int] = {}
    for module, category, nbytes in breakdown.get("patterns") or breakdown.get("groups", []):
        label = f"{pattern(module)} ({category})"
        out[label] = out.get(label, 0) + nbytes
    return out


def by_category(breakdown: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _module, category, nbytes in breakdown.get("groups", []):
        out[category] = out.get(category, 0) + nbytes
    return out


_LABEL = re.compile(r"^(.*) \((.*)\)$")


def _parts(label: str) -> tuple[str, str] | None:
    """``"blocks.*.attn (parameters)"`` -> ``("blocks.*.attn", "parameters")``."""
    match = _LABEL.match(label)
    return (match.group(1), match.group(2)) if match else None


def growth(current: dict[str, Any], stored: dict[str, int]) -> list[tuple[str, int, int]]:
    """(group, stored bytes, current bytes) of the groups that grew, most growth first.

    A new module's new submodules are counted in it (``attn.extra`` with its
    ``attn.extra.out_proj``), so that an added block reads as one line.
    """
    now = collapse(current)
    new = {k for k in now if k not in stored}
    # A module that moved (``attn`` wrapped as ``attn.attn``) is neither new nor grown: a
    # new group with a gone group of the same name, category and bytes is taken as moved.
    gone: dict[tuple[str, str, int], list[str]] = {}
    for label, nbytes in stored.items():
        if label not in now and (parts := _parts(label)):
            gone.setdefault((parts[0].rsplit(".", 1)[-1], parts[1], nbytes), []).append(label)
    for label in sorted(new):
        parts = _parts(label)
        if parts and gone.get((parts[0].rsplit(".", 1)[-1], parts[1], now[label])):
            gone[(parts[0].rsplit(".", 1)[-1], parts[1], now[label])].pop()
            new.discard(label)
            stored = {**stored, label: now[label]}
    merged = dict(now)
    for label in sorted(new, key=len, reverse=True):
        match = _LABEL.match(label)
        if not match:
            continue
        module, category = match.groups()
        parts = module.split(".")
        for cut in range(1, len(parts)):
            parent = f"{'.'.join(parts[:cut])} ({category})"
            if parent in new and parent in merged:
                merged[parent] += merged.pop(label)
                break
    grown = [(k, stored.get(k, 0), v) for k, v in merged.items() if v > stored.get(k, 0)]
    return sorted(grown, key=lambda t: (-(t[2] - t[1]), t[0]))
