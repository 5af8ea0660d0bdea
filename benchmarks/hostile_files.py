"""Hostile but realistic cases against every file pytest-vram writes or reads back: the
breakdowns store, the recorded cuDNN workspace files, ``--vram-json``/``--vram-markdown``,
``--vram-artifacts``, and names that become baseline keys. Each case is a fresh project on
the scripted test backend, run as real pytest processes (60 s limit each), and is
classified as:

* ``ok``: the right result, or a clear message naming the file or option with a failing
  exit code (4 before the run, 1 after the summary);
* ``traceback``: ``Traceback`` or ``INTERNALERROR`` in the output;
* ``silent``: exit code 0 where something went wrong, or a message that misleads (``No
  such file or directory`` for a file that exists);
* ``data loss``: a file, a device node, a symlink, a mode or another test's entry replaced
  or dropped;
* ``hang``: the 60 s limit reached.

Nothing outside each case's own temporary directory is written: device nodes are the
case's own (``mknod`` of /dev/null's numbers, skipped without root); only ``/proc/version``
and ``/dev/stdout`` are named as they are.

    python benchmarks/hostile_files.py [--repo PATH] [--only SUBSTRING]

``--repo``: the checkout whose ``pytest_vram`` is tried (default: this one), e.g. an
export of an older commit, to compare.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SCRIPTED = HERE / "tests" / "plugin"
MiB = 1024**2
LIMIT_S = 60

TESTS = """
MiB = 1024**2

def test_a(vram):
    vram.run(vram.backend.spike, 8 * MiB)

def test_b(vram):
    vram.run(vram.backend.spike, 1 * MiB)
"""
BASELINE = """profile: scripted
entries:
  test_r.py::test_a:
    model_bytes: 0
    peak_bytes: 4194304
  test_r.py::test_b:
    model_bytes: 0
    peak_bytes: 1048576
"""
OTHER = "test_other.py::test_kept"
STORE = f"""about: live bytes
entries:
  {OTHER}:
    (no module) (inputs/other): 1024
  test_r.py::test_a:
    (no module) (inputs/other): 4194304
