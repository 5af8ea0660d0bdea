"""File mechanics for every file the plugin writes or reads back: bounded reads, durable
atomic writes, per-file locks, and what may be replaced at all.

* :func:`read_bounded`: a regular file's bytes, refusing one beyond a size limit before
  reading it all, and anything that is not a regular file (a directory, a device, a FIFO,
  which could block forever);
* :func:`write_atomic`: readers see the old file or the new one, never half of it; the
  write goes through a symlink to its target and keeps the file's mode; a read-only file
  (no write bit: ``chmod 0444``) and anything that is not a regular file are refused, not
  replaced;
* :func:`write_output`: a report or an artefact: like :func:`write_atomic`, except that a
  character device or a FIFO (``/dev/null``, a pipe) and a descriptor of this process
  (``/dev/stdout``, ``/dev/fd/N``) are written through, never replaced;
* :func:`ensure_directory`: a directory to write into, created if missing, refusing a file
  in its place or on its way;
* :func:`acquire_lock`: a per-file lock in the machine's temporary directory, so that every
  process of the machine that updates the file (whatever its working directory or a
  symlink on the way) waits for the others.

Errors are the operating system's (``OSError``, with :class:`NotRegular` and
:class:`ReadOnly` among them) or :class:`TooLarge`; :func:`describe` says an ``OSError`` in
a few words, and each store turns it into its own message, naming its file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

#: Where the update locks live: outside the project's tree, so no run leaves a file
#: beside the files it updates (a lock file must outlive its holder to serialise safely).
LOCK_DIRECTORY = "pytest-vram-locks"

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: ``/proc/self/fd/1``, ``/proc/123/fd/1``, ``/dev/fd/1``: an open descriptor of a process
_DESCRIPTOR = re.compile(r"^/(?:proc/(?P<pid>self|thread-self|[0-9]+)|dev)/fd/(?P<fd>[0-9]+)$")


class TooLarge(ValueError):
    """A file beyond the size a store accepts."""


class NotText(ValueError):
    """Bytes that are not UTF-8 text; the message names the first bad byte and where."""


class NotRegular(OSError):
    """A path that exists but is not a regular file where one is needed (a directory, a
    device, a FIFO, a socket): never read as a store, never replaced."""


class ReadOnly(PermissionError):
    """A regular file without any write bit (``chmod 0444``): meant to stay as it is."""

    #: the file's permission bits, ``0o444``
    mode = 0


class InTheWay(NotADirectoryError):
    """A file where a directory is needed, or on the way to one."""


def kind(mode: int) -> str:
    """What a file of ``mode`` is, in words: ``"a directory"``, ``"a character device"``."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _errno(mode: int) -> int:
    return errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL


def describe(exc: OSError, about: Path | None = None) -> str:
    """An ``OSError`` of these functions in a few words, with the path it names unless that
    is ``about`` (the file the message is about already)."""
    if isinstance(exc, (NotRegular, ReadOnly, InTheWay)) or exc.errno is None:
        return exc.strerror or str(exc)
    reasons = {
        errno.EISDIR: "it is a directory",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ENOENT: "no such file or directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENXIO: "no process reads it",
        errno.EPIPE: "the reader went away",
    }
    reason = reasons.get(exc.errno, exc.strerror or str(exc))
    if exc.errno == errno.ENOTDIR and exc.filename is not None:
        blocking = _first_non_directory(Path(os.fsdecode(exc.filename)))
        if blocking is not None:
            return f"{blocking} is {kind(os.stat(blocking).st_mode)}, not a directory"
    directory = getattr(exc, "creating_in", None)
    if directory is not None:  # the temporary file of an atomic write
        return f"cannot create a file in {directory}: {reason}"
    if exc.filename is None or (about is not None and str(exc.filename) == str(about)):
        return reason
    return f"{reason}: {exc.filename}"


def real_path(path: Path) -> Path:
    """``path`` with symlinks resolved: where a write must land to update what is read."""
    return Path(os.path.realpath(path))


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file ``path``, None if it does not exist; TooLarge beyond
    ``limit`` bytes; NotRegular for a directory, a device, a FIFO or a socket."""
    try:
        # Non-blocking, so that a FIFO without a writer does not hang the run before fstat
        # can refuse it; it changes nothing for a regular file.
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(_errno(mode), f"it is {kind(mode)}, not a regular file", str(path))
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{path}: larger than {limit} bytes")
    return data


def decode(data: bytes) -> str:
    """``data`` as UTF-8 text; NotText names the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        raise NotText(f"not UTF-8 text (byte {exc.start}: {bad!r})") from None


def read_text(path: Path, limit: int) -> str | None:
    """:func:`read_bounded`, decoded by :func:`decode`."""
    data = read_bounded(path, limit)
    return None if data is None else decode(data)


