"""The project's recorded cuDNN convolution workspaces:
``baselines/cudnn-workspaces/<arch>_cudnn<version>.yaml``.

The ``cuda`` backend measures the transient of every convolution a test runs while it
updates baselines (``backends.workspace_recorder``); the session merges them here, one file
per GPU architecture and cuDNN version, and hands the file of the setup the estimate models
to the estimator, which looks a convolution up there before its shipped table (see
docs/estimator.md, "cuDNN convolution workspaces"). A file::

    about: ...
    format: 1
    arch: sm90
    cudnn: 91900
    recorded_with:
      device: NVIDIA H200
      torch: 2.11.0+cu130
    entries:
      fwd float32 x=8,3,64,64:12288,4096,64,1 w=... tf32=1 det=0 bench=0: 1048576

The same discipline as the baseline files (:mod:`pytest_vram.store.baselines`): a bounded
read through the strict YAML dialect, every figure validated, errors naming the file, the
entry and the fix; an update re-reads and merges under the file's lock (entries are never
dropped: a measured key is added or replaced, every other one kept) and writes atomically,
through a symlink, keeping the file's mode, refusing a read-only file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_vram.core.names import unstorable
from pytest_vram.store import files, yaml_dialect

#: The folder inside the baselines directory: apart from the ``<profile>.yaml`` files, so
#: that whatever reads every ``baselines/*.yaml`` as a baseline file does not meet these.
STORE_DIR = "cudnn-workspaces"
FORMAT = 1
#: Keys of the file's top-level mapping, in the order they are written.
HEADER_KEYS = ("about", "format", "arch", "cudnn", "recorded_with", "entries")
ABOUT = (
    "cuDNN convolution workspaces in bytes, by call, measured on the GPU by `pytest "
    "--vram-backend=cuda --vram-update`; the estimator reads them before its shipped table "
    "(docs/estimator.md). Commit this file; rerun that command to add to it."
)
#: A file holds about 150 bytes per convolution; far beyond is a mistake, refused.
MAX_FILE_BYTES = 32 * 1024**2
#: Largest workspace accepted (16 EiB): larger figures are typos, not memory.
MAX_BYTES = 2**64

_ARCH_RE = re.compile(r"^sm[0-9]{2,3}[a-z]?$")
_KEY_RE = re.compile(r"^(fwd|bwd) \S+ .* tf32=[01] det=[01] bench=[01]$")


class WorkspaceError(Exception):
    """A workspace file is invalid or cannot be read or written; the message names the
    file, the entry and the fix."""


@dataclasses.dataclass(frozen=True)
class WorkspaceFile:
    """One setup's recorded workspaces, as loaded or about to be written."""

    path: Path
    arch: str
    cudnn: int
    #: what the figures were last measured with: device, torch
    recorded_with: dict[str, str]
    #: call key (``kernels.convolution.call_key``) -> transient bytes
    entries: dict[str, int]


@dataclasses.dataclass(frozen=True)
class WorkspaceUpdate:
    """What :func:`update` did to one file. Each list is sorted by key."""

    path: Path
    added: list[str]
    #: (key, the file's figure, the measured one that replaced it)
    changed: list[tuple[str, int, int]]
    written: bool


def path_for(directory: Path, setup: Mapping[str, str]) -> Path:
    """``<baselines>/cudnn-workspaces/<arch>_cudnn<version>.yaml`` of ``setup`` (a
    backend's ``workspace_setup()``)."""
    arch, cudnn = _setup(setup)
    return Path(directory) / STORE_DIR / f"{arch}_cudnn{cudnn}.yaml"


def _setup(setup: Mapping[str, str]) -> tuple[str, int]:
    arch, cudnn = str(setup.get("arch", "")), str(setup.get("cudnn", ""))
    if not _ARCH_RE.match(arch) or not cudnn.isascii() or not cudnn.isdigit():
        raise WorkspaceError(
            f"a backend's workspace_setup() must name the GPU architecture as 'sm<NN>' and "
            f"the cuDNN version as an integer, got arch {arch!r}, cudnn {cudnn!r}"
        )
    return arch, int(cudnn)


# --------------------------------------------------------------------------- loading


def load(path: Path) -> WorkspaceFile | None:
    """Read and validate a workspace file; None if it does not exist."""
    text = read_text(path)
    return None if text is None else parse(text, path)


