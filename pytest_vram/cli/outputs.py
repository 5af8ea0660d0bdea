"""Where the command line writes: standard output (no ``-o``, or ``-``) or a file.

:func:`check` refuses a path that cannot become the file before any work is done (a
directory, a path under a file, a read-only file); :func:`write` writes a regular file
atomically (:func:`pytest_vram.store.files.write_atomic`: through a symlink, mode kept),
a character device or a named pipe (``/dev/null``) as a plain write, never replacing it,
and ``/dev/stdout`` on the descriptor (:func:`pytest_vram.store.files.write_output`); a
named pipe nobody reads is an error, not a hang, and a block device or a socket is refused.
"""

from __future__ import annotations

import errno
import stat
import sys
from pathlib import Path

from pytest_vram.cli.runs import RunError
from pytest_vram.store import files

STDOUT = "-"


def check(path: str | None, option: str = "-o") -> None:
    """RunError if ``path`` cannot be written as a file (None and ``-``: standard output)."""
    if path is None or path == STDOUT:
        return
    if not path:
        raise RunError(f"{option}: empty path; give a file name, or '-' for standard output")
    try:
        _check(Path(path))
    except RunError:
        raise
    except OSError as exc:
        raise RunError(
            f"{path}: cannot write it ({exc.strerror or exc}); choose another path"
        ) from None
    except ValueError:  # a NUL byte in the name
        raise RunError(f"{path!r}: not a usable file name; choose another path") from None


def _check(path: Path) -> None:
    if path.is_dir():
        raise RunError(f"{path}: is a directory; give a file name inside it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"{path}: {parent} is a file, not a directory; choose another path")
            break
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if files.own_descriptor(path) is None and not (
        stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)
    ):
        raise RunError(
            f"{path}: it is {files.kind(mode)}, which is never written or replaced; choose "
            f"another path"
        )
    if stat.S_ISREG(mode) and not mode & 0o222:
        raise RunError(
            f"{path}: the file is read-only (mode {mode & 0o777:04o}); make it writable "
            f"(chmod u+w {path}) or choose another path"
        )


def write(path: str | None, data: str | bytes) -> None:
    """Write ``data`` to ``path`` (None or ``-``: standard output); RunError on failure."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path is None or path == STDOUT:
        if isinstance(data, str):
            sys.stdout.write(data)
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return
    check(path)
    try:
        files.write_output(Path(path), raw)
    except OSError as exc:
        raise RunError(
            f"{path}: cannot write it ({_reason(exc, Path(path))}); choose a writable path"
        ) from None


def _reason(exc: OSError, path: Path) -> str:
    if isinstance(exc, files.NotRegular) or exc.errno in (errno.ENXIO, errno.EPIPE):
        return files.describe(exc, path)  # "it is a block device", "no process reads it"
    return exc.strerror or str(exc)
