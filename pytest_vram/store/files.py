"""File mechanics for the stores: bounded reads, durable atomic writes, per-file locks.

* :func:`read_bounded`: a file's bytes, refusing one beyond a size limit before reading it
  all;
* :func:`write_atomic`: readers see the old file or the new one, never half of it; the
  write goes through a symlink to its target and keeps the file's mode;
* :func:`acquire_lock`: a per-file lock in the machine's temporary directory, so that every
  process of the machine that updates the file (whatever its working directory or a
  symlink on the way) waits for the others.

Errors are the operating system's (``OSError``) or :class:`TooLarge`; each store turns
them into its own message, naming its file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

import filelock

#: Where the update locks live: outside the project's tree, so no run leaves a file
#: beside the files it updates (a lock file must outlive its holder to serialise safely).
LOCK_DIRECTORY = "pytest-vram-locks"


class TooLarge(ValueError):
    """A file beyond the size a store accepts."""


def real_path(path: Path) -> Path:
    """``path`` with symlinks resolved: where a write must land to update what is read."""
    return Path(os.path.realpath(path))


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path``, None if it does not exist; TooLarge beyond ``limit`` bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise TooLarge(f"{path}: larger than {limit} bytes")
    return data


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    The bytes go to a temporary file in the target's directory (so ``os.replace`` is a
    rename within one file system), are flushed to disk, take the old file's mode, then
    replace the target. A symlinked ``path`` is written through to its target (the link
    stays). On any error the old file stays intact and no temporary file is left.
    """
    path = real_path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_temp(temp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _open_temp(temp: Path) -> int:
    # os.open with 0o666 lets the umask decide the mode, as for any file the user creates
    # (tempfile.mkstemp would leave a 0600 file behind).
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_path(path: Path) -> Path:
    """The lock file that serialises updates of ``path``: in the machine's temporary
    directory, named after the file and a digest of its real path."""
    target = real_path(path)
    digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / LOCK_DIRECTORY / f"{target.name}-{digest}.lock"


def _open_lock_file(lock_file: Path) -> None:
    """Create the lock directory and file, usable by every user of the machine (like the
    temporary directory itself: sticky, so nobody removes another's file)."""
    directory = lock_file.parent
    try:
        directory.mkdir()
    except FileExistsError:
        pass
    else:
        os.chmod(directory, 0o1777)  # mkdir's mode is cut by the umask
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o666)
    finally:
        os.close(fd)


def acquire_lock(path: Path, timeout: float) -> filelock.BaseFileLock:
    """Take the per-file lock of ``path`` (other processes updating it wait); the caller
    releases it. Raises ``filelock.Timeout`` after ``timeout`` seconds, OSError where the
    lock file cannot be made."""
    lock_file = lock_path(path)
    # filelock retries a lock file it cannot open until the timeout, as if another
    # process held it; opening it first turns that into an error now.
    _open_lock_file(lock_file)
    lock = filelock.FileLock(lock_file, timeout=timeout)
    lock.acquire()
    return lock
