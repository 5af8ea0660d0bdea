"""Hostile input and faults: a clear message, the summary, a failing exit code.

Each test runs one case of bad input or a fault through a pytester sub-session on the
scripted backend. "No traceback" is checked as: the output contains no ``Traceback`` and no
``INTERNALERROR``, and the message names the file, entry or option.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from vram_testing import MiB, load, write_baseline

from pytest_vram.store import baselines, files

ONE_TEST = """
    MiB = 1024**2

    def test_a(vram):
        vram.run(vram.backend.spike, 8 * MiB)
"""
A = "test_r.py::test_a"


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


# --------------------------------------------------------------------------- exit codes


def test_xfail_test_whose_memory_fails_is_a_failure(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        import pytest
        MiB = 1024**2

        @pytest.mark.xfail(reason="flaky body")
        @pytest.mark.vram(budget="4MiB")
        def test_a(vram):
            vram.run(vram.backend.spike, 8 * MiB)
        """
    )
    result = run_vram("--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    junit = (vram_pytester.path / "junit.xml").read_text()
    assert 'failures="1"' in junit and 'skipped="0"' in junit


# ------------------------------------------------------------ report and baseline paths


@pytest.mark.parametrize("option", ["--vram-json", "--vram-markdown"])
def test_report_path_over_a_baseline_file_is_refused(vram_pytester, run_vram, option):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    path = write_baseline(vram_pytester, {A: (0, 8 * MiB)})
    before = path.read_bytes()
    result = run_vram(f"{option}=baselines/scripted.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option}=*scripted.yaml would overwrite a baseline*"])
    assert path.read_bytes() == before


def test_json_and_markdown_on_one_file_are_refused(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    result = run_vram("--vram-json=out.txt", "--vram-markdown=out.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vram-markdown and --vram-json both name *out.txt*"])


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_update_writes_through_a_symlinked_baseline(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    target = write_baseline(vram_pytester, {A: (0, 4 * MiB)})
    shared = vram_pytester.path / "shared"
    shared.mkdir()
    real = shared / "scripted.yaml"
    target.rename(real)
    target.symlink_to(real)
    result = run_vram("--vram-update")
    result.assert_outcomes(passed=1)
    assert target.is_symlink()
    assert load(real).entries[A].peak_bytes == 8 * MiB


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_update_refuses_a_read_only_baseline(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    path = write_baseline(vram_pytester, {A: (0, 4 * MiB)})
    before = path.read_bytes()
    path.chmod(0o444)
    result = run_vram("--vram-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*== VRAM ==*", "error: *scripted.yaml: the baseline file is read-only (mode 0444)*"]
    )
    assert path.read_bytes() == before and path.stat().st_mode & 0o777 == 0o444
    no_traceback(result)


# --------------------------------------------- bad values in baseline files and markers


_NOT_BYTES = "peak_bytes must be a non-negative integer number of bytes, got"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-13-45", f"{_NOT_BYTES} '2024-13-45'"),
        ('!!int "abc"', "invalid YAML: tag !!int is not allowed*"),
        ("!!float abc", "invalid YAML: tag !!float is not allowed*"),
        ("!!timestamp x", "invalid YAML: tag !!timestamp is not allowed*"),
        ("9" * 5000, f"{_NOT_BYTES} '9999*"),
        ("52:25:48", f"{_NOT_BYTES} '52:25:48'"),  # not the base-60 number 188748
    ],
    ids=["date", "int-tag", "float-tag", "timestamp-tag", "5000-digits", "base-60"],
)
def test_bad_yaml_value_names_the_file_also_with_a_profile(vram_pytester, run_vram, value, message):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    path = vram_pytester.path / "baselines" / "scripted.yaml"
    path.parent.mkdir()
    path.write_text(
        f"profile: scripted\nentries:\n  {A}:\n    model_bytes: 0\n    peak_bytes: {value}\n"
    )
    result = run_vram("--vram-profile=scripted", "--vram-json=out.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*baselines/scripted.yaml*: {message}*"])
    assert (vram_pytester.path / "out.json").exists()  # session finish completed
    no_traceback(result)


def test_huge_budget_is_a_marker_error(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r=f"""
        import pytest

        @pytest.mark.vram(budget="{"9" * 100_000}B")
        def test_a(vram):
            vram.run(vram.backend.spike, 1)
        """
    )
    result = run_vram("--vram-json=out.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*@pytest.mark.vram: budget: *larger than 16 EiB*"])
    no_traceback(result)


# ------------------------------------------------------------------------- write errors


