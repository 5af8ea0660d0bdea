"""What a run leaves behind: the VRAM section, ``--vram-json``, ``--vram-markdown``, JUnit
properties, leaks; and that all of it survives xdist."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

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