"""


@dataclasses.dataclass
class Run:
    code: int | None  # None: the limit was reached
    out: str

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.out or "INTERNALERROR" in self.out


@dataclasses.dataclass
class Case:
    area: str
    name: str
    run: Callable[[Path, Callable[..., Run]], str]


CASES: list[Case] = []


def case(area: str, name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        CASES.append(Case(area, name, fn))
        return fn

    return register


def verdict(*runs: Run, ok: bool, loss: bool = False) -> str:
    if any(r.code is None for r in runs):
        return "hang"
    if any(r.traceback for r in runs):
        return "traceback"
    if loss:
        return "data loss"
    return "ok" if ok else "silent"


def project(root: Path) -> None:
    (root / "test_r.py").write_text(TESTS)
    (root / "conftest.py").write_text("")
    (root / "baselines").mkdir()
    (root / "baselines" / "scripted.yaml").write_text(BASELINE)


def own_null(path: Path) -> bool:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        return False
    return True


def same_node(path: Path, before: os.stat_result) -> bool:
    after = os.stat(path)
    return (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino,
        before.st_mode,
        before.st_rdev,
    )


# --------------------------------------------------------------------------- breakdowns

BAD_STORES = {
    "non-UTF-8 byte": b"about: x\nentries:\n  k:\n    g\xff: 1\n",
    "bad date": b"entries:\n  k:\n    g: 2024-13-45\n",
    "deep nesting": b"entries: " + b"[" * 1000 + b"]" * 1000 + b"\n",
    "alias": b"entries:\n  k: &a {g: 1}\n  j: *a\n",
    "tag": b"entries:\n  k:\n    g: !!python/name:os.system\n",
    "negative figure": (
        b"entries:\n  test_r.py::test_a:\n    (no module) (inputs/other): -1000000000\n"
    ),
    "huge figure": b"entries:\n  k:\n    g: 100000000000000000000000\n",
    "bool figure": b"entries:\n  k:\n    g: true\n",
    "float figure": b"entries:\n  k:\n    g: 1.5\n",
    "list at the top": b"- 1\n",
    "unknown key": b"entries: {}\nextra: 1\n",
    "entries a list": b"entries: [1]\n",
}


def _store_case(label: str, data: bytes) -> None:
    @case("breakdowns store", f"{label}: a failing test, then --vram-update")
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        store = root / "baselines" / "breakdowns" / "scripted.yaml"
        store.parent.mkdir()
        store.write_bytes(data)
        before = store.read_bytes()
        first = pytest("--vram-attribution=on")
        named = "breakdowns/scripted.yaml" in first.out and "(was -" not in first.out
        second = pytest("--vram-attribution=on", "--vram-update")
        kept = store.read_bytes() == before
        return verdict(
            first, second, ok=named and first.code == 1 and second.code == 1, loss=not kept
        )


for _label, _data in BAD_STORES.items():
    _store_case(_label, _data)


@case("breakdowns store", "unreadable store: --vram-update keeps the other entries")
def _unreadable_keeps(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    store = root / "baselines" / "breakdowns" / "scripted.yaml"
    store.parent.mkdir()
    store.write_bytes(STORE.encode().replace(b"live bytes", b"live \xff bytes"))
    run = pytest("--vram-attribution=on", "--vram-update")
    return verdict(run, ok=run.code == 1, loss=OTHER.encode() not in store.read_bytes())


def _store_path_case(label: str, make: Callable[[Path], bool]) -> None:
    @case("breakdowns store", f"store path {label}: --vram-update")
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        store = root / "baselines" / "breakdowns" / "scripted.yaml"
        if not make(store):
            return "skipped"
        before = os.lstat(store) if os.path.lexists(store) else None
        result = pytest("--vram-attribution=on", "--vram-update")
        intact = before is None or (
            os.path.lexists(store)
            and stat.S_IFMT(os.lstat(store).st_mode) == stat.S_IFMT(before.st_mode)
        )
        return verdict(result, ok=result.code == 1, loss=not intact)


def _directory(store: Path) -> bool:
    store.mkdir(parents=True)
    return True


def _under_a_file(store: Path) -> bool:
    store.parent.write_text("")
    return True


def _fifo(store: Path) -> bool:
    store.parent.mkdir()
    os.mkfifo(store)
    return True


def _link_to_own_null(store: Path) -> bool:
    store.parent.mkdir()
    node = store.parent / "null"
    if not own_null(node):
        return False
    store.symlink_to(node)
    return True


for _label, _make in {
    "a directory": _directory,
    "under a file": _under_a_file,
    "a FIFO": _fifo,
    "a symlink to a character device": _link_to_own_null,
}.items():
    _store_path_case(_label, _make)


@case("breakdowns store", "read-only store (0444): --vram-update")
def _read_only_store(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    store = root / "baselines" / "breakdowns" / "scripted.yaml"
    store.parent.mkdir()
    store.write_text(STORE)
    store.chmod(0o444)
    run = pytest("--vram-attribution=on", "--vram-update")
    kept = store.read_text() == STORE and stat.S_IMODE(store.stat().st_mode) == 0o444
    return verdict(run, ok=run.code == 1, loss=not kept)


@case("breakdowns store", "symlinked store: --vram-update writes through")
def _symlinked_store(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    store = root / "baselines" / "breakdowns" / "scripted.yaml"
    store.parent.mkdir()
    target = root / "kept.yaml"
    target.write_text(STORE)
    store.symlink_to(target)
    run = pytest("--vram-attribution=on", "--vram-update")
    through = store.is_symlink() and "8388608" in target.read_text()
    return verdict(run, ok=run.code == 0, loss=not through)


@case("breakdowns store", "two concurrent --vram-update runs, 5 pairs")
def _concurrent_store(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    (root / "conftest.py").write_text(
        "import os, time\nfrom pathlib import Path\n\n"
        "def pytest_sessionfinish(session):\n"
        "    me, other = os.environ['SIDE'], os.environ['OTHER']\n"
        "    Path(f'ready-{me}').touch()\n"
        "    deadline = time.monotonic() + 30\n"
        "    while not Path(f'ready-{other}').exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.005)\n"
    )
    store = root / "baselines" / "breakdowns" / "scripted.yaml"
    lost, runs = 0, []
    for _pair in range(5):
        for ready in root.glob("ready-*"):
            ready.unlink()
        store.unlink(missing_ok=True)
        sides = [("a", "b"), ("b", "a")]
        results: list[Run] = [Run(0, ""), Run(0, "")]

        def side(i: int, me: str, other: str, into: list[Run] = results) -> None:
            into[i] = pytest(
                "--vram-attribution=on",
                "--vram-update",
                f"test_r.py::test_{me}",
                env={"SIDE": me, "OTHER": other},
            )

        threads = [threading.Thread(target=side, args=(i, *s)) for i, s in enumerate(sides)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs.extend(results)
        text = store.read_text() if store.exists() else ""
        lost += not ("test_r.py::test_a" in text and "test_r.py::test_b" in text)
    return verdict(*runs, ok=True, loss=lost > 0)


# --------------------------------------------------------------------------- workspaces

RECORDING = "--vram-backend=vram_scripted:RecordingBackend"
CONV = "fwd float32 x=8,3,64,64 s=2,2 tf32=1 det=0 bench=0"
KEPT_CONV = "bwd float32 x=8,3,64,64 s=2,2 mask=011 tf32=1 det=0 bench=0"
CONV_TESTS = f"""
def test_c(vram):
    vram.run(vram.backend.convolve, {CONV!r}, 4096)
