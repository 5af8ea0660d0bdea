"""The ``--vram-artifacts`` directory: one folder per test, its files written the way every
file of the plugin is (:func:`pytest_vram.store.files.write_output`: atomic, through a
symlink, never replacing a directory, a device or a read-only file).

:func:`check_root` says at configure what is wrong with the directory itself (a file, a
device, a file on its way); :func:`write` reports anything the file system refuses later
as :class:`ArtifactError`, naming the file and the fix.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pytest_vram.store import files

#: Longest folder name made from a node id (file systems allow 255 bytes).
MAX_NAME = 150


class ArtifactError(Exception):
    """An artefact that could not be written; the message names the file and the fix."""


def safe_name(nodeid: str) -> str:
    """A folder name for a node id: ``tests/a.py::t[x-y]`` -> ``tests_a.py__t_x-y_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid)[:MAX_NAME]


def check_root(root: Path) -> str | None:
    """What keeps ``root`` from being the artefacts directory, or None: a file, a device
    or anything else that is not a directory, there or on its way. (A directory that
    cannot be written is found when the first artefact is.)"""
    for part in (*reversed(root.parents), root):
        try:
            mode = os.stat(part).st_mode
        except FileNotFoundError:
            return None  # created at the first artefact
        except OSError as exc:
            return f"{part}: {files.describe(exc)}"
        if not stat.S_ISDIR(mode):
            where = "it is" if part == root else f"{part} on its way is"
            return f"{where} {files.kind(mode)}, not a directory"
    return None


def write(root: Path, nodeid: str, contents: dict[str, bytes], shown: str = "") -> list[Path]:
    """Write one test's artefacts (file name -> bytes) into ``root/<safe name>/``; the files
    written, in order. ArtifactError on the first that cannot be written; ``shown``: how
    to call ``root`` in it (default: its path)."""
    folder = root / safe_name(nodeid)
    written: list[Path] = []
    try:
        files.ensure_directory(folder)
    except OSError as exc:
        raise ArtifactError(_message(folder, root, shown, exc)) from None
    for name, data in contents.items():
        path = folder / name
        try:
            files.write_output(path, data)
        except OSError as exc:
            raise ArtifactError(_message(path, root, shown, exc)) from None
        written.append(path)
    return written


def _message(path: Path, root: Path, shown: str, exc: OSError) -> str:
    if isinstance(exc, (files.NotRegular, files.InTheWay, files.ReadOnly)):
        fix = "remove what is there or give another directory"
    else:
        fix = "give a writable directory with free space"
    name = Path(shown or root) / path.relative_to(root)
    return f"cannot write {name} ({files.describe(exc, about=path)}); {fix}"
