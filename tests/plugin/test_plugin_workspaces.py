"""Recorded convolution workspaces through whole sessions: ``--vram-update`` writes what the
backend recorded into ``baselines/cudnn-workspaces/<arch>_cudnn<version>.yaml`` (merged,
never dropped, also from xdist workers), an ordinary run hands the file's entries to the
backend, and a bad file is an error naming it, never a lost entry or a traceback.

The backend is the scripted one with workspaces (``vram_scripted.RecordingBackend``): a
test's ``vram.backend.convolve(key, size)`` is a convolution with a ``size`` workspace.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_vram.store import workspaces

BACKEND = "--vram-backend=vram_scripted:RecordingBackend"
SHOWN = "baselines/cudnn-workspaces/sm90_cudnn91900.yaml"
FLAGS = "tf32=1 det=0 bench=0"
STEM = f"fwd float32 x=8,3,64,64 s=2,2 {FLAGS}"
STEM_BACKWARD = f"bwd float32 x=8,3,64,64 s=2,2 mask=011 {FLAGS}"
PATCH = f"fwd bfloat16 x=8,3,224,224 s=16,16 {FLAGS}"

TESTS = f"""
def test_stem(vram):
    vram.run(lambda: (vram.backend.convolve({STEM!r}, 1536),
                      vram.backend.convolve({STEM_BACKWARD!r}, 0)))


def test_patch(vram):
    vram.run(vram.backend.convolve, {PATCH!r}, 4096)


def test_known(vram):
    vram.run(vram.backend.spike, 512)
    print("known:", vram.backend.known, "from", vram.backend.source)
"""


@pytest.fixture
def run(run_vram: Callable[..., pytest.RunResult]) -> Callable[..., pytest.RunResult]:
    def go(*args: str) -> pytest.RunResult:
        return run_vram(*args, backend=BACKEND)

    return go


def _entries(root: Path) -> dict[str, int]:
    loaded = workspaces.load(root / SHOWN)
    assert loaded is not None
    return loaded.entries


def test_an_update_records_the_workspaces_beside_the_baselines(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run("--vram-update", "-k", "stem or patch")
    result.assert_outcomes(passed=2)
    assert _entries(vram_pytester.path) == {STEM: 1536, STEM_BACKWARD: 0, PATCH: 4096}
    result.stdout.fnmatch_lines([f"*written: {SHOWN} (3 convolution workspaces added, 0 changed)"])
    assert result.ret == 0


def test_the_new_only_update_records_them_too(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    run("--vram-update-new-only", "-k", "patch").assert_outcomes(passed=1)
    assert _entries(vram_pytester.path) == {PATCH: 4096}


def test_a_later_update_keeps_the_entries_it_did_not_measure(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    run("--vram-update", "-k", "stem").assert_outcomes(passed=1)
    run("--vram-update", "-k", "patch").assert_outcomes(passed=1)
    assert _entries(vram_pytester.path) == {STEM: 1536, STEM_BACKWARD: 0, PATCH: 4096}


def test_an_ordinary_run_gives_the_backend_the_recorded_file(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    run("--vram-update", "-k", "patch").assert_outcomes(passed=1)
    written = (vram_pytester.path / SHOWN).read_bytes()
    result = run("-k", "known", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*known: {{{PATCH!r}: 4096}} from {SHOWN}"])
    assert (vram_pytester.path / SHOWN).read_bytes() == written  # read, not written


def test_without_a_file_the_backend_is_told_where_it_would_be(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run("-k", "known", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*known: {{}} from {SHOWN}"])
    assert not (vram_pytester.path / "baselines" / "cudnn-workspaces").exists()


MALFORMED = f"format: 1\narch: sm90\ncudnn: 91900\nentries:\n  {PATCH}: 4 KiB\n"


def _malformed(root: Path) -> Path:
    path = root / SHOWN
    path.parent.mkdir(parents=True)
    path.write_text(MALFORMED)
    return path


def test_a_malformed_file_fails_the_vram_tests_naming_it(vram_pytester, run) -> None:
    path = _malformed(vram_pytester.path)
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run("-k", "known")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*{path}: entry '{PATCH}': the workspace must be a non-negative integer of bytes*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert path.read_text() == MALFORMED


def test_an_update_into_a_malformed_file_is_an_error_and_leaves_it(vram_pytester, run) -> None:
    path = _malformed(vram_pytester.path)
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run("--vram-update", "-k", "patch")
    result.assert_outcomes(passed=1)  # measured and judged; the file is the session's end
    result.stdout.fnmatch_lines(
        [
            f"*error: {path}: entry '{PATCH}': the workspace must be a non-negative integer*"
            "(this run's convolution workspaces were not recorded; the file was left untouched)"
        ]
    )
    assert result.ret == 1
    assert path.read_text() == MALFORMED
    assert (vram_pytester.path / "baselines" / "scripted.yaml").exists()  # the baselines are


def test_an_update_into_a_read_only_file_is_an_error_and_keeps_it(vram_pytester, run) -> None:
    vram_pytester.makepyfile(test_convs=TESTS)
    run("--vram-update", "-k", "stem").assert_outcomes(passed=1)
    path = vram_pytester.path / SHOWN
    before = path.read_bytes()
    path.chmod(0o444)
    result = run("--vram-update", "-k", "patch")
    result.stdout.fnmatch_lines([f"*error: {path}: the convolution workspace file is read-only*"])
    assert result.ret == 1
    assert path.read_bytes() == before


def test_xdist_workers_records_reach_the_file(vram_pytester, run_vram_subprocess) -> None:
    pytest.importorskip("xdist")
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run_vram_subprocess("--vram-update", "-n", "2", "-k", "stem or patch", backend=BACKEND)
    result.assert_outcomes(passed=2)
    assert _entries(vram_pytester.path) == {STEM: 1536, STEM_BACKWARD: 0, PATCH: 4096}


def test_a_backend_that_only_records_never_reads_the_file(vram_pytester, run_vram) -> None:
    # as the cuda backend: a malformed file is no reason to fail its ordinary runs
    _malformed(vram_pytester.path)
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run_vram("-k", "known", "-s", backend="--vram-backend=vram_scripted:MeasuringBackend")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*known: None from None"])


@pytest.mark.parametrize("update", [False, True])
def test_a_directory_in_place_of_the_file_is_an_error_naming_it(
    vram_pytester, run, update: bool
) -> None:
    path = vram_pytester.path / SHOWN
    path.mkdir(parents=True)
    vram_pytester.makepyfile(test_convs=TESTS)
    result = run(*(["--vram-update", "-k", "patch"] if update else ["-k", "known"]))
    # recorded, then refused at the session's end; or refused to the backend that reads it
    result.assert_outcomes(**({"passed": 1} if update else {"errors": 1}))
    result.stdout.fnmatch_lines(
        [f"*{path}: cannot read the convolution workspace file (it is a directory*"]
    )
    assert result.ret != 0
    assert f"make {path} a regular file" in result.stdout.str()
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert path.is_dir()
