"""What a run leaves behind: the VRAM section, ``--vram-json``, ``--vram-markdown``, JUnit
properties, leaks; and that all of it survives xdist."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from vram_testing import MiB, load, write_baseline

LEAKY = """
    import pytest

    MiB = 1024**2
    KEEP = []

    def test_clean(vram):
        model = vram.build(vram.backend.alloc, 3 * MiB)
        vram.run(vram.backend.spike, 1 * MiB)

    @pytest.mark.vram(budget="1GiB")
    def test_leaky(vram):
        vram.run(lambda: KEEP.append(vram.backend.alloc(5 * MiB)))
"""


def test_json_and_markdown_files(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=LEAKY)
    write_baseline(vram_pytester, {"test_o.py::test_clean": (3 * MiB, 4 * MiB)})
    result = run_vram("--vram-json=out/vram.json", "--vram-markdown=out/vram.md")
    result.assert_outcomes(passed=2)
    document = json.loads((vram_pytester.path / "out" / "vram.json").read_text())
    assert document["version"] == 1
    clean, leaky = document["measurements"]
    assert clean["key"] == "test_o.py::test_clean"
    assert (clean["model_bytes"], clean["peak_bytes"], clean["activation_bytes"]) == (
        3 * MiB,
        4 * MiB,
        1 * MiB,
    )
    assert clean["baseline_peak_bytes"] == 4 * MiB and clean["verdict"] == "pass"
    assert clean["leaked_bytes"] == 0
    assert clean["context"]["backend"] == "scripted" and "plugin" in clean["context"]
    assert leaky["verdict"] == "new" and leaky["budget"] == 1024 * MiB
    assert leaky["leaked_bytes"] == 5 * MiB
    markdown = (vram_pytester.path / "out" / "vram.md").read_text()
    header = "| test | params | model | peak | activation | reserved | baseline | delta | verdict |"
    assert header in markdown
    assert "| `test_o.py::test_clean` | - | 3.0 MiB | 4.0 MiB | 1.0 MiB | - | 4.0 MiB |" in markdown


def test_leak_is_reported_with_its_size(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=LEAKY)
    result = run_vram()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["leak: test_o.py::test_leaky: 5.0 MiB still allocated after the test"]
    )
    assert "leak: test_o.py::test_clean" not in result.stdout.str()


def test_junit_xml_carries_the_measurements(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=LEAKY)
    run_vram("--junitxml=junit.xml").assert_outcomes(passed=2)
    root = ET.parse(vram_pytester.path / "junit.xml").getroot()
    values = [json.loads(p.get("value")) for p in root.iter("property") if p.get("name") == "vram"]
    assert [v["key"] for v in values] == ["test_o.py::test_clean", "test_o.py::test_leaky"]
    assert values[1]["leaked_bytes"] == 5 * MiB


def test_table_fits_120_columns_with_long_keys(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_o="""
        import pytest

        @pytest.mark.parametrize("size", ["a-rather-long-parameter-id-" * 3])
        def test_long(vram, size):
            vram.run(vram.backend.spike, 5947 * 1024**2 + 300 * 1024)
        """
    )
    result = run_vram()
    table = result.stdout.str().split(" VRAM ")[1].split("\nnew: ")[0]
    assert all(len(line) <= 120 for line in table.splitlines())
    # The file is named once above the table; each row stays one line.
    result.stdout.fnmatch_lines(["test_o.py:", "test_long[[]a-rather-long*  5947.3 MiB * new"])


@pytest.mark.parametrize("columns", [80, 100])
def test_table_fits_the_terminal_by_dropping_columns(vram_pytester, run_vram, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    vram_pytester.makepyfile(
        test_o="""
        import pytest

        @pytest.mark.parametrize("preset", ["standard", "maximum"])
        @pytest.mark.parametrize("phase", ["phase7", "phase8"])
        def test_inference_of_the_model(vram, preset, phase):
            vram.run(vram.backend.spike, 5947 * 1024**2 + 300 * 1024)
        """
    )
    result = run_vram()
    table = result.stdout.str().split(" VRAM ")[1].split("\nnew: ")[0].splitlines()[1:]
    assert all(len(line) <= columns for line in table), table
    header = next(line for line in table if line.startswith("test "))
    assert header.split()[-3:] == ["peak", "baseline" if columns == 100 else "delta", "verdict"][
        -3:
    ] or header.split()[-3:] == ["baseline", "delta", "verdict"]
    assert "activation" not in header
    rows = [line for line in table if "5947.3 MiB" in line]
    assert "test_o.py:" in table  # named once, the rows carry the rest of the key
    assert len(rows) == 4 and all(row.startswith("test_inference_of_the_model[") for row in rows)


XDIST_TESTS = """
    import pytest

    MiB = 1024**2

    @pytest.mark.parametrize("n", range(1, 9))
    def test_many(vram, n):
        model = vram.build(vram.backend.alloc, n * MiB)
        vram.run(vram.backend.spike, n * MiB, name="infer")
        vram.run(vram.backend.spike, 2 * n * MiB, name="train")