def read_text(path: Path) -> str | None:
    """The file's text, None if it does not exist; WorkspaceError if unreadable or too big."""
    path = Path(path)
    try:
        return files.read_text(path, MAX_FILE_BYTES)
    except files.TooLarge:
        raise WorkspaceError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB; a workspace file holds "
            f"about 150 bytes per convolution: {_RECORD_AGAIN}"
        ) from None
    except files.NotText as exc:
        raise WorkspaceError(
            f"{path}: cannot read the convolution workspace file: {exc}; {_RECORD_AGAIN}"
        ) from None
    except OSError as exc:
        raise WorkspaceError(
            f"{path}: cannot read the convolution workspace file ({_reason(exc, path)}); "
            f"{_fix(exc, path, 'make it readable')}"
        ) from None


_RECORD_AGAIN = "delete it and record it again with `pytest --vram-backend=cuda --vram-update`"


def _reason(exc: OSError, path: Path) -> str:
    """An OSError in words: what is in the way for a path that is not a regular file or
    lies under a file, the operating system's own words otherwise."""
    if isinstance(exc, (files.NotRegular, files.InTheWay)) or exc.errno == errno.ENOTDIR:
        return files.describe(exc, path)
    return exc.strerror or str(exc)


def _fix(exc: OSError, path: Path, otherwise: str) -> str:
    if isinstance(exc, (files.NotRegular, files.InTheWay)) or exc.errno == errno.ENOTDIR:
        return (
            f"make {path} a regular file (move what is there), or point --vram-baselines elsewhere"
        )
    return otherwise


def parse(text: str, path: Path) -> WorkspaceFile:
    """Validate workspace file ``text`` as if read from ``path`` (which names it in errors)."""
    path = Path(path)
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise WorkspaceError(
            f"{path}: expected a mapping with {', '.join(HEADER_KEYS)}, got {_kind(data)}; "
            f"delete the file and record it again with `pytest --vram-backend=cuda "
            f"--vram-update`"
        )
    unknown = [str(k) for k in data if k not in HEADER_KEYS]
    if unknown:
        raise WorkspaceError(
            f"{path}: unknown key {unknown[0]!r}; a workspace file has {', '.join(HEADER_KEYS)}"
        )
    if data.get("format") != FORMAT:
        raise WorkspaceError(
            f"{path}: format {data.get('format')!r}, this pytest-vram reads format {FORMAT}; "
            f"record the file again with `pytest --vram-backend=cuda --vram-update`"
        )
    arch, cudnn = _check_setup(data, path)
    recorded_with = data.get("recorded_with") or {}
    if not isinstance(recorded_with, dict) or not all(
        isinstance(v, (str, int, float)) for v in recorded_with.values()
    ):
        raise WorkspaceError(
            f"{path}: recorded_with must map names to text (device, torch), got "
            f"{_kind(recorded_with)}"
        )
    entries = data.get("entries")
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise WorkspaceError(
            f"{path}: entries must map convolution keys to bytes, got {_kind(entries)}"
        )
    return WorkspaceFile(
        path=path,
        arch=arch,
        cudnn=cudnn,
        recorded_with={str(k): str(v) for k, v in recorded_with.items()},
        entries={str(key): _figure(key, value, path) for key, value in entries.items()},
    )


def _check_setup(data: dict[str, Any], path: Path) -> tuple[str, int]:
    """The file's arch and cuDNN version, which its name must repeat."""
    arch, cudnn = data.get("arch"), data.get("cudnn")
    if not isinstance(arch, str) or not _ARCH_RE.match(arch):
        raise WorkspaceError(
            f"{path}: arch must be a GPU architecture such as 'sm90', got {_kind(arch)}"
        )
    if not isinstance(cudnn, int) or isinstance(cudnn, bool) or cudnn < 0:
        raise WorkspaceError(
            f"{path}: cudnn must be the cuDNN version as an integer "
            f"(torch.backends.cudnn.version(), e.g. 91900), got {_kind(cudnn)}"
        )
    expected = f"{arch}_cudnn{cudnn}.yaml"
    if path.name != expected:
        raise WorkspaceError(
            f"{path}: holds the workspaces of {arch} with cuDNN {cudnn}, which belong in "
            f"{expected}; rename the file (the estimator picks a file by its name)"
        )
    return arch, cudnn


