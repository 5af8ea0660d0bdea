"""The recorded convolution workspaces (``store.workspaces``): the file's format, the
merge that never drops an entry, and the discipline of the baseline files (bounded strict
read, validated figures, lock, atomic write through symlinks, read-only refused, errors
naming the file, the entry and the fix)."""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.synchronize
import os
import sys
from pathlib import Path

import pytest

from pytest_vram.store import files, workspaces
from pytest_vram.store.workspaces import WorkspaceError

SETUP = {"arch": "sm90", "cudnn": "91900", "device": "NVIDIA H200", "torch": "2.11.0+cu130"}
FLAGS = "tf32=1 det=0 bench=0"


def key(n: int, direction: str = "fwd") -> str:
    """A key in the estimator's form (``kernels.convolution.call_key``)."""
    return (
        f"{direction} float32 x={n},3,224,224:150528,50176,224,1 w=32,3,3,3:27,9,3,1 bias=0 "
        f"s=2,2 p=1,1 d=1,1 t=0 op=0,0 g=1 {FLAGS}"
    )


def _path(tmp_path: Path) -> Path:
    return workspaces.path_for(tmp_path / "baselines", SETUP)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


VALID = f"format: 1\narch: sm90\ncudnn: 91900\nentries:\n  {key(1)}: 1024\n"


def test_one_file_per_setup_beside_the_baselines(tmp_path: Path) -> None:
    path = _path(tmp_path)
    assert path == tmp_path / "baselines" / "cudnn-workspaces" / "sm90_cudnn91900.yaml"
    with pytest.raises(WorkspaceError, match="'sm<NN>'.*got arch '../x'"):
        workspaces.path_for(tmp_path, {"arch": "../x", "cudnn": "91900"})


def test_update_creates_the_file_in_canonical_form(tmp_path: Path) -> None:
    path = _path(tmp_path)
    result = workspaces.update(path, SETUP, {key(2): 4096, key(1, "bwd"): 0})
    assert result.written and result.added == sorted([key(2), key(1, "bwd")])
    text = path.read_text()
    assert text.startswith("about: cuDNN convolution workspaces")
    assert "format: 1\narch: sm90\ncudnn: 91900\nrecorded_with:\n  device: NVIDIA H200\n" in text
    loaded = workspaces.load(path)
    assert loaded is not None and loaded.entries == {key(2): 4096, key(1, "bwd"): 0}
    assert loaded.recorded_with == {"device": "NVIDIA H200", "torch": "2.11.0+cu130"}
    assert workspaces.dump(loaded) == text  # the same content, the same bytes


def test_a_merge_keeps_every_entry_and_replaces_what_it_measured(tmp_path: Path) -> None:
    path = _path(tmp_path)
    workspaces.update(path, SETUP, {key(1): 1024, key(2): 2048})
    result = workspaces.update(path, SETUP, {key(2): 4096, key(3): 0})
    assert result.added == [key(3)] and result.changed == [(key(2), 2048, 4096)]
    loaded = workspaces.load(path)
    assert loaded is not None
    assert loaded.entries == {key(1): 1024, key(2): 4096, key(3): 0}


def test_an_update_that_changes_nothing_leaves_the_file_alone(tmp_path: Path) -> None:
    path = _path(tmp_path)
    workspaces.update(path, SETUP, {key(1): 1024})
    before = path.read_bytes()
    os.utime(path, (0, 0))
    result = workspaces.update(path, {**SETUP, "torch": "other"}, {key(1): 1024})
    assert not result.written and path.read_bytes() == before and path.stat().st_mtime == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entries: [\n", "line 2, column 1: invalid YAML"),
        ("- 1\n", "expected a mapping with about, format"),
        (VALID + "extra: 1\n", "unknown key 'extra'"),
        (VALID.replace("format: 1", "format: 2"), "format 2, this pytest-vram reads format 1"),
        (VALID.replace("arch: sm90", "arch: sm80"), "which belong in sm80_cudnn91900.yaml"),
        (VALID.replace("cudnn: 91900", "cudnn: '91900'"), "cudnn must be the cuDNN version"),
        (VALID.replace(": 1024", ": 1 KiB"), "must be a non-negative integer of bytes"),
        (VALID.replace(": 1024", ": -1"), "got int -1"),
        (VALID.replace(": 1024", ": true"), "got a boolean True"),
        (VALID.replace(": 1024", f": {2**64}"), "below 2**64"),
        (VALID + "  not a key: 5\n", "entry 'not a key' is not a convolution key"),
        (VALID + f"  {key(1)}: 2048\n", "repeats line 5; keep one of them"),
        (
            VALID.replace("cudnn: 91900", "cudnn: &v 91900"),
            "invalid YAML: anchor &v is not allowed",
        ),
        (VALID.replace("entries:", "recorded_with: [1]\nentries:"), "recorded_with must map"),
    ],
)
def test_a_malformed_file_is_an_error_naming_it_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(_path(tmp_path), text)
    with pytest.raises(WorkspaceError) as raised:
        workspaces.load(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)
    # an update refuses it too, and leaves it as it was
    with pytest.raises(WorkspaceError):
        workspaces.update(path, SETUP, {key(9): 512})
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "entries: " + "[" * 100 + "]" * 100 + "\n",
            "nested deeper than 16 levels; a convolution workspace file needs 4",
        ),
        ("cudnn: !!timestamp x\n", "tag !!timestamp is not allowed in a convolution workspace"),
    ],
)
def test_a_refused_construct_names_the_workspace_file_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(_path(tmp_path), text)
    with pytest.raises(WorkspaceError, match="record it again with") as raised:
        workspaces.load(path)
    assert message in str(raised.value)