def _fail_with(exc: OSError):
    def fail(*args: object) -> int:
        raise exc

    return fail


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied"),  # read-only baselines directory
        OSError(errno.ENOSPC, "No space left on device"),  # full disk
    ],
    ids=["read-only-dir", "disk-full"],
)
def test_write_error_at_update_is_reported_after_the_table(
    vram_pytester, run_vram, monkeypatch, exc
):
    # Tests run as root here, where chmod cannot make a directory read-only: the error
    # the file system would give is injected where the temporary file is created.
    vram_pytester.makepyfile(test_r=ONE_TEST)
    path = write_baseline(vram_pytester, {A: (0, 4 * MiB)})
    before = path.read_bytes()
    monkeypatch.setattr(files, "_open_temp", _fail_with(exc))
    result = run_vram("--vram-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*== VRAM ==*",
            f"{A}  *",
            f"error: *scripted.yaml: cannot write the baseline file ({exc.strerror}*",
            "*1 passed*",
        ]
    )
    assert path.read_bytes() == before
    no_traceback(result)


@pytest.mark.parametrize("option", ["--vram-json", "--vram-markdown"])
@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_unwritable_report_path_is_an_error_not_a_traceback(vram_pytester, run_vram, option, where):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    (vram_pytester.path / "taken").mkdir() if where == "directory" else None
    (vram_pytester.path / "file").write_text("") if where == "under-a-file" else None
    target = "taken" if where == "directory" else "file/report.out"
    result = run_vram(f"{option}={target}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*== VRAM ==*", f"error: {option}=*: cannot write the report*"])
    no_traceback(result)


def test_unwritable_report_path_when_no_vram_test_ran(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r="def test_plain():\n    pass\n")
    (vram_pytester.path / "taken").mkdir()
    result = run_vram("--vram-json=taken")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["error: --vram-json=taken: cannot write the report*"])
    no_traceback(result)


def test_unwritable_report_path_under_xdist(vram_pytester, run_vram_subprocess):
    pytest.importorskip("xdist")
    vram_pytester.makepyfile(test_r=ONE_TEST)
    (vram_pytester.path / "taken").mkdir()
    result = run_vram_subprocess("-n", "2", "--vram-json=taken")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["error: --vram-json=taken: cannot write the report*"])
    no_traceback(result)


# ---------------------------------------------------------------------- broken backends

BROKEN_BACKENDS = {
    "abstract": ("pytest_vram.backends.base:Backend", "*is abstract: implement *"),
    "needs-args": ("broken_backend:NeedsArgs", "*cannot be created without arguments*"),
    "warmup": ("broken_backend:BrokenDriver", "*RuntimeError: CUDA driver version is insuff*"),
    "syntax": ("broken_syntax:Backend", "*cannot import*SyntaxError*"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_BACKENDS))
def test_broken_backend_fails_each_test_without_a_traceback(vram_pytester, run_vram, case):
    target, message = BROKEN_BACKENDS[case]
    vram_pytester.makepyfile(
        broken_backend="""
        from vram_scripted import ScriptedBackend

        class NeedsArgs(ScriptedBackend):
            def __init__(self, device):
                super().__init__()

        class BrokenDriver(ScriptedBackend):
            def warmup(self):
                raise RuntimeError("CUDA driver version is insufficient for CUDA runtime")
        """,
        broken_syntax="def broken(:\n",
        test_r=ONE_TEST,
    )
    result = run_vram(backend=f"--vram-backend={target}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)  # at the fixture's setup, before the test body
    result.stdout.fnmatch_lines([f"*--vram-backend={target}: {message}"])
    no_traceback(result)


def test_unsafe_profile_of_a_backend_is_not_blamed_on_vram_profile(
    vram_pytester, run_vram, monkeypatch
):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    monkeypatch.setenv("VRAM_SCRIPTED_PROFILE", "../escape")
    result = run_vram()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--vram-backend=*: its profile(): profile name '../escape'*"])
    assert "--vram-profile" not in result.stdout.str()


# --------------------------------------------------------------- nothing silently wrong


def test_nested_run_keeps_the_outer_peak(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        MiB = 1024**2

        def test_a(vram):
            def outer():
                vram.backend.spike(10 * MiB)
                vram.run(vram.backend.spike, 1 * MiB, name="inner")
            vram.run(outer, name="outer")
        """
    )
    run_vram("--vram-json=out.json").assert_outcomes(passed=1)
    peaks = {
        m["name"]: m["peak_bytes"]
        for m in json.loads((vram_pytester.path / "out.json").read_text())["measurements"]
    }
    assert peaks == {"outer": 10 * MiB, "inner": 1 * MiB}


def test_two_tests_with_one_key_both_fail(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        import pytest

        @pytest.mark.vram(key="shared")
        def test_a(vram):
            vram.run(vram.backend.spike, 1)

        @pytest.mark.vram(key="shared")
        def test_b(vram):
            vram.run(vram.backend.spike, 2)
        """
    )
    result = run_vram("--vram-update")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*test_r.py::test_a: baseline key 'shared' is also used by test_r.py::test_b*"]
    )
    assert not (vram_pytester.path / "baselines" / "scripted.yaml").exists()


