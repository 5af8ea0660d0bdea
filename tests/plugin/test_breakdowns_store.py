"""The stored breakdowns (``baselines/breakdowns/<profile>.yaml``): the baseline file's
discipline. Bounded and validated reads, locked read-merge-write, atomic replace through a
symlink, a read-only file kept, and a store that cannot be read reported (never read as
empty, never rewritten from one run's entries)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import stat
import sys
from pathlib import Path

import pytest
from vram_testing import MiB, write_baseline

from pytest_vram.store import breakdowns, files
from pytest_vram.store.breakdowns import BreakdownError

A = "test_r.py::test_a"
OTHER = "test_other.py::test_kept"
#: test_a measures 8 MiB; its baseline says 4 MiB, so it fails and its breakdown is compared
FAILING = """
    MiB = 1024**2

    def test_a(vram):
        vram.run(vram.backend.spike, 8 * MiB)
"""
ATTRIBUTION = "--vram-attribution=on"
GOOD = (
    "about: live bytes\n"
    "entries:\n"
    f"  {OTHER}:\n"
    "    (no module) (inputs/other): 1024\n"
    f"  {A}:\n"
    "    (no module) (inputs/other): 4194304\n"
)
BREAKDOWN = {"patterns": [["blocks.*", "parameters", 2048], ["lm_head", "activations", 512]]}


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


def store_of(pytester: pytest.Pytester) -> Path:
    return pytester.path / "baselines" / "breakdowns" / "scripted.yaml"


# --------------------------------------------------------------------------- reading

BAD_STORES = {
    "non-utf8": (
        b"about: x\nentries:\n  k:\n    g\xff: 1\n",
        r"not UTF-8 text \(byte 28: b'\\xff'\)",
    ),
    "bad-date": (b"entries:\n  k:\n    g: 2024-13-45\n", r"entry 'k': group 'g': bytes must be a "),
    "deep": (
        b"entries: " + b"[" * 100 + b"]" * 100 + b"\n",
        r"nested deeper than 16 levels; a breakdowns store needs 4",
    ),
    "alias": (
        b"entries:\n  k: &a {g: 1}\n  j: *a\n",
        r"anchor &a is not allowed in a breakdowns store",
    ),
    "tag": (b"entries:\n  k:\n    g: !!int 1\n", r"tag !!int is not allowed in a breakdowns store"),
    "negative": (b"entries:\n  k:\n    g: -1000000000\n", r"got -1000000000"),
    "huge": (b"entries:\n  k:\n    g: 18446744073709551616\n", r"below 2\*\*64, got 18446"),
    "digits": (b"entries:\n  k:\n    g: " + b"9" * 30 + b"\n", r"got '999"),
    "bool": (b"entries:\n  k:\n    g: true\n", r"got True"),
    "float": (b"entries:\n  k:\n    g: 1.5\n", r"got 1.5"),
    "nan": (b"entries:\n  k:\n    g: .nan\n", r"got '.nan'"),
    "list": (b"- 1\n- 2\n", r"expected a mapping with keys about, entries, got a list"),
    "unknown-key": (b"entries: {}\nextra: 1\n", r"unknown top-level key 'extra'"),
    "entries-list": (b"entries: [1]\n", r"entries must be a mapping"),
    "entry-string": (b"entries:\n  k: lots\n", r"entry 'k': must be a mapping"),
    "empty-key": (b"entries:\n  '':\n    g: 1\n", r"entry key '' must be a non-empty"),
    "empty-group": (b"entries:\n  k:\n    '': 1\n", r"group '' must be a non-empty string"),
    "duplicate": (b"entries:\n  k:\n    g: 1\n    g: 2\n", r"entries.k.g appears twice"),
    "syntax": (b"entries:\n  k: [\n", r"line \d+, column \d+: invalid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_STORES))
def test_a_bad_store_is_an_error_naming_the_file(tmp_path: Path, case: str) -> None:
    data, message = BAD_STORES[case]
    path = tmp_path / "scripted.yaml"
    path.write_bytes(data)
    with pytest.raises(BreakdownError, match=message) as raised:
        breakdowns.load(path)
    assert str(raised.value).startswith(str(path))
    assert "--vram-update" in str(raised.value) or "would be lost" in str(raised.value)


def test_the_committed_store_and_an_empty_one_read(tmp_path: Path) -> None:
    committed = Path(__file__).parents[2] / "baselines" / "breakdowns" / "estimate.yaml"
    entries = breakdowns.load(committed)
    assert entries and breakdowns.dump(entries) == committed.read_text(encoding="utf-8")
    (tmp_path / "empty.yaml").write_text("")
    assert breakdowns.load(tmp_path / "empty.yaml") == {}
    assert breakdowns.load(tmp_path / "missing.yaml") == {}


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
@pytest.mark.parametrize("what", ["directory", "under-a-file", "fifo"])
def test_a_store_that_is_not_a_regular_file_is_an_error(tmp_path: Path, what: str) -> None:
    path = tmp_path / "breakdowns" / "scripted.yaml"
    if what == "directory":
        path.mkdir(parents=True)
    elif what == "under-a-file":
        (tmp_path / "breakdowns").write_text("")
    else:
        path.parent.mkdir()
        os.mkfifo(path)
    with pytest.raises(BreakdownError, match="cannot read the stored breakdowns"):
        breakdowns.load(path)
    with pytest.raises(BreakdownError):
        breakdowns.write(path, {A: BREAKDOWN})


def test_a_store_over_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breakdowns, "MAX_FILE_BYTES", 100)
    path = tmp_path / "scripted.yaml"
    path.write_text(GOOD)
    with pytest.raises(BreakdownError, match="larger than"):
        breakdowns.load(path)


# --------------------------------------------------------------------------- writing


def test_an_unreadable_store_is_not_rewritten_from_this_runs_entries(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_bytes(GOOD.encode() + b"#\xff\n")
    before = path.read_bytes()
    with pytest.raises(BreakdownError, match="not UTF-8"):
        breakdowns.write(path, {A: BREAKDOWN})
    assert path.read_bytes() == before


def test_an_update_merges_and_an_unchanged_store_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text(GOOD)
    assert breakdowns.write(path, {A: BREAKDOWN})
    stored = breakdowns.load(path)
    assert stored[OTHER] == {"(no module) (inputs/other)": 1024}
    assert stored[A] == {"blocks.* (parameters)": 2048, "lm_head (activations)": 512}
    before = path.read_bytes()
    assert not breakdowns.write(path, {A: BREAKDOWN})
    assert path.read_bytes() == before


def test_an_update_writes_through_a_symlink_and_refuses_a_read_only_store(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text(GOOD)
    target.chmod(0o640)
    link = tmp_path / "scripted.yaml"
    link.symlink_to(target)
    assert breakdowns.write(link, {A: BREAKDOWN})
    assert link.is_symlink() and A in breakdowns.load(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    target.chmod(0o444)
    before = target.read_bytes()
    with pytest.raises(BreakdownError, match=r"read-only, mode 0444\); make it writable"):
        breakdowns.write(link, {A: {"patterns": [["x", "activations", 1]]}})
    assert target.read_bytes() == before and stat.S_IMODE(target.stat().st_mode) == 0o444


def test_a_failing_write_leaves_the_store_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text(GOOD)

    def full(temp: Path) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_open_temp", full)
    with pytest.raises(BreakdownError, match=r"no space left on device\); make its directory"):
        breakdowns.write(path, {A: BREAKDOWN})
    assert path.read_text() == GOOD and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_measured_entry_the_next_run_could_not_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    with pytest.raises(BreakdownError, match="lone surrogate"):
        breakdowns.write(path, {"t.py::a\ud800": BREAKDOWN})
    with pytest.raises(BreakdownError, match="control character"):
        breakdowns.write(path, {A: {"patterns": [["a\x85b", "activations", 1]]}})
    assert not path.exists()


def _update(path: str, key: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    breakdowns.write(Path(path), {key: BREAKDOWN})


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_concurrent_pairs_of_updates_keep_every_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    path = tmp_path / "breakdowns" / "scripted.yaml"
    expected: set[str] = set()
    for pair in range(20):
        barrier = context.Barrier(2)
        keys = [f"test_a.py::test_{pair}_a", f"test_b.py::test_{pair}_b"]
        workers = [context.Process(target=_update, args=(str(path), key, barrier)) for key in keys]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        expected.update(keys)
        assert set(breakdowns.load(path)) == expected  # after every pair
    assert [p.name for p in path.parent.iterdir()] == ["scripted.yaml"]


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("case", ["non-utf8", "bad-date", "deep", "negative"])
def test_a_bad_store_does_not_stop_the_session(vram_pytester, run_vram, torch, case):
    vram_pytester.makepyfile(test_r=FAILING)
    write_baseline(vram_pytester, {A: (0, 4 * MiB)})
    store = store_of(vram_pytester)
    store.parent.mkdir()
    store.write_bytes(BAD_STORES[case][0])
    result = run_vram(ATTRIBUTION)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*(not compared with the stored breakdowns: *scripted.yaml*; fix it, or delete "
            "it and rerun the whole suite with --vram-update to write it again)",
            "*== VRAM ==*",
        ]
    )
    assert "(was -953" not in result.stdout.str()
    no_traceback(result)


@pytest.mark.parametrize("what", ["directory", "under-a-file"])
def test_a_store_path_that_cannot_be_a_file_is_an_error_at_update(
    vram_pytester, run_vram, torch, what
):
    vram_pytester.makepyfile(test_r=FAILING)
    write_baseline(vram_pytester, {A: (0, 4 * MiB)})
    store = store_of(vram_pytester)
    if what == "directory":
        store.mkdir(parents=True)
    else:
        store.parent.write_text("")
    result = run_vram(ATTRIBUTION, "--vram-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*== VRAM ==*",
            "error: *scripted.yaml: cannot read the stored breakdowns (*not*)*; make it a "
            "readable regular file, or delete it and rerun with --vram-update (not updated; "
            "the file was left untouched)",
            "*1 passed*",
        ]
    )
    no_traceback(result)


def test_an_unreadable_store_keeps_the_other_tests_entries_at_update(
    vram_pytester, run_vram, torch
):
    vram_pytester.makepyfile(test_r=FAILING)
    store = store_of(vram_pytester)
    store.parent.mkdir(parents=True)
    store.write_bytes(GOOD.encode().replace(b"about: live bytes", b"about: live \xff bytes"))
    before = store.read_bytes()
    result = run_vram(ATTRIBUTION, "--vram-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["error: *scripted.yaml: not UTF-8 text (byte 12: *"])
    assert store.read_bytes() == before  # the other test's entry is still there
    no_traceback(result)


def test_an_update_keeps_a_symlink_and_refuses_a_read_only_store(vram_pytester, run_vram, torch):
    vram_pytester.makepyfile(test_r=FAILING)
    store = store_of(vram_pytester)
    store.parent.mkdir(parents=True)
    target = vram_pytester.path / "kept.yaml"
    target.write_text(GOOD)
    store.symlink_to(target)
    result = run_vram(ATTRIBUTION, "--vram-update")
    assert result.ret == pytest.ExitCode.OK
    assert store.is_symlink()
    assert breakdowns.load(target)[A] == {"(no module) (inputs/other)": 8 * MiB}
    assert OTHER in breakdowns.load(target)
    target.write_text(GOOD)
    target.chmod(0o444)
    result = run_vram(ATTRIBUTION, "--vram-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["error: *scripted.yaml: cannot write the stored breakdowns (it is read-only, mode 0444)*"]
    )
    assert target.read_text() == GOOD and stat.S_IMODE(target.stat().st_mode) == 0o444
    no_traceback(result)