def check_replaceable(path: Path) -> None:
    """Raise unless ``path`` (symlinks followed) is missing or a writable regular file.

    The write bits are read from the mode, not asked with ``os.access``: as root every file
    is writable, and a file someone made read-only (``chmod 0444``) is meant to stay.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # to be created (a file on the way is ensure_directory's to name)
    if stat.S_ISDIR(mode):
        raise NotRegular(errno.EISDIR, "it is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise NotRegular(
            errno.EINVAL, f"it is {kind(mode)}, not a regular file: never replaced", str(path)
        )
    if not mode & 0o222:
        read_only = ReadOnly(errno.EACCES, f"it is read-only, mode {mode & 0o777:04o}", str(path))
        read_only.mode = mode & 0o777
        raise read_only


def ensure_directory(path: Path) -> None:
    """Create the directory ``path`` (and its parents) unless it exists.

    :class:`InTheWay` names the file found in its place or on its way; any other OSError
    is the operating system's (a read-only parent, a full disk).
    """
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = _first_non_directory(Path(path))
        what = "a file" if blocking is None else kind(os.stat(blocking).st_mode)
        raise InTheWay(
            errno.ENOTDIR, f"{blocking or path} is {what}, not a directory", str(path)
        ) from None


def _first_non_directory(path: Path) -> Path | None:
    """The first part of ``path`` that exists and is not a directory."""
    for part in (*reversed(path.parents), path):
        try:
            if not stat.S_ISDIR(os.stat(part).st_mode):
                return part
        except FileNotFoundError:
            return None
        except OSError:
            return part
    return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    The bytes go to a temporary file with a unique name in the target's directory (so
    ``os.replace`` is a rename within one file system), are flushed to disk, take the old
    file's mode, then replace the target. A symlinked ``path`` is written through to its
    target (the link stays). A read-only file (:class:`ReadOnly`), a directory and anything
    else that is not a regular file (:class:`NotRegular`) are refused before anything is
    written. On any error the old file stays intact and no temporary file is left.
    """
    path = real_path(path)
    check_replaceable(path)
    ensure_directory(path.parent)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = _open_temp(temp)
    except OSError as exc:
        exc.creating_in = path.parent  # type: ignore[attr-defined]  # for describe()
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        check_replaceable(path)  # what came in its place meanwhile is not replaced either
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_output(path: Path, data: bytes) -> None:
    """Write a report or an artefact to ``path``.

    A descriptor of this process (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``) is
    written on that descriptor, after Python's own buffered output to it, whatever it is (a
    terminal, a pipe, a file the shell redirected it to). A character device or a FIFO
    (``/dev/null``, a named pipe, a terminal) is written through, never replaced, and a
    FIFO nobody reads is an error (ENXIO), not a hang. Anything else goes through
    :func:`write_atomic` (so a directory, a socket, a block device and a read-only file are
    refused).
    """
    fd = own_descriptor(path)
    if fd is not None:
        _flush_python_streams(fd)
        _write_all(fd, data, path)
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        fd = os.open(path, os.O_WRONLY | _O_BINARY | _O_NONBLOCK)
        try:
            os.set_blocking(fd, True)  # a slow reader is waited for, not an error
            _write_all(fd, data, path)
        finally:
            os.close(fd)
    else:
        write_atomic(path, data)


def own_descriptor(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names (following symlinks, as from
    ``/dev/stdout`` to ``/proc/self/fd/1``), or None."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on symlinks followed
        match = _DESCRIPTOR.match(current)
        if match:
            pid = match.group("pid")
            if pid in (None, "self", "thread-self") or int(pid) == os.getpid():
                return int(match.group("fd"))
            return None  # another process's: opened like any file
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


def _flush_python_streams(fd: int) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # replaced by a capturing object, or closed


def _write_all(fd: int, data: bytes, path: Path) -> None:
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        raise NotRegular(errno.EINVAL, f"it is {kind(mode)}: cannot write to it", str(path))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_temp(temp: Path) -> int:
    # os.open with 0o666 lets the umask decide the mode, as for any file the user creates
    # (tempfile.mkstemp would leave a 0600 file behind).
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)


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


#: How long an update waits for another process's update of the same file.
LOCK_TIMEOUT_S = 120.0


@contextlib.contextmanager
def locked(
    path: Path, error: type[Exception], write_error: Callable[[Path, OSError], str]
) -> Iterator[None]:
    """Hold the per-file lock of ``path`` (other processes updating it wait). A lock held
    too long, or one that cannot be made, raises ``error`` naming the file and the fix
    (``write_error`` words the latter for the file's kind)."""
    try:
        lock = acquire_lock(path, LOCK_TIMEOUT_S)
    except filelock.Timeout:
        raise error(
            f"{path}: another run has held the lock {lock_path(path)} for "
            f"{LOCK_TIMEOUT_S:.0f} s; wait for it to finish (or delete the lock file if no "
            f"pytest is running)"
        ) from None
    except OSError as exc:
        raise error(write_error(path, exc)) from None
    try:
        yield
    finally:
        lock.release()