def _figure(key: Any, value: Any, path: Path) -> int:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise WorkspaceError(
            f"{path}: entry {str(key)[:200]!r} is not a convolution key (the estimator's "
            f"kernels.convolution.call_key: 'fwd|bwd <dtype> ... tf32=N det=N bench=N'); "
            f"delete it, or delete the file and record it again with `pytest "
            f"--vram-backend=cuda --vram-update`"
        )
    why = unstorable(key)
    if why is not None:
        raise WorkspaceError(f"{path}: entry {key!r}: cannot store it: {why}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_BYTES:
        raise WorkspaceError(
            f"{path}: entry {key!r}: the workspace must be a non-negative integer of bytes "
            f"below 2**64, got {_kind(value)}; delete the entry and record it again with "
            f"`pytest --vram-backend=cuda --vram-update`"
        )
    return value


def _load_yaml(text: str, path: Path) -> Any:
    if len(text) > MAX_FILE_BYTES:
        raise WorkspaceError(f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB")
    try:
        document, _node = yaml_dialect.load(text, what="a convolution workspace file")
    except yaml_dialect.DuplicateKey as dup:
        raise WorkspaceError(
            f"{path}, line {dup.line}: key {dup.key!r} repeats line {dup.first_line}; "
            f"keep one of them"
        ) from None
    except yaml_dialect.Invalid as exc:
        raise WorkspaceError(f"{path}{exc.where}: {exc.text}; {_RECORD_AGAIN}") from None
    return document


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"[:120]


# --------------------------------------------------------------------------- writing


def dump(workspaces: WorkspaceFile) -> str:
    """Canonical YAML text: same content, same bytes, entries sorted by key."""
    document: dict[str, Any] = {
        "about": ABOUT,
        "format": FORMAT,
        "arch": workspaces.arch,
        "cudnn": workspaces.cudnn,
    }
    if workspaces.recorded_with:
        document["recorded_with"] = dict(sorted(workspaces.recorded_with.items()))
    document["entries"] = dict(sorted(workspaces.entries.items()))
    return yaml_dialect.canonical(document)


def write(workspaces: WorkspaceFile) -> None:
    """Write atomically (:func:`pytest_vram.store.files.write_atomic`): through a symlink,
    the mode kept; a read-only file and anything that is not a regular file are refused.
    WorkspaceError names the file."""
    path = workspaces.path
    data = dump(workspaces).encode("utf-8")
    try:
        files.write_atomic(path, data)
    except OSError as exc:
        raise WorkspaceError(_write_error(path, exc)) from None


def _write_error(path: Path, exc: OSError) -> str:
    if isinstance(exc, files.ReadOnly):
        # The mode bits, not os.access: as root every file is writable, and a file
        # someone made read-only (chmod 0444) is meant to stay as it is.
        target = files.real_path(path)
        return (
            f"{target}: the convolution workspace file is read-only (mode {exc.mode:04o}); "
            f"make it writable (chmod u+w {target}) to record into it, or run without "
            f"--vram-update"
        )
    reason = _reason(exc, path)
    if exc.errno != errno.ENOTDIR and not isinstance(exc, (files.NotRegular, files.InTheWay)):
        reason = f"{reason}: {exc.filename or path}"
    return f"{path}: cannot write the convolution workspace file ({reason}); " + _fix(
        exc, path, "make its directory writable and free some space, then rerun with --vram-update"
    )


def locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the per-file lock of ``path`` (other processes updating it wait)."""
    return files.locked(path, WorkspaceError, _write_error)


def update(path: Path, setup: Mapping[str, str], measured: Mapping[str, int]) -> WorkspaceUpdate:
    """Merge ``measured`` (key -> transient bytes) into the file at ``path``, creating it.

    Under the file's lock the file is read again, each measured key added or replaced, and
    every other entry kept; the file is written only if an entry was added or changed, with
    ``recorded_with`` from ``setup`` (device, torch). A malformed file raises
    WorkspaceError and is left untouched.
    """
    path = Path(path)
    arch, cudnn = _setup(setup)
    if path.name != f"{arch}_cudnn{cudnn}.yaml":
        raise WorkspaceError(
            f"{path}: cannot hold {arch}/cuDNN {cudnn}; use {arch}_cudnn{cudnn}.yaml"
        )
    with locked(path):
        existing = load(path)  # validated: its content is the setup its name says
        entries = dict(existing.entries) if existing else {}
        added = sorted(key for key in measured if key not in entries)
        changed = sorted(
            (key, entries[key], int(measured[key]))
            for key in measured
            if key in entries and entries[key] != measured[key]
        )
        for key in measured:
            entries[key] = _figure(key, measured[key], path)
        written = bool(added or changed)
        if written:
            recorded_with = {k: str(setup[k]) for k in ("device", "torch") if setup.get(k)}
            write(WorkspaceFile(path, arch, cudnn, recorded_with, entries))
    return WorkspaceUpdate(path, added, changed, written)
