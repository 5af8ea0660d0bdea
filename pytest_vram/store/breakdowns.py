"""The stored breakdowns (``baselines/breakdowns/<profile>.yaml``): each measurement's live
bytes at its peak by module and category, written by ``--vram-update`` and compared with in
failure messages and the PR comment.

The store keeps the baseline file's discipline (:mod:`pytest_vram.store.files`): a bounded
read in the baselines' YAML dialect, every figure validated, an update re-reads and merges
under the file's lock and replaces it atomically (through a symlink, mode kept, a read-only
file refused), and a store that cannot be read is an error naming the file and the fix,
never read as empty and never rewritten from one run's entries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_vram.core.breakdown import collapse
from pytest_vram.core.names import unstorable
from pytest_vram.store import files, yaml_dialect

#: Folder of the stored breakdowns, inside the baselines folder: apart from the
#: ``<profile>.yaml`` files, so that whatever reads every ``baselines/*.yaml`` as a
#: baseline file does not meet them.
STORE_DIR = "breakdowns"

#: Keys of the file's top-level mapping, in the order they are written.
HEADER_KEYS = ("about", "entries")
ABOUT = (
    "live bytes at each measurement's peak by module and category, "
    "written by pytest --vram-update; compared with in failure messages"
)

#: Groups stored per entry (each module of all layers together, so the count does not grow
#: with depth); a group not stored reads as new in a comparison.
STORED_GROUPS = 80
#: Input bound: a store holds a few kilobytes per entry.
MAX_FILE_BYTES = 64 * 1024**2
#: Largest figure a store may hold (16 EiB), as in a baseline file.
MAX_COUNT = 2**64
#: How long an update waits for another process's update of the same store.

#: What a store holds: baseline key -> ``"module pattern (category)"`` -> bytes.
Stored = dict[str, dict[str, int]]


class BreakdownError(Exception):
    """A store that cannot be read or written; the message names the file, the entry and
    the fix."""


def path_for(baseline: Path) -> Path:
    """``baselines/estimate.yaml`` -> ``baselines/breakdowns/estimate.yaml``."""
    return baseline.parent / STORE_DIR / baseline.name


_REBUILD = "fix it, or delete it and rerun the whole suite with --vram-update to write it again"


def load(path: Path) -> Stored:
    """The stored breakdowns by baseline key; {} if the file does not exist.

    Raises BreakdownError for a file that cannot be read (not a regular file, too large,
    not UTF-8), is not YAML of the baselines' dialect, or holds anything but entries of
    group -> a non-negative integer number of bytes.
    """
    path = Path(path)
    text = _read(path)
    return {} if text is None else parse(text, path)


def _read(path: Path) -> str | None:
    try:
        return files.read_text(path, MAX_FILE_BYTES)
    except files.TooLarge:
        raise BreakdownError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB, which no store of "
            f"breakdowns reaches; {_REBUILD}"
        ) from None
    except files.NotText as exc:
        raise BreakdownError(f"{path}: {exc}; {_REBUILD}") from None
    except OSError as exc:
        raise BreakdownError(
            f"{path}: cannot read the stored breakdowns ({files.describe(exc)}); make it a "
            f"readable regular file, or delete it and rerun with --vram-update"
        ) from None


def parse(text: str, path: Path) -> Stored:
    """Validate store ``text`` as if read from ``path`` (which names it in errors)."""
    try:
        document, _node = yaml_dialect.load(text, what="a breakdowns store")
    except yaml_dialect.DuplicateKey as dup:
        inside = ".".join((*dup.where, dup.key))
        raise BreakdownError(
            f"{path}: {inside} appears twice (lines {dup.first_line} and {dup.line}); {_REBUILD}"
        ) from None
    except yaml_dialect.Invalid as exc:
        raise BreakdownError(f"{path}{exc.where}: {exc.text}; {_REBUILD}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise BreakdownError(
            f"{path}: expected a mapping with keys about, entries, got {_kind(document)}; "
            f"{_REBUILD}"
        )
    unknown = [k for k in document if k not in HEADER_KEYS]
    if unknown:
        raise BreakdownError(
            f"{path}: unknown top-level key {unknown[0]!r}; allowed keys are "
            f"{', '.join(HEADER_KEYS)} (anything else would be lost on the next update)"
        )
    entries = document.get("entries")
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        raise BreakdownError(
            f"{path}: entries must be a mapping from baseline key to groups, got "
            f"{_kind(entries)}; {_REBUILD}"
        )
    return {_key(key, path): _groups(groups, path, key) for key, groups in entries.items()}


def _key(key: Any, path: Path) -> str:
    if not isinstance(key, str) or not key:
        raise BreakdownError(
            f"{path}: entry key {key!r} must be a non-empty baseline key string; {_REBUILD}"
        )
    return key


def _groups(raw: Any, path: Path, key: str) -> dict[str, int]:
    where = f"{path}: entry {key!r}"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BreakdownError(
            f"{where}: must be a mapping from group to bytes, got {_kind(raw)}; {_REBUILD}"
        )
    groups = {}
    for label, nbytes in raw.items():
        if not isinstance(label, str) or not label:
            raise BreakdownError(f"{where}: group {label!r} must be a non-empty string; {_REBUILD}")
        groups[label] = _count(nbytes, f"{where}: group {label!r}")
    return groups


def _count(value: Any, where: str) -> int:
    # bool is an int subclass: "bytes: yes" must not read as 1 byte.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "..."
    raise BreakdownError(
        f"{where}: bytes must be a non-negative integer below 2**64, got {shown}; {_REBUILD}"
    )


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"[:120]


def compact(breakdown: dict[str, Any]) -> dict[str, int]:
    """What is stored of a measured breakdown: its largest groups, by label."""
    rows = sorted(collapse(breakdown).items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(sorted(rows[:STORED_GROUPS]))


def dump(entries: Mapping[str, Mapping[str, int]]) -> str:
    """The store's canonical text: entries sorted, block style, in the baselines' dialect."""
    document = {
        "about": ABOUT,
        "entries": {key: dict(entries[key]) for key in sorted(entries)},
    }
    return yaml_dialect.canonical(document)


def locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the per-file lock of the store ``path`` (other processes updating it wait)."""
    return files.locked(path, BreakdownError, _write_error)


