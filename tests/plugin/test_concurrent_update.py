"""Concurrent ``--vram-update`` of one baseline file: no entry is lost.

The pairs run :func:`baselines.update` in two processes released by one barrier, the worst
case (both sides at the same instant before session finish, where without the lock one
side's entry is lost). One end-to-end test runs two real pytest processes at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vram_testing import QUIET, SCRIPTED, load, plugin_args

from pytest_vram.store import baselines, files
from pytest_vram.store.baselines import BaselineError, Entry

PAIRS = 20
RECORDED = {"backend": "scripted"}


def _update(path: str, key: str, peak: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    baselines.update(Path(path), "scripted", {key: Entry(0, peak)}, setup=RECORDED)


def test_concurrent_pairs_of_updates_keep_every_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    path = tmp_path / "scripted.yaml"
    expected: dict[str, int] = {}
    for pair in range(PAIRS):
        barrier = context.Barrier(2)
        keys = {f"test_a.py::test_{pair}_a": 512 * (pair + 1), f"test_b.py::test_{pair}_b": 1024}
        workers = [
            context.Process(target=_update, args=(str(path), key, peak, barrier))
            for key, peak in keys.items()
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        expected.update(keys)
        # Checked after every pair: each pair must keep its own two and all earlier ones.
        entries = load(path).entries
        assert {key: entry.peak_bytes for key, entry in entries.items()} == expected


def test_same_entry_conflict_is_reported_and_last_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    key = "test_a.py::test_a"
    baselines.update(path, "scripted", {key: Entry(0, 100)}, setup=RECORDED)
    seen = load(path)  # what this run judged against
    baselines.update(path, "scripted", {key: Entry(0, 200)}, setup=RECORDED)  # another
    result = baselines.update(
        path, "scripted", {key: Entry(0, 300)}, setup=RECORDED, seen=seen, read_before=True
    )
    assert [(c.key, c.old.peak_bytes, c.new.peak_bytes) for c in result.conflicts] == [
        (key, 200, 300)
    ]
    assert load(path).entries[key].peak_bytes == 300


def test_no_conflict_when_nobody_else_wrote(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    key = "test_a.py::test_a"
    baselines.update(path, "scripted", {key: Entry(0, 100)}, setup=RECORDED)
    seen = load(path)
    result = baselines.update(
        path, "scripted", {key: Entry(0, 300)}, setup=RECORDED, seen=seen, read_before=True
    )
    assert result.conflicts == [] and [c.key for c in result.changed] == [key]


def test_conflict_is_said_in_the_session_output(vram_pytester, run_vram):
    # The test itself plays the other run: it rewrites its own entry after this session read
    # the file, as a concurrent `--vram-update` of the same test would.
    vram_pytester.makepyfile(
        test_r="""
        from pathlib import Path
        from pytest_vram.store import baselines
        from pytest_vram.store.baselines import BaselineError, Entry

        def test_a(vram):
            vram.run(vram.backend.spike, 4096)
            baselines.update(
                Path("baselines/scripted.yaml"), "scripted",
                {"test_r.py::test_a": Entry(0, 2048)}, setup={},
            )
        """
    )
    (vram_pytester.path / "baselines").mkdir()
    baselines.update(
        vram_pytester.path / "baselines" / "scripted.yaml",
        "scripted",
        {"test_r.py::test_a": Entry(0, 1024)},
        setup={},
    )
    result = run_vram("--vram-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "conflict: test_r.py::test_a in baselines/scripted.yaml was changed by another run "
            "since this one read it (peak 2048 B); this run's figure replaced it (last writer wins)"
        ]
    )
    entries = load(vram_pytester.path / "baselines" / "scripted.yaml").entries
    assert entries["test_r.py::test_a"].peak_bytes == 4096


def test_two_pytest_processes_updating_one_file_keep_both_entries(vram_pytester):
    # Both sessions wait for each other just before session finish (a conftest barrier on
    # files), so that their updates overlap as closely as two processes can.
    vram_pytester.makeconftest(
        """
        import os, time
        from pathlib import Path

        def pytest_sessionfinish(session):
            me, other = os.environ["SIDE"], os.environ["OTHER"]
            Path(f"ready-{me}").touch()
            deadline = time.monotonic() + 60
            while not Path(f"ready-{other}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        """
    )
    vram_pytester.makepyfile(
        test_a="def test_a(vram):\n    vram.run(vram.backend.spike, 1024)\n",
        test_b="def test_b(vram):\n    vram.run(vram.backend.spike, 2048)\n",
    )
    args = [sys.executable, "-m", "pytest", *plugin_args(), SCRIPTED, *QUIET, "--vram-update"]
    runs = [
        subprocess.Popen(
            [*args, f"test_{side}.py"],
            cwd=vram_pytester.path,
            env={**os.environ, "SIDE": side, "OTHER": other},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for side, other in (("a", "b"), ("b", "a"))
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    entries = load(vram_pytester.path / "baselines" / "scripted.yaml").entries
    assert {k: e.peak_bytes for k, e in entries.items()} == {
        "test_a.py::test_a": 1024,
        "test_b.py::test_b": 2048,
    }


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_an_update_leaves_nothing_beside_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    baselines.update(path, "scripted", {"k": Entry(0, 1)}, setup=RECORDED)
    assert list(tmp_path.iterdir()) == [path]
    # the lock lies in the machine's temporary directory, the same for every spelling
    lock = files.lock_path(path)
    assert lock.exists() and not lock.is_relative_to(tmp_path)
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    assert files.lock_path(link) == lock
    assert files.lock_path(tmp_path / "sub" / ".." / "scripted.yaml") == lock


def test_unopenable_lock_file_is_an_error_at_once(tmp_path: Path) -> None:
    # What a read-only baselines directory gives: filelock alone would wait out its timeout
    # (120 s) and then blame another run.
    path = tmp_path / "scripted.yaml"
    lock = files.lock_path(path)
    lock.parent.mkdir(exist_ok=True)
    lock.mkdir()  # a directory cannot be opened as the lock file
    try:
        with pytest.raises(BaselineError, match=r"cannot write the baseline file \(Is a dir"):
            baselines.update(path, "scripted", {"k": Entry(0, 1)}, setup=RECORDED)
    finally:
        lock.rmdir()
    assert not path.exists()