"""
WORKSPACES = f"""format: 1
arch: sm90
cudnn: 91900
entries:
  {KEPT_CONV}: 1024
"""
BAD_WORKSPACES = {
    "non-UTF-8 byte": WORKSPACES.encode() + b"#\xff\n",
    "deep nesting": b"entries: " + b"[" * 1000 + b"]" * 1000 + b"\n",
    "alias": WORKSPACES.replace("cudnn: 91900", "cudnn: &v 91900").encode(),
    "tag": WORKSPACES.replace("cudnn: 91900", "cudnn: !!python/name:os.system").encode(),
    "negative figure": WORKSPACES.replace(": 1024", ": -1024").encode(),
    "figure in words": WORKSPACES.replace(": 1024", ": 1 KiB").encode(),
    "another setup's file": WORKSPACES.replace("arch: sm90", "arch: sm80").encode(),
    "duplicate entry": (WORKSPACES + f"  {KEPT_CONV}: 2048\n").encode(),
}


def workspace_file(root: Path) -> Path:
    project(root)
    (root / "test_c.py").write_text(CONV_TESTS)
    return root / "baselines" / "cudnn-workspaces" / "sm90_cudnn91900.yaml"


def _workspace_case(label: str, data: bytes) -> None:
    @case("workspace file", f"{label}: a run that reads it, then --vram-update")
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        path = workspace_file(root)
        path.parent.mkdir()
        path.write_bytes(data)
        first = pytest(RECORDING, "test_c.py")
        second = pytest(RECORDING, "--vram-update", "test_c.py")
        named = all("cudnn-workspaces/sm90_cudnn91900.yaml" in r.out for r in (first, second))
        ok = named and first.code == 1 and second.code == 1
        return verdict(first, second, ok=ok, loss=path.read_bytes() != data)


for _label, _data in BAD_WORKSPACES.items():
    _workspace_case(_label, _data)


def _workspace_path_case(label: str, make: Callable[[Path], bool]) -> None:
    @case("workspace file", f"file path {label}: --vram-update")
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        path = workspace_file(root)
        if not make(path):
            return "skipped"
        before = os.lstat(path) if os.path.lexists(path) else None
        result = pytest(RECORDING, "--vram-update", "test_c.py")
        intact = before is None or (
            os.path.lexists(path)
            and stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(before.st_mode)
        )
        named = "cudnn-workspaces" in result.out
        return verdict(result, ok=result.code == 1 and named, loss=not intact)


for _label, _make in {
    "a directory": _directory,
    "under a file": _under_a_file,
    "a FIFO": _fifo,
    "a symlink to a character device": _link_to_own_null,
}.items():
    _workspace_path_case(_label, _make)


@case("workspace file", "read-only file (0444): --vram-update")
def _read_only_workspaces(root: Path, pytest: Callable[..., Run]) -> str:
    path = workspace_file(root)
    path.parent.mkdir()
    path.write_text(WORKSPACES)
    path.chmod(0o444)
    run = pytest(RECORDING, "--vram-update", "test_c.py")
    kept = path.read_text() == WORKSPACES and stat.S_IMODE(path.stat().st_mode) == 0o444
    return verdict(run, ok=run.code == 1 and "read-only" in run.out, loss=not kept)


@case("workspace file", "symlinked file: --vram-update writes through, keeps the entries")
def _symlinked_workspaces(root: Path, pytest: Callable[..., Run]) -> str:
    path = workspace_file(root)
    path.parent.mkdir()
    target = root / "kept.yaml"
    target.write_text(WORKSPACES)
    path.symlink_to(target)
    run = pytest(RECORDING, "--vram-update", "test_c.py")
    text = target.read_text()
    through = path.is_symlink() and CONV in text and KEPT_CONV in text
    return verdict(run, ok=run.code == 0, loss=not through)


@case("workspace file", "two concurrent --vram-update runs, 5 pairs")
def _concurrent_workspaces(root: Path, pytest: Callable[..., Run]) -> str:
    path = workspace_file(root)
    keys = {side: CONV.replace("x=8", f"x={n}") for n, side in ((1, "a"), (2, "b"))}
    (root / "test_c.py").write_text(
        "".join(
            f"def test_{side}(vram):\n    vram.run(vram.backend.convolve, {key!r}, 512)\n\n"
            for side, key in keys.items()
        )
    )
    (root / "conftest.py").write_text(
        "import os, time\nfrom pathlib import Path\n\n"
        "def pytest_sessionfinish(session):\n"
        "    me, other = os.environ['SIDE'], os.environ['OTHER']\n"
        "    Path(f'ready-{me}').touch()\n"
        "    deadline = time.monotonic() + 30\n"
        "    while not Path(f'ready-{other}').exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.005)\n"
    )
    lost, runs = 0, []
    for _pair in range(5):
        for ready in root.glob("ready-*"):
            ready.unlink()
        path.unlink(missing_ok=True)
        results: list[Run] = [Run(0, ""), Run(0, "")]

        def side(i: int, me: str, other: str, into: list[Run] = results) -> None:
            into[i] = pytest(
                RECORDING,
                "--vram-update",
                f"test_c.py::test_{me}",
                env={"SIDE": me, "OTHER": other},
            )

        threads = [
            threading.Thread(target=side, args=(i, *s))
            for i, s in enumerate([("a", "b"), ("b", "a")])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs.extend(results)
        text = path.read_text() if path.exists() else ""
        lost += not all(key in text for key in keys.values())
    return verdict(*runs, ok=True, loss=lost > 0)


# --------------------------------------------------------------------------- reports


def _report_case(option: str, label: str, fn: Callable[[Path, Callable[..., Run]], str]) -> None:
    CASES.append(Case(f"report {option}", label, fn))


def _reports(option: str) -> None:
    def to_own_device(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        node = root / "null"
        if not own_null(node):
            return "skipped"
        before = os.stat(node)
        run = pytest(f"{option}={node}")
        return verdict(run, ok=run.code == 1, loss=not same_node(node, before))

    def to_link_to_own_device(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        node = root / "null"
        if not own_null(node):
            return "skipped"
        (root / "link").symlink_to(node)
        before = os.stat(node)
        run = pytest(f"{option}=link")
        intact = same_node(node, before) and (root / "link").is_symlink()
        return verdict(run, ok=run.code == 1, loss=not intact)

    def to_fifo_read(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        fifo = root / "out.fifo"
        os.mkfifo(fifo)
        got: list[bytes] = []

        def read() -> None:
            with contextlib.suppress(OSError):  # replaced by a file meanwhile
                got.append(fifo.read_bytes())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        run = pytest(f"{option}=out.fifo")
        reader.join(timeout=5)
        arrived = bool(got) and b"test_r.py::test_a" in got[0]
        if not arrived:  # free the reader
            with open(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "wb", closefd=True):
                pass
        return verdict(
            run, ok=run.code == 1 and arrived, loss=not stat.S_ISFIFO(os.stat(fifo).st_mode)
        )

    def to_fifo_unread(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        fifo = root / "out.fifo"
        os.mkfifo(fifo)
        run = pytest(f"{option}=out.fifo")
        return verdict(
            run,
            ok=run.code == 1 and "out.fifo" in run.out,
            loss=not stat.S_ISFIFO(os.stat(fifo).st_mode),
        )

    def to_dev_stdout(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        run = pytest(f"{option}=/dev/stdout")
        mark = '"key": "test_r.py::test_a"' if option == "--vram-json" else "`test_r.py::test_a`"
        return verdict(run, ok=run.code == 1 and mark in run.out and "1 failed" in run.out)

    def to_dev_stdout_file(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        out = root / "out.txt"
        run = pytest(f"{option}=/dev/stdout", stdout_file=out)
        text = out.read_text(errors="replace")
        both = (
            "1 failed, 1 passed" in text and '\n  "measurements"' in text
            if (option == "--vram-json")
            else "1 failed, 1 passed" in text and "| test |" in text
        )
        return verdict(run, ok=run.code == 1 and both, loss="1 failed" not in text)

    def to_proc_version(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        run = pytest(f"{option}=/proc/version")
        clear = "/proc/version" in run.out and "No such file or directory" not in run.out
        return verdict(run, ok=run.code == 1 and clear)

    def empty(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        run = pytest(f"{option}=")
        return verdict(run, ok=run.code == 4 and option in run.out)

    def blank(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        run = pytest(f"{option}= ")
        return verdict(run, ok=run.code == 4 and not (root / " ").exists())

    def directory(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        (root / "taken").mkdir()
        run = pytest(f"{option}=taken")
        return verdict(run, ok=run.code == 1 and f"{option}=taken" in run.out)

    def under_a_file(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        (root / "file").write_text("kept")
        run = pytest(f"{option}=file/report")
        ok = run.code == 1 and f"{option}=file/report" in run.out
        return verdict(run, ok=ok, loss=(root / "file").read_text() != "kept")

    def read_only(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        kept = root / "kept.out"
        kept.write_text("kept")
        kept.chmod(0o444)
        run = pytest(f"{option}=kept.out")
        intact = kept.read_text() == "kept" and stat.S_IMODE(kept.stat().st_mode) == 0o444
        return verdict(run, ok=run.code == 1, loss=not intact)

    def block_device(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        node = root / "blk"
        try:
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        except PermissionError:
            return "skipped"
        before = os.stat(node)
        run = pytest(f"{option}=blk")
        return verdict(run, ok=run.code == 1, loss=not same_node(node, before))

    def a_socket(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        server = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            server.bind("sock")
        finally:
            os.chdir(cwd)
        run = pytest(f"{option}=sock")
        intact = stat.S_ISSOCK(os.stat(root / "sock").st_mode)
        server.close()
        return verdict(run, ok=run.code == 1, loss=not intact)

    def stored_file(where: str) -> Callable[[Path, Callable[..., Run]], str]:
        def run(root: Path, pytest: Callable[..., Run]) -> str:
            project(root)
            stored = root / "baselines" / where
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text("entries: {}\n")
            result = pytest(f"{option}=baselines/{where}")
            kept = stored.read_text() == "entries: {}\n"
            return verdict(result, ok=result.code == 4 and option in result.out, loss=not kept)

        return run

    for label, fn in {
        "the breakdowns store": stored_file("breakdowns/scripted.yaml"),
        "a recorded workspace file": stored_file("cudnn-workspaces/sm90_cudnn91900.yaml"),
        "a character device (own /dev/null node), as root": to_own_device,
        "a symlink to a character device": to_link_to_own_device,
        "a FIFO with a reader": to_fifo_read,
        "a FIFO nobody reads": to_fifo_unread,
        "/dev/stdout on a pipe": to_dev_stdout,
        "/dev/stdout redirected to a file": to_dev_stdout_file,
        "/proc/version": to_proc_version,
        "an empty value": empty,
        "a blank value": blank,
        "a directory": directory,
        "a path under a file": under_a_file,
        "a read-only file (0444)": read_only,
        "a block device node": block_device,
        "a socket": a_socket,
    }.items():
        _report_case(option, label, fn)


_reports("--vram-json")
_reports("--vram-markdown")


# --------------------------------------------------------------------------- artefacts

ARTIFACT_PATHS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "a file": ("a-file", lambda root: (root / "a-file").write_text("kept") > 0),
    "a path under a file": ("a-file/sub", lambda root: (root / "a-file").write_text("kept") > 0),
    "a device (own node)": ("null", lambda root: own_null(root / "null")),
    "the baseline file": ("baselines/scripted.yaml", lambda root: True),
    "a baseline file to come": ("baselines/cuda.yaml", lambda root: True),
    "the --vram-json path": ("out --vram-json=out", lambda root: True),
}


def _artifact_path_case(label: str, value: str, make: Callable[[Path], bool]) -> None:
    @case("--vram-artifacts", f"at {label}")
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        if not make(root):
            return "skipped"
        baseline = (root / "baselines" / "scripted.yaml").read_text()
        first, *rest = value.split(" ")
        result = pytest(f"--vram-artifacts={first}", *rest, "--vram-artifacts-all")
        kept = (root / "baselines" / "scripted.yaml").read_text() == baseline and not (
            root / "baselines" / "cuda.yaml"
        ).is_dir()
        return verdict(
            result, ok=result.code == 4 and "--vram-artifacts" in result.out, loss=not kept
        )


for _label, (_value, _make) in ARTIFACT_PATHS.items():
    _artifact_path_case(_label, _value, _make)


@case("--vram-artifacts", "an empty value")
def _artifacts_empty(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    run = pytest("--vram-artifacts=")
    return verdict(run, ok=run.code == 4)


@case("--vram-artifacts", "--vram-artifacts-all alone")
def _artifacts_all_alone(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    run = pytest("--vram-artifacts-all")
    return verdict(run, ok=run.code == 4)


def _immutable(root: Path, workers: list[str]) -> Callable[..., str]:
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        art = root / "art"
        art.mkdir()
        if subprocess.run(["chattr", "+i", str(art)], capture_output=True).returncode:
            return "skipped"
        try:
            result = pytest("--vram-artifacts=art", "--vram-artifacts-all", *workers)
        finally:
            subprocess.run(["chattr", "-i", str(art)], capture_output=True)
        both = "1 failed, 1 passed" in result.out
        return verdict(
            result, ok=result.code == 1 and both and "error: --vram-artifacts" in (result.out)
        )

    return run


CASES.append(
    Case("--vram-artifacts", "into a read-only (immutable) directory", _immutable(Path(), []))
)
CASES.append(
    Case(
        "--vram-artifacts",
        "into a read-only (immutable) directory, -n 2",
        _immutable(Path(), ["-n", "2"]),
    )
)


@case("--vram-artifacts", "a test's folder blocked by a file, -n 2")
def _blocked_folders(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    (root / "art").mkdir()
    for name in ("test_r.py_test_a", "test_r.py_test_b"):
        (root / "art" / name).write_text("kept")
    run = pytest("--vram-artifacts=art", "--vram-artifacts-all", "-n", "2")
    alive = "1 failed, 1 passed" in run.out and "node down" not in run.out
    kept = (root / "art" / "test_r.py_test_a").read_text() == "kept"
    return verdict(run, ok=run.code == 1 and alive, loss=not kept)


# --------------------------------------------------------------------------- names

NAMES = {
    "vram.run name with a lone surrogate": 'vram.run(vram.backend.spike, 1, name="s\\ud800")',
    "vram.run name with NEL": 'vram.run(vram.backend.spike, 1, name="a\\x85b")',
    "vram.run name with an escape sequence": 'vram.run(vram.backend.spike, 1, name="\\x1b[31m")',
    "key= with a lone surrogate": "KEY:k\\udcff",
    "key= with NEL": "KEY:k\\x85",
}


def _name_case(label: str, body: str) -> None:
    @case("names", label)
    def run(root: Path, pytest: Callable[..., Run]) -> str:
        project(root)
        if body.startswith("KEY:"):
            source = (
                "import pytest\n\n"
                f"@pytest.mark.vram(key='{body[4:]}')\n"
                "def test_n(vram):\n    vram.run(vram.backend.spike, 1)\n"
            )
        else:
            source = f"def test_n(vram):\n    {body}\n"
        (root / "test_n.py").write_text(source)
        first = pytest("--vram-update", "test_n.py", "test_r.py")
        second = pytest("test_r.py")  # the profile's other tests read the file back
        refused = "test_n.py::test_n" in first.out and first.code == 1
        return verdict(
            first,
            second,
            ok=refused and second.code in (0, 1) and ("invalid YAML" not in second.out),
            loss="invalid YAML" in second.out,
        )


for _label, _body in NAMES.items():
    _name_case(_label, _body)


@case("names", "a test file name with a byte that is not UTF-8")
def _file_name(root: Path, pytest: Callable[..., Run]) -> str:
    project(root)
    name = os.fsdecode(b"test_\xff.py")
    (root / name).write_text("def test_x(vram):\n    vram.run(vram.backend.spike, 1)\n")
    first = pytest("--vram-update")
    second = pytest("test_r.py")
    refused = first.code == 1 and "test_\\udcff.py::test_x" in first.out
    return verdict(first, second, ok=refused, loss="invalid YAML" in second.out)


# --------------------------------------------------------------------------- running


def runner(repo: Path, root: Path) -> Callable[..., Run]:
    def pytest(
        *args: str, env: dict[str, str] | None = None, stdout_file: Path | None = None
    ) -> Run:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            "--vram-backend=vram_scripted:ScriptedBackend",
            *args,
        ]
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(repo), str(SCRIPTED)]),
            "COLUMNS": "120",
            **(env or {}),
        }
        environment.pop("CI", None)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(stdout_file, "wb")) if stdout_file else None
            try:
                done = subprocess.run(
                    command,
                    cwd=root,
                    env=environment,
                    stdout=out or subprocess.PIPE,
                    stderr=subprocess.PIPE if out else subprocess.STDOUT,
                    timeout=LIMIT_S,
                )
            except subprocess.TimeoutExpired:
                return Run(None, "")
        text = stdout_file.read_bytes() + done.stderr if stdout_file else done.stdout
        return Run(done.returncode, text.decode("utf-8", "replace"))

    return pytest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout to try")
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    args = parser.parse_args()
    outcomes: dict[str, str] = {}
    for item in CASES:
        title = f"{item.area}: {item.name}"
        if args.only not in title:
            continue
        root = Path(tempfile.mkdtemp(prefix="vram-hostile-"))
        try:
            outcome = item.run(root, runner(args.repo.resolve(), root))
        finally:
            subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        outcomes[title] = outcome
        print(f"{outcome:10} {title}", flush=True)
    counts = collections.Counter(outcomes.values())
    print("\n" + ", ".join(f"{n} {what}" for what, n in counts.most_common()))
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1) + "\n")
    return 0 if set(counts) <= {"ok", "skipped"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
