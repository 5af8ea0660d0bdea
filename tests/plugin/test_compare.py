"""Runs over time: ``python -m pytest_vram compare / comment / benchmark``, on files written
by real sub-sessions of the scripted backend."""

from __future__ import annotations

import json
import subprocess

from vram_testing import MiB, write_baseline

from pytest_vram.__main__ import main

TESTS = """
    MiB = 1024**2

    def test_a(vram):
        model = vram.build(vram.backend.alloc, 2 * MiB)
        vram.run(vram.backend.spike, {a} * MiB)

    def test_b(vram):
        vram.run(vram.backend.spike, 3 * MiB)
"""


def two_runs(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_c=TESTS.format(a=4))
    run_vram("--vram-json=old.json")
    vram_pytester.makepyfile(test_c=TESTS.format(a=5))
    write_baseline(vram_pytester, {"test_c.py::test_a": (2 * MiB, 6 * MiB)})
    run_vram("--vram-json=new.json", "--vram-markdown=comment.md")
    return vram_pytester.path


def test_json_says_where_and_when(vram_pytester, run_vram):
    path = two_runs(vram_pytester, run_vram)
    run = json.loads((path / "new.json").read_text())["run"]
    assert {"commit", "branch", "time", "machine"} <= set(run)
    assert run["time"].endswith("+00:00") and run["machine"]["host"]


def test_compare_prints_changes_and_writes_markdown(vram_pytester, run_vram, capsys):
    path = two_runs(vram_pytester, run_vram)
    capsys.readouterr()  # the sub-sessions' own output
    code = main(
        [
            "compare",
            str(path / "old.json"),
            str(path / "new.json"),
            "--markdown",
            str(path / "cmp.md"),
            "--fail-on-growth",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # a peak grew
    assert out[1].split() == [
        "test_c.py::test_a",
        "6.0",
        "MiB",
        "7.0",
        "MiB",
        "+1.0",
        "MiB",
        "(+16.67%)",
        "grew",
    ]
    assert "1 grew, 0 shrank, 0 new, 0 gone, of 2" in out
    markdown = (path / "cmp.md").read_text()
    assert "| `test_c.py::test_a` | 6.0 MiB | 7.0 MiB | +1.0 MiB (+16.67%) | grew |" in markdown
    assert "<details><summary>1 unchanged</summary>" in markdown


def test_compare_against_a_branch_baseline(vram_pytester, run_vram, capsys):
    path = two_runs(vram_pytester, run_vram)
    git = ["git", "-C", str(path)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "baselines"], check=True)
    subprocess.run(
        [*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "b"], check=True
    )
    vram_pytester.chdir()
    capsys.readouterr()
    assert main(["compare", "git:main:baselines/scripted.yaml", "new.json"]) == 0
    out = capsys.readouterr().out
    assert "test_c.py::test_a" in out and "+1.0 MiB (+16.67%)  grew" in out
    assert "test_c.py::test_b" in out and "new" in out
    assert main(["compare", "git:nope:baselines/scripted.yaml", "new.json"]) == 2
    assert "git show nope:baselines/scripted.yaml failed" in capsys.readouterr().err


def test_pr_comment_verdict_first_failures_then_details(vram_pytester, run_vram):
    path = two_runs(vram_pytester, run_vram)
    lines = (path / "comment.md").read_text().splitlines()
    assert lines[0].startswith("**:x: VRAM: 1 of 2 measurements failed (regression)")
    assert "largest +1.0 MiB (+16.67%)" in lines[0]
    first = lines.index("### `test_c.py::test_a`: regression")
    details = lines.index("<details><summary>All 2 measurements</summary>")
    assert first < details


def test_benchmark_json_is_custom_smaller_is_better(vram_pytester, run_vram, capsys):
    path = two_runs(vram_pytester, run_vram)
    capsys.readouterr()
    assert main(["benchmark", str(path / "new.json")]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == ["test_c.py::test_a", "test_c.py::test_b"]
    assert entries[0]["unit"] == "bytes" and entries[0]["value"] == 7 * MiB


def test_unreadable_run_is_named(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["compare", str(bad), str(bad)]) == 2
    assert "x.json: neither a --vram-json file" in capsys.readouterr().err