"""


@pytest.fixture
def xdist_args() -> list[str]:
    # Run in a subprocess: xdist gives its workers the sys.path it saw when first imported,
    # which in this process predates the scripted backend's directory.
    pytest.importorskip("xdist")
    return ["-p", "xdist", "-n", "2"]


def test_xdist_reports_every_measurement_and_updates_once(
    vram_pytester, run_vram_subprocess, xdist_args
):
    vram_pytester.makepyfile(test_x=XDIST_TESTS)
    path = write_baseline(vram_pytester, {"test_x.py::test_gone": (1, 2)})
    result = run_vram_subprocess(*xdist_args, "--vram-update", "--vram-json=vram.json")
    result.assert_outcomes(passed=8)
    for n in range(1, 9):
        result.stdout.fnmatch_lines(
            [f"test_x.py::test_many[[]{n}[]]::train * {n}.0 MiB * {3 * n}.0 MiB * new"]
        )
    result.stdout.fnmatch_lines(["stale: test_x.py::test_gone in baselines/scripted.yaml*"])
    entries = load(path).entries
    assert len(entries) == 17  # 8 tests x 2 workloads + the stale entry, kept without prune
    assert entries["test_x.py::test_many[8]::train"].peak_bytes == 24 * MiB
    measurements = json.loads((vram_pytester.path / "vram.json").read_text())["measurements"]
    assert len(measurements) == 16
    # A second run judges against the file the first one wrote (test_gone stays stale).
    run_vram_subprocess(*xdist_args, "--vram-strict", "--vram-stale-warn").assert_outcomes(passed=8)


def test_xdist_regression_fails_on_the_worker_and_reaches_the_controller(
    vram_pytester, run_vram_subprocess, xdist_args
):
    vram_pytester.makepyfile(test_x=XDIST_TESTS)
    write_baseline(vram_pytester, {"test_x.py::test_many[3]::train": (3 * MiB, 8 * MiB)})
    result = run_vram_subprocess(*xdist_args, "-k", "3 or 4")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED test_x.py::test_many[[]3[]] - train: peak +1.0 MiB (+12.50%): memory regression*"]
    )


def test_header_names_backend_profile_baselines_strict_and_metric(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=LEAKY)
    result = run_vram("--vram-strict", "--vram-profile=mine")
    result.stdout.fnmatch_lines(
        [
            "vram: backend *, profile mine, baselines baselines/, strict on, attribution auto, "
            "allocator expandable"
        ]
    )


def test_verbose_shows_each_peak_beside_its_result(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_o="""
        def test_a(vram):
            vram.run(vram.backend.spike, 3 * 1024**2)

        def test_plain():
            pass
        """
    )
    result = run_vram("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_o.py::test_a PASSED (peak 3.0 MiB)*"])
    result.stdout.fnmatch_lines(["test_o.py::test_plain PASSED *"])
    assert "test_plain PASSED (peak" not in result.stdout.str()


# ------------------------------------------------------------------ where reports may go

ONE = """
    def test_a(vram):
        vram.run(vram.backend.spike, 4096)
