"""``--vram-update``, stale entries, ``--vram-prune`` and malformed baseline files."""

from __future__ import annotations

import dataclasses

from vram_testing import MiB, load, write_baseline

from pytest_vram.store import baselines

TWO_TESTS = """
    MiB = 1024**2

    def test_a(vram):
        model = vram.build(vram.backend.alloc, 100 * MiB)
        vram.run(vram.backend.spike, 50 * MiB)

    def test_b(vram):
        vram.run(vram.backend.spike, 8 * MiB)
"""
A, B = "test_u.py::test_a", "test_u.py::test_b"


def test_update_records_new_entries(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    result = run_vram("--vram-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"new: {A}: peak 150.0 MiB recorded", "written: baselines/scripted.yaml"]
    )
    entries = load(vram_pytester.path / "baselines" / "scripted.yaml").entries
    assert entries[A].model_bytes == 100 * MiB and entries[A].peak_bytes == 150 * MiB
    assert entries[B].model_bytes == 0 and entries[B].peak_bytes == 8 * MiB
    run_vram("--vram-strict").assert_outcomes(passed=2)  # the recorded file is in force
    # nothing but what the user commits: no lock or temporary file in the project's tree
    tree = {p.relative_to(vram_pytester.path).as_posix() for p in vram_pytester.path.rglob("*")}
    assert {t for t in tree if t.startswith("baselines")} == {
        "baselines",
        "baselines/scripted.yaml",
    }


def test_update_rewrites_only_measured_entries(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    path = write_baseline(
        vram_pytester,
        {A: (100 * MiB, 140 * MiB), B: (0, 8 * MiB), "other.py::test_x": (1, 2)},
        tolerance="1%",
        entry_tolerances={A: "2MiB"},
    )
    other = write_baseline(vram_pytester, {A: (1, 2)}, profile="cuda-other")
    other_bytes = other.read_bytes()
    result = run_vram("--vram-update", "-k", "test_a or test_b")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"updated: {A}: peak 140.0 MiB -> 150.0 MiB (+10.0 MiB (+7.14%))"])
    after = load(path)
    assert after.entries[A].peak_bytes == 150 * MiB
    assert str(after.entries[A].tolerance) == "2MiB"  # a per-entry override survives
    assert str(after.tolerance) == "1%"
    assert after.entries["other.py::test_x"].peak_bytes == 2
    assert other.read_bytes() == other_bytes


def test_update_with_nothing_changed_leaves_the_file_byte_identical(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    path = write_baseline(vram_pytester, {A: (100 * MiB, 150 * MiB), B: (0, 8 * MiB)})
    path.write_text(path.read_text() + "# a comment the dumper would drop\n")
    before = path.read_bytes()
    run_vram("--vram-update").assert_outcomes(passed=2)
    assert path.read_bytes() == before


def test_update_with_budget_overrun_still_fails(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_u="""
        import pytest

        @pytest.mark.vram(budget="10MiB")
        def test_a(vram):
            vram.run(vram.backend.spike, 11 * 1024**2)
        """
    )
    result = run_vram("--vram-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["peak +* over the budget 10.0 MiB"])


def test_stale_entries_are_listed_not_deleted(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    entries = {
        A: (100 * MiB, 150 * MiB),
        B: (0, 8 * MiB),
        "test_u.py::test_renamed": (1, 2),  # its test is gone: stale
        f"{A}::train": (1, 2),  # test_a runs but no longer measures "train": stale
        "elsewhere.py::test_x": (1, 2),  # file not collected: a partial run says nothing
    }
    path = write_baseline(vram_pytester, entries)
    before = path.read_bytes()
    result = run_vram()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"stale: {A}::train in baselines/scripted.yaml: no collected test produces it; "
            "delete with `pytest --vram-update --vram-prune`",
            "stale: test_u.py::test_renamed in baselines/scripted.yaml*",
        ]
    )
    assert "elsewhere.py" not in result.stdout.str()
    assert path.read_bytes() == before
    # Without --vram-prune an update keeps them too.
    run_vram("--vram-update").stdout.fnmatch_lines(["stale: test_u.py::test_renamed *"])
    assert set(load(path).entries) == set(entries)


def test_deselected_skipped_and_failed_tests_do_not_make_stale_entries(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_u="""
        import pytest

        def test_a(vram):
            vram.run(vram.backend.spike, 1)

        def test_deselected(vram):
            vram.run(vram.backend.spike, 1)

        @pytest.mark.skip(reason="not today")
        def test_skipped(vram):
            vram.run(vram.backend.spike, 1)

        def test_failing(vram):
            assert False
        """
    )
    keys = ["test_a", "test_deselected", "test_skipped", "test_failing"]
    write_baseline(vram_pytester, {f"test_u.py::{k}": (0, 1) for k in keys})
    result = run_vram("-k", "not deselected")
    result.assert_outcomes(passed=1, skipped=1, failed=1, deselected=1)
    assert "stale:" not in result.stdout.str()


def test_prune_deletes_stale_entries_with_update(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    path = write_baseline(
        vram_pytester,
        {A: (100 * MiB, 150 * MiB), B: (0, 8 * MiB), "test_u.py::test_gone": (1, 2)},
    )
    result = run_vram("--vram-update", "--vram-prune")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pruned: test_u.py::test_gone from baselines/scripted.yaml"])
    assert set(load(path).entries) == {A, B}


def test_malformed_baseline_fails_vram_tests_and_is_left_untouched(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    path = vram_pytester.path / "baselines" / "scripted.yaml"
    path.parent.mkdir()
    path.write_text("profile: scripted\nentries:\n  test_u.py::test_a:\n    peak_bytes: 5.8 GB\n")
    before = path.read_bytes()
    for args in ([], ["--vram-update"]):
        result = run_vram(*args)
        result.assert_outcomes(errors=2)
        result.stdout.fnmatch_lines(
            [
                "*baselines/scripted.yaml: entry 'test_u.py::test_a': model_bytes is missing*",
                "(the file is left untouched; fix it and rerun)",
            ]
        )
        assert path.read_bytes() == before


def test_profile_option_picks_the_file(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    write_baseline(vram_pytester, {A: (100 * MiB, 140 * MiB)})  # would be a regression
    write_baseline(vram_pytester, {A: (100 * MiB, 150 * MiB)}, profile="mine")
    run_vram("--vram-profile=mine", "-k", "test_a").assert_outcomes(passed=1)


def test_baselines_directory_option(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    result = run_vram("--vram-update", "--vram-baselines=store/vram")
    result.stdout.fnmatch_lines(["written: store/vram/scripted.yaml"])
    assert set(load(vram_pytester.path / "store" / "vram" / "scripted.yaml").entries) == {A, B}


def test_baseline_from_another_setup_is_pointed_out(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    path = write_baseline(vram_pytester, {A: (100 * MiB, 150 * MiB), B: (0, 8 * MiB)})
    recorded = load(path)
    baselines.write(dataclasses.replace(recorded, setup={"torch": "2.11.0+cu130"}))
    result = run_vram()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["setup: baselines/scripted.yaml was recorded with torch 2.11.0+cu130 (this run: none)*"]
    )


def test_baseline_from_the_same_setup_gets_no_setup_note(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TWO_TESTS)
    write_baseline(vram_pytester, {A: (100 * MiB, 150 * MiB), B: (0, 8 * MiB)})
    result = run_vram()
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("setup:*")