def test_a_file_that_is_not_utf8_names_the_byte_and_the_fix(tmp_path: Path) -> None:
    path = _path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(VALID.encode() + b"#\xff\n")
    with pytest.raises(WorkspaceError, match=r"not UTF-8 text \(byte \d+: b'\\xff'\); delete"):
        workspaces.load(path)
    with pytest.raises(WorkspaceError, match="not UTF-8"):
        workspaces.update(path, SETUP, {key(2): 512})
    assert path.read_bytes() == VALID.encode() + b"#\xff\n"


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("directory", "it is a directory"),
        ("under-a-file", "cudnn-workspaces is a regular file, not a directory"),
        ("fifo", "it is a FIFO, not a regular file"),
    ],
)
def test_a_path_that_is_not_a_regular_file_is_an_error_naming_what_is_there(
    tmp_path: Path, what: str, reason: str
) -> None:
    path = _path(tmp_path)
    if what == "directory":
        path.mkdir(parents=True)
    elif what == "under-a-file":
        path.parent.parent.mkdir(parents=True)
        path.parent.write_text("")
    else:
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
    for call in (lambda: workspaces.load(path), lambda: workspaces.update(path, SETUP, {})):
        with pytest.raises(WorkspaceError) as raised:
            call()
        assert str(raised.value).startswith(f"{path}: cannot read the convolution workspace")
        assert reason in str(raised.value)
        assert f"make {path} a regular file" in str(raised.value)
    assert what != "directory" or path.is_dir()


def test_a_write_over_a_directory_is_refused_naming_it(tmp_path: Path, monkeypatch) -> None:
    # what appears between the read and the write (another process) is not replaced
    path = _path(tmp_path)
    real_write = files.write_atomic

    def swapped(target: Path, data: bytes) -> None:
        target.mkdir(parents=True)
        real_write(target, data)

    monkeypatch.setattr(files, "write_atomic", swapped)
    with pytest.raises(WorkspaceError, match="cannot write the convolution workspace file "
                       r"\(it is a directory\); make .* a regular file"):  # fmt: skip
        workspaces.update(path, SETUP, {key(1): 512})
    assert path.is_dir()


@pytest.mark.parametrize("text", ["\ud800", "\x1b[31m", "\x07"])
def test_a_key_no_file_can_hold_is_refused_before_writing(tmp_path: Path, text: str) -> None:
    path = _path(tmp_path)
    bad = key(1).replace("float32", f"float32{text}")
    with pytest.raises(
        WorkspaceError, match=r"cannot store it: it holds (a lone surrogate|the control)"
    ):
        workspaces.update(path, SETUP, {bad: 512})
    assert not path.exists()


def test_a_file_beyond_the_size_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = _write(_path(tmp_path), VALID)
    monkeypatch.setattr(workspaces, "MAX_FILE_BYTES", 64)
    with pytest.raises(WorkspaceError, match="larger than 0 MiB.*record it again"):
        workspaces.load(path)


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    path = _write(_path(tmp_path), VALID)

    def denied(path: Path, limit: int) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # injected: the tests run as root, who can read a chmod 000 file
    monkeypatch.setattr(files, "read_bounded", denied)
    with pytest.raises(WorkspaceError, match="cannot read the convolution workspace file "):
        workspaces.load(path)
    with pytest.raises(WorkspaceError, match="Permission denied.*make it readable"):
        workspaces.update(path, SETUP, {key(2): 512})


def test_a_read_only_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = _path(tmp_path)
    workspaces.update(path, SETUP, {key(1): 1024})
    before = path.read_bytes()
    path.chmod(0o444)
    with pytest.raises(WorkspaceError, match=r"read-only \(mode 0444\).*chmod u\+w"):
        workspaces.update(path, SETUP, {key(2): 512})
    assert path.read_bytes() == before


def test_a_symlinked_file_is_written_through_with_its_mode(tmp_path: Path) -> None:
    target = _path(tmp_path / "shared")
    workspaces.update(target, SETUP, {key(1): 1024})
    target.chmod(0o640)
    link = _path(tmp_path)
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    workspaces.update(link, SETUP, {key(2): 512})
    assert link.is_symlink()
    loaded = workspaces.load(target)
    assert loaded is not None and loaded.entries == {key(1): 1024, key(2): 512}
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch
) -> None:
    path = _path(tmp_path)
    workspaces.update(path, SETUP, {key(1): 1024})
    before = path.read_bytes()

    def full(temp: Path) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(temp))

    monkeypatch.setattr(files, "_open_temp", full)
    with pytest.raises(WorkspaceError, match="No space left on device.*rerun with --vram-update"):
        workspaces.update(path, SETUP, {key(2): 512})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_file_for_another_setup_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="cannot hold sm90/cuDNN 91900"):
        workspaces.update(tmp_path / "sm80_cudnn91900.yaml", SETUP, {key(1): 0})


def _add(path: str, keys: list[str], barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    for k in keys:
        workspaces.update(Path(path), SETUP, {k: 512})


def test_concurrent_updates_keep_every_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    path = _path(tmp_path)
    barrier = context.Barrier(2)
    halves = [[key(n) for n in range(side, 30, 2)] for side in (0, 1)]
    workers = [context.Process(target=_add, args=(str(path), h, barrier)) for h in halves]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    loaded = workspaces.load(path)
    assert loaded is not None and sorted(loaded.entries) == sorted(halves[0] + halves[1])
