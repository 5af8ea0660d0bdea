"""The file mechanics every store, report and artefact goes through (``store/files.py``):
what is read, what is replaced, what is written through, and what is refused."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

from pytest_vram.store import files

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and device nodes")


def _fifo(tmp_path: Path, name: str = "fifo") -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _char_device(tmp_path: Path) -> Path:
    """A character device node of our own (the same device as /dev/null). Never the real
    /dev/null: a test that failed would replace the machine's with a file."""
    path = tmp_path / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("mknod needs root")
    return path


@posix_only
def test_reading_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    with pytest.raises(files.NotRegular, match="it is a FIFO, not a regular file"):
        files.read_bounded(_fifo(tmp_path), 1024)


def test_reading_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(files.NotRegular, match="it is a directory"):
        files.read_bounded(tmp_path, 1024)


def test_reading_a_missing_file_or_one_over_the_limit(tmp_path: Path) -> None:
    assert files.read_bounded(tmp_path / "missing", 10) is None
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(files.TooLarge):
        files.read_bounded(tmp_path / "big", 10)
    assert files.read_bounded(tmp_path / "big", 11) == b"x" * 11


def test_a_read_only_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "kept.json"
    path.write_text("old")
    path.chmod(0o444)
    with pytest.raises(files.ReadOnly, match="read-only, mode 0444"):
        files.write_atomic(path, b"new")
    with pytest.raises(files.ReadOnly):
        files.write_output(path, b"new")
    assert path.read_text() == "old" and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert list(tmp_path.iterdir()) == [path]


@posix_only
def test_a_device_a_fifo_a_socket_and_a_directory_are_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, fifo = _char_device(tmp_path), _fifo(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(tmp_path)  # a socket's full path may be too long to bind
    sock.bind("sock")
    (tmp_path / "dir").mkdir()
    for path in (device, fifo, tmp_path / "sock", tmp_path / "dir"):
        kind = stat.S_IFMT(os.stat(path).st_mode)
        with pytest.raises(files.NotRegular):
            files.write_atomic(path, b"{}")
        assert stat.S_IFMT(os.stat(path).st_mode) == kind
    sock.close()


@posix_only
def test_a_report_goes_through_a_character_device(tmp_path: Path) -> None:
    device = _char_device(tmp_path)
    before = os.stat(device)
    files.write_output(device, b"{}\n")
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (
        before.st_ino,
        before.st_rdev,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary file


@posix_only
def test_a_report_goes_through_a_fifo_to_its_reader(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # The writer opens without blocking, so it may come before the reader: try a while.
    for _ in range(500):
        try:
            files.write_output(fifo, b"x" * 200_000)  # more than a pipe's buffer
            break
        except OSError:
            threading.Event().wait(0.01)
    reader.join(timeout=30)
    assert received == [b"x" * 200_000]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@posix_only
def test_a_fifo_nobody_reads_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    with pytest.raises(OSError) as raised:
        files.write_output(fifo, b"{}")
    assert files.describe(raised.value, about=fifo) == "no process reads it"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_descriptor_of_this_process_is_written_on_that_descriptor(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with open(target, "wb") as handle:
        handle.write(b"before\n")
        handle.flush()
        link = tmp_path / "stdout"  # as /dev/stdout -> /proc/self/fd/1
        link.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        assert files.own_descriptor(link) == handle.fileno()
        files.write_output(link, b"report\n")
        handle.write(b"after\n")
    assert target.read_bytes() == b"before\nreport\nafter\n"  # one offset, nothing lost
    assert files.own_descriptor(Path("/dev/fd/1")) == 1
    assert files.own_descriptor(Path(f"/proc/{os.getpid()}/fd/2")) == 2
    assert files.own_descriptor(Path(f"/proc/{os.getpid() + 1}/fd/2")) is None
    assert files.own_descriptor(target) is None


def test_a_symlink_is_written_through_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    files.write_output(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_file_in_the_way_of_a_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(files.InTheWay, match=r"file is a regular file, not a directory"):
        files.write_atomic(tmp_path / "file" / "sub" / "x.json", b"{}")
    with pytest.raises(OSError) as raised:
        files.read_bounded(tmp_path / "file" / "x.yaml", 10)
    assert files.describe(raised.value) == f"{tmp_path / 'file'} is a regular file, not a directory"


def test_temporary_files_have_unique_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    real_open = files._open_temp

    def spy(temp: Path) -> int:
        names.append(temp.name)
        return real_open(temp)

    monkeypatch.setattr(files, "_open_temp", spy)
    for n in range(20):
        files.write_atomic(tmp_path / "x.yaml", str(n).encode())
    assert len(set(names)) == 20 and all(n.startswith(".x.yaml.") for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["x.yaml"]


def test_a_temporary_file_that_cannot_be_made_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(temp: Path) -> int:
        raise FileNotFoundError(2, "No such file or directory", str(temp))

    monkeypatch.setattr(files, "_open_temp", refuse)
    with pytest.raises(OSError) as raised:
        files.write_atomic(tmp_path / "x.json", b"{}")
    message = files.describe(raised.value)
    assert message == f"cannot create a file in {tmp_path}: no such file or directory"