@pytest.mark.parametrize("where", ["option", "ini"])
def test_empty_baselines_directory_is_a_usage_error(vram_pytester, run_vram, where):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    if where == "ini":
        vram_pytester.makeini("[pytest]\nvram_baselines =\n")
    result = run_vram(*(["--vram-baselines="] if where == "option" else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    source = "--vram-baselines" if where == "option" else "vram_baselines (ini)"
    result.stderr.fnmatch_lines([f"ERROR: {source} is empty, which would mean the rootdir*"])


@pytest.mark.parametrize(
    "body",
    [
        "assert vram.device",  # never measures
        "try:\n        vram.run(boom)\n    except ValueError:\n        pass",  # swallows
    ],
    ids=["no-run", "swallowed"],
)
def test_strict_vram_test_that_measured_nothing_fails(vram_pytester, run_vram, body):
    source = 'def boom():\n    raise ValueError("workload failed")\n\n\ndef test_a(vram):\n'
    vram_pytester.makepyfile(test_r=source + f"    {body}\n")
    result = run_vram("--vram-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{A}: is a vram test but measured nothing (--vram-strict)*"])
    run_vram().assert_outcomes(passed=1)  # not strict: allowed


def test_entry_of_a_test_that_stopped_measuring_is_stale(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r="def test_a(vram):\n    assert vram.device\n")
    write_baseline(vram_pytester, {A: (0, 8 * MiB)})
    result = run_vram()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"stale: {A} in baselines/scripted.yaml: *"])


def test_conflicting_stacked_markers_are_refused(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        import pytest

        @pytest.mark.vram(budget="8GiB")
        @pytest.mark.vram(budget="4GiB", tolerance="1%")
        def test_a(vram):
            vram.run(vram.backend.spike, 1)
        """
    )
    result = run_vram()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*two @pytest.mark.vram markers set budget differently ('4GiB' and '8GiB')*"]
    )


# ---------------------------------------------- options, ini values and the vram object


def test_nan_tolerance_does_not_suggest_nan_percent(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        import pytest

        @pytest.mark.vram(tolerance=float("nan"))
        def test_a(vram):
            vram.run(vram.backend.spike, 1)
        """
    )
    result = run_vram()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*tolerance must be a finite tolerance such as '0.5%'*nan*"])
    assert "'nan%'" not in result.stdout.str()


def test_bad_ini_bool_names_the_key(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    vram_pytester.makeini("[pytest]\nvram_update = maybe\n")
    result = run_vram()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: vram_update (ini): *'maybe'*; write true or false*"])


def test_quoted_ini_value_is_read_without_its_quotes(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    write_baseline(vram_pytester, {A: (0, 8 * MiB - 1024)})
    vram_pytester.makeini("[pytest]\nvram_tolerance = '0.5%'\n")
    run_vram().assert_outcomes(passed=1)  # 1 KiB over 8 MiB is within 0.5%


def test_vram_object_reused_in_a_later_test_says_so(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_r="""
        kept = []

        def test_a(vram):
            kept.append(vram)
            vram.run(vram.backend.spike, 1)

        def test_b(vram):
            kept[0].run(vram.backend.spike, 1)
        """
    )
    result = run_vram()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*belongs to test_r.py::test_a, which has finished*"])
    assert "called more than once" not in result.stdout.str()


# ---------------------------------------------------------------- one parse per session


def test_baseline_file_is_parsed_once_per_session(vram_pytester, run_vram, monkeypatch):
    vram_pytester.makepyfile(test_r=ONE_TEST)
    write_baseline(vram_pytester, {A: (0, 4 * MiB), "test_r.py::test_gone": (0, 1)})
    calls: list[Path] = []
    real_parse = baselines.parse

    def counting_parse(text: str, path: Path) -> baselines.BaselineFile:
        calls.append(Path(path))
        return real_parse(text, path)

    monkeypatch.setattr(baselines, "parse", counting_parse)
    result = run_vram("--vram-update", "--vram-json=out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["updated: *", "stale: test_r.py::test_gone *"])
    assert len(calls) == 1, calls  # judging, stale entries, setup and the update share it
