"""Ratchet options: stale entries fail strict runs, improvements can fail, new-only updates,
and a run's ``--vram-json`` recorded as baselines elsewhere (``record-json``)."""

from __future__ import annotations

import json

import pytest
from vram_testing import MiB, load, write_baseline

from pytest_vram.__main__ import main

TESTS = """
    MiB = 1024**2

    def test_a(vram):
        vram.run(vram.backend.spike, 10 * MiB)

    def test_b(vram):
        vram.run(vram.backend.spike, 20 * MiB)
"""
A, B = "test_r.py::test_a", "test_r.py::test_b"


@pytest.fixture
def ratchet(vram_pytester):
    vram_pytester.makepyfile(test_r=TESTS)
    return vram_pytester


def test_stale_entries_fail_a_strict_session(ratchet, run_vram):
    write_baseline(ratchet, {A: (0, 10 * MiB), B: (0, 20 * MiB), "test_r.py::test_gone": (1, 2)})
    result = run_vram("--vram-strict")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "stale: test_r.py::test_gone in baselines/scripted.yaml*",
            "error: baselines/scripted.yaml: 1 stale entry (listed above) fail the session in "
            "strict mode; delete them with `pytest --vram-update --vram-prune`, or only list "
            "them with --vram-stale-warn",
        ]
    )
    # not strict: listed only
    assert run_vram().ret == pytest.ExitCode.OK


@pytest.mark.parametrize("how", ["option", "ini"])
def test_stale_warn_only_lists_them(ratchet, run_vram, how):
    write_baseline(ratchet, {A: (0, 10 * MiB), B: (0, 20 * MiB), "test_r.py::test_gone": (1, 2)})
    if how == "ini":
        ratchet.makeini("[pytest]\nvram_stale_warn = true\n")
    result = run_vram("--vram-strict", *(["--vram-stale-warn"] if how == "option" else []))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["stale: test_r.py::test_gone in baselines/scripted.yaml*"])
    assert "error:" not in result.stdout.str()


@pytest.mark.parametrize("how", ["option", "ini"])
def test_fail_improvements(ratchet, run_vram, how):
    # test_a's baseline is 1 byte above its figure: the smallest unrecorded improvement
    write_baseline(ratchet, {A: (0, 10 * MiB + 1), B: (0, 20 * MiB)})
    run_vram().assert_outcomes(passed=2)
    if how == "ini":
        ratchet.makeini("[pytest]\nvram_fail_improvements = true\n")
    result = run_vram(*(["--vram-fail-improvements"] if how == "option" else []))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_r.py::test_a: uses less memory than baselines/scripted.yaml records.*"
         "(--vram-fail-improvements: an unrecorded improvement fails the test.)"]
    )  # fmt: skip


def test_update_new_only_records_missing_entries_and_keeps_the_others(ratchet, run_vram):
    path = write_baseline(ratchet, {A: (0, 11 * MiB)})  # test_a improved; test_b is new
    before = load(path)
    result = run_vram("--vram-update-new-only")
    result.assert_outcomes(passed=2)
    after = load(path)
    assert after.entries[A] == before.entries[A]  # not rewritten
    assert after.entries[B].peak_bytes == 20 * MiB
    assert after.setup == before.setup
    result.stdout.fnmatch_lines(["improvement: test_r.py::test_a: *", "written: *"])


def test_update_new_only_still_fails_regressions(ratchet, run_vram):
    path = write_baseline(ratchet, {A: (0, 9 * MiB)})
    ratchet.makeini("[pytest]\nvram_update_new_only = true\n")
    result = run_vram()
    result.assert_outcomes(passed=1, failed=1)
    assert load(path).entries[A].peak_bytes == 9 * MiB


def test_update_new_only_and_update_exclude_each_other(ratchet, run_vram):
    result = run_vram("--vram-update", "--vram-update-new-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vram-update-new-only records only missing entries*"])


def test_record_json_turns_a_run_into_baselines_of_its_profile(
    ratchet, run_vram, monkeypatch, capsys
):
    # The "GPU run": its profile is cuda-h200, and nobody here has that baseline file.
    monkeypatch.setenv("VRAM_SCRIPTED_PROFILE", "cuda-h200")
    run_vram("--vram-json=run.json").assert_outcomes(passed=2)
    assert main(["record-json", str(ratchet.path / "run.json"), "--baselines",
                 str(ratchet.path / "baselines")]) == 0  # fmt: skip
    assert "cuda-h200.yaml (cuda-h200): written; 2 added, 0 changed" in capsys.readouterr().out
    entries = load(ratchet.path / "baselines" / "cuda-h200.yaml").entries
    assert (entries[A].peak_bytes, entries[B].peak_bytes) == (10 * MiB, 20 * MiB)
    # the same figures as --vram-update on that machine: a strict run passes on them
    run_vram("--vram-strict").assert_outcomes(passed=2)


def test_record_json_rejects_what_is_not_a_vram_json_file(tmp_path, capsys):
    bad = tmp_path / "junit.json"
    bad.write_text(json.dumps({"tests": []}))
    assert main(["record-json", str(bad), "--baselines", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "not a --vram-json document of version 1" in out
    assert list(tmp_path.iterdir()) == [bad]


def test_selecting_some_tests_of_a_file_makes_no_entry_stale(ratchet, run_vram):
    """``pytest file.py::test_a`` never collects the file's other tests: their entries
    (and those of tests deleted from the file) are not judged, strict or not; the whole
    file, or its directory, is."""
    write_baseline(ratchet, {A: (0, 10 * MiB), B: (0, 20 * MiB), "test_r.py::test_gone": (1, 2)})
    result = run_vram("--vram-strict", A)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "stale:" not in result.stdout.str()
    result = run_vram("--vram-strict", A, "test_r.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["stale: test_r.py::test_gone in baselines/scripted.yaml*"])