def write(path: Path, updates: Mapping[str, dict[str, Any]], remove: Iterable[str] = ()) -> bool:
    """Merge ``key -> breakdown`` into the store at ``path`` and drop the ``remove`` keys
    (pruned from the baseline); True if the file changed.

    Under the store's lock: the file as it is now is read (a store that cannot be read
    raises BreakdownError and stays as it is, with the entries of every other test), this
    run's entries replace theirs, and the result replaces the file atomically; an
    unchanged store keeps its bytes.
    """
    path = Path(path)
    measured = {key: _checked(key, compact(breakdown), path) for key, breakdown in updates.items()}
    with locked(path):
        old = _read(path)
        entries = {} if old is None else parse(old, path)
        entries.update(measured)
        for key in remove:
            entries.pop(key, None)
        if not entries and old is None:
            return False
        text = dump(entries)
        if old == text:
            return False
        data = text.encode("utf-8")
        try:
            files.write_atomic(path, data)
        except OSError as exc:
            raise BreakdownError(_write_error(path, exc)) from None
    return True


def _checked(key: str, groups: dict[str, int], path: Path) -> dict[str, int]:
    """A measured entry as it will be stored, refused if the next run could not read it."""
    for text in (key, *groups):
        why = unstorable(text) if isinstance(text, str) else "it is not a string"
        if why is not None:
            raise BreakdownError(f"{path}: entry {key!r}: cannot store {text!r}: {why}")
    for label, nbytes in groups.items():
        _count(nbytes, f"{path}: entry {key!r}: group {label!r} as measured")
    return groups


def _write_error(path: Path, exc: OSError) -> str:
    if isinstance(exc, files.ReadOnly):
        fix = f"make it writable (chmod u+w {path}) to update it, or run without --vram-update"
    elif isinstance(exc, (files.NotRegular, files.InTheWay)):
        fix = f"make {path} a regular file (or move what is there), then rerun --vram-update"
    else:
        fix = "make its directory writable and free some space, then rerun with --vram-update"
    return f"{path}: cannot write the stored breakdowns ({files.describe(exc)}); {fix}"