"""
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="device nodes and FIFOs")


def _no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


def _device(directory: Path, kind: int, major: int, minor: int) -> Path | None:
    path = directory / f"node-{major}-{minor}"
    try:
        os.mknod(path, 0o666 | kind, os.makedev(major, minor))
    except (PermissionError, AttributeError):
        return None
    return path


@posix_only
@pytest.mark.parametrize("option", ["--vram-json", "--vram-markdown"])
@pytest.mark.parametrize("how", ["node", "symlink"])
def test_a_report_to_a_character_device_never_replaces_it(vram_pytester, run_vram, option, how):
    # As root, a rename over /dev/null would replace the device with a file. A device node
    # of our own (the same /dev/null) shows it without touching the real one, which the
    # test must never name: if it failed, it would break the machine's /dev/null.
    vram_pytester.makepyfile(test_o=ONE)
    node = _device(vram_pytester.path, stat.S_IFCHR, 1, 3)
    if node is None:
        pytest.skip("mknod needs root")
    target = node
    if how == "symlink":
        target = vram_pytester.path / "null-link"
        target.symlink_to(node)
    before = os.stat(target)
    result = run_vram(f"{option}={target}")
    assert result.ret == pytest.ExitCode.OK
    after = os.stat(target)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert how == "node" or target.is_symlink()
    assert not [p for p in os.listdir(vram_pytester.path) if p.endswith(".tmp")]


@posix_only
def test_a_report_to_a_fifo_reaches_its_reader(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=ONE)
    fifo = vram_pytester.path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_vram(f"--vram-json={fifo}")
    reader.join(timeout=60)
    assert result.ret == pytest.ExitCode.OK
    assert json.loads(received[0])["measurements"][0]["key"] == "test_o.py::test_a"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@posix_only
def test_a_report_to_a_fifo_nobody_reads_is_an_error_not_a_hang(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=ONE)
    os.mkfifo(vram_pytester.path / "report.fifo")
    result = run_vram("--vram-json=report.fifo")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["error: --vram-json=report.fifo: cannot write the report (no process reads it*"]
    )
    _no_traceback(result)


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="needs /dev/stdout")
def test_a_report_to_dev_stdout_comes_out_with_the_run(vram_pytester, run_vram_subprocess):
    vram_pytester.makepyfile(test_o=ONE)
    result = run_vram_subprocess("--vram-json=/dev/stdout")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    document, _end = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert document["measurements"][0]["key"] == "test_o.py::test_a"
    result.stdout.fnmatch_lines(["*== VRAM ==*", "*1 passed*"])  # the summary is still there


@posix_only
@pytest.mark.parametrize("what", ["block-device", "socket"])
def test_a_report_never_replaces_a_block_device_or_a_socket(vram_pytester, run_vram, what):
    vram_pytester.makepyfile(test_o=ONE)
    if what == "socket":
        target = vram_pytester.path / "sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind("sock")  # relative (pytester's directory): the full path may be too long
    else:
        target = _device(vram_pytester.path, stat.S_IFBLK, 7, 0)
        if target is None:
            pytest.skip("mknod needs root")
    kind = stat.S_IFMT(os.stat(target).st_mode)
    result = run_vram(f"--vram-json={target.name}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            f"error: --vram-json={target.name}: cannot write the report (it is a *, not a regular "
            "file: never replaced); give the path of a file*"
        ]
    )
    assert stat.S_IFMT(os.stat(target).st_mode) == kind
    _no_traceback(result)


@pytest.mark.parametrize("option", ["--vram-json", "--vram-markdown"])
@pytest.mark.parametrize(
    ("where", "what"),
    [
        ("baselines/breakdowns/scripted.yaml", "a breakdowns store"),
        ("baselines/cudnn-workspaces/sm90_cudnn91900.yaml", "a convolution workspace file"),
    ],
    ids=["breakdowns", "workspaces"],
)
def test_a_report_never_overwrites_a_stored_file(vram_pytester, run_vram, option, where, what):
    vram_pytester.makepyfile(test_o=ONE)
    stored = vram_pytester.path / where
    stored.parent.mkdir(parents=True)
    stored.write_text("entries: {}\n")
    result = run_vram(f"{option}={where}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: {option}={where} would overwrite {what} in baselines; write the report *"]
    )
    assert stored.read_text() == "entries: {}\n"
    _no_traceback(result)


@pytest.mark.skipif(not os.path.exists("/proc/version"), reason="needs /proc")
def test_a_report_to_a_read_only_file_says_so(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_o=ONE)
    kept = vram_pytester.path / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o444)
    before = Path("/proc/version").read_text()
    result = run_vram("--vram-json=/proc/version", "--vram-markdown=kept.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "error: --vram-json=/proc/version: cannot write the report (it is read-only, mode "
            "0444); make it writable or give another file path",
            "error: --vram-markdown=kept.json: cannot write the report (it is read-only, mode "
            "0444)*",
        ]
    )
    assert Path("/proc/version").read_text() == before and kept.read_text() == "{}"
    assert "No such file or directory" not in result.stdout.str()
    _no_traceback(result)


@pytest.mark.parametrize("option", ["--vram-json", "--vram-markdown", "--vram-artifacts"])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_output_path_is_a_usage_error(vram_pytester, run_vram, option, value):
    vram_pytester.makepyfile(test_o=ONE)
    result = run_vram(f"{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option} is empty; give a *, e.g. {option}=*"])


def test_an_empty_output_path_in_the_ini_file_is_the_default(vram_pytester, run_vram):
    vram_pytester.makeini("[pytest]\nvram_json =\nvram_markdown =\n")
    vram_pytester.makepyfile(test_o=ONE)
    assert run_vram().ret == pytest.ExitCode.OK
