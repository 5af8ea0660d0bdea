"""``--vram-artifacts``: where they may go, and what a run does when they cannot be written
(an error line in the summary and a failing exit code, never an ``INTERNALERROR`` or a dead
xdist worker)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from vram_testing import MiB, write_baseline

from pytest_vram.store import files

#: test_a fails (its baseline says 4 MiB, it measures 8 MiB); test_b passes
TWO = """
    MiB = 1024**2

    def test_a(vram):
        vram.run(vram.backend.spike, 8 * MiB)

    def test_b(vram):
        vram.run(vram.backend.spike, 1 * MiB)
"""
A, B = "test_r.py::test_a", "test_r.py::test_b"


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


@pytest.fixture
def failing(vram_pytester: pytest.Pytester) -> pytest.Pytester:
    vram_pytester.makepyfile(test_r=TWO)
    write_baseline(vram_pytester, {A: (0, 4 * MiB), B: (0, 1 * MiB)})
    return vram_pytester


def test_artifacts_of_the_failing_test_and_of_all(failing, run_vram):
    result = run_vram("--vram-artifacts=art")
    result.assert_outcomes(passed=1, failed=1)
    assert sorted(os.listdir(failing.path / "art")) == ["test_r.py_test_a"]
    assert (failing.path / "art" / "test_r.py_test_a" / "breakdown.txt").is_file()
    result = run_vram("--vram-artifacts=art", "--vram-artifacts-all")
    assert sorted(os.listdir(failing.path / "art")) == ["test_r.py_test_a", "test_r.py_test_b"]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("a-file", "--vram-artifacts=a-file: it is a regular file, not a directory"),
        ("a-file/sub", "--vram-artifacts=a-file/sub: */a-file on its way is a regular file, not"),
        ("null", "--vram-artifacts=null: it is a character device, not a directory"),
        ("baselines/scripted.yaml", "--vram-artifacts=baselines/scripted.yaml: it is a regular"),
        ("baselines/cuda.yaml", "*would take the place of a baseline file in baselines; write "),
        (
            "baselines/cudnn-workspaces/sm90_cudnn91900.yaml",
            "*would take the place of a convolution workspace file in baselines; write ",
        ),
    ],
    ids=["file", "under-a-file", "device", "baseline-file", "future-baseline-file", "workspaces"],
)
def test_an_artifacts_path_that_cannot_be_a_directory_is_a_usage_error(
    failing, run_vram, where, message
):
    (failing.path / "a-file").write_text("kept")
    if where == "null":  # a device node of our own, never the machine's /dev/null
        try:
            os.mknod(failing.path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("mknod needs root")
    result = run_vram(f"--vram-artifacts={where}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}*"])
    assert (failing.path / "a-file").read_text() == "kept"
    assert not (failing.path / "baselines" / "cuda.yaml").exists()
    assert not (failing.path / "baselines" / "cudnn-workspaces").exists()
    no_traceback(result)


def test_artifacts_and_a_report_on_one_path_are_refused(failing, run_vram):
    result = run_vram("--vram-artifacts=out", "--vram-json=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vram-artifacts=out and --vram-json name one path*"])


def test_artifacts_all_without_a_directory_is_a_usage_error(failing, run_vram):
    result = run_vram("--vram-artifacts-all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --vram-artifacts-all says which tests get artefacts, but no directory is "
            "given: add --vram-artifacts=DIR*"
        ]
    )


def test_artifacts_all_in_the_ini_file_waits_for_a_directory(failing, run_vram):
    failing.makeini("[pytest]\nvram_artifacts_all = true\n")
    run_vram().assert_outcomes(passed=1, failed=1)
    result = run_vram("--vram-artifacts=art")
    assert sorted(os.listdir(failing.path / "art")) == ["test_r.py_test_a", "test_r.py_test_b"]
    result.assert_outcomes(passed=1, failed=1)


def test_a_read_only_artifacts_directory_is_an_error_line(failing, run_vram, monkeypatch):
    # Tests run as root here, where chmod cannot make a directory read-only: the error the
    # file system would give is injected where the test's folder is made.
    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files, "ensure_directory", refuse)
    result = run_vram("--vram-artifacts=art", "--vram-artifacts-all")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)  # the tests' own outcomes stay
    result.stdout.fnmatch_lines(
        [
            "*== VRAM ==*",
            "error: --vram-artifacts=art: cannot write art/test_r.py_test_a (permission "
            "denied); give a writable directory with free space (no more artefacts in this "
            "process)",
        ]
    )
    assert result.stdout.str().count("error: --vram-artifacts") == 1
    no_traceback(result)


def test_an_artifact_that_cannot_be_written_under_xdist_keeps_the_workers(
    failing, run_vram_subprocess
):
    pytest.importorskip("xdist")
    # A file where each test's folder would go: real, so that the workers meet it too.
    (failing.path / "art").mkdir()
    for name in ("test_r.py_test_a", "test_r.py_test_b"):
        (failing.path / "art" / name).write_text("kept")
    result = run_vram_subprocess("-n", "2", "--vram-artifacts=art", "--vram-artifacts-all")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "error: --vram-artifacts=art: cannot write art/test_r.py_test_? (*art/test_r.py_test_? "
            "is a regular file, not a directory); remove what is there or give another directory*"
        ]
    )
    assert "node down" not in result.stdout.str() and "crashed" not in result.stdout.str()
    assert (failing.path / "art" / "test_r.py_test_a").read_text() == "kept"
    no_traceback(result)
