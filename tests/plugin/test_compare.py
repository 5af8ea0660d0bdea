"""Runs over time: ``python -m pytest_vram compare / comment / benchmark``, on files written
by real sub-sessions of the scripted backend."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vram_testing import REPO, MiB, write_baseline

from pytest_vram.__main__ import main
from pytest_vram.cli.runs import FIELDS, load_run
from pytest_vram.core.fit import Largest, Probe
from pytest_vram.core.records import Outcome, Record
from pytest_vram.core.units import Tolerance
from pytest_vram.core.verdicts import Cause, Kind, OffDevice, Verdict
from pytest_vram.render import json_report
from pytest_vram.render.plots import chart_keys

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


# --------------------------------------------------------------------------- hostile input
#
# Every command validates every input before it works: a file that is not what it should
# be exits 2 with one line naming the file, what is wrong and the fix, and nothing is
# written.


def record(key: str = "t.py::test_a", peak: int = 7 * MiB, **fields) -> Record:
    values = dict(
        key=key, nodeid=key, name=None, profile="scripted", baseline_path="baselines/scripted.yaml",
        params=None, model_bytes=2 * MiB, peak_bytes=peak, setup={"backend": "scripted"},
        tolerance=Tolerance(), budget=None, baseline_model_bytes=2 * MiB,
        baseline_peak_bytes=6 * MiB, verdicts=(Verdict(Kind.REGRESSION, True),),
    )  # fmt: skip
    values.update(fields)
    return Record(**values)


def vram_json(*records: Record) -> dict:
    """A --vram-json document as the plugin writes it."""
    return json.loads(json_report.document(Outcome(records=list(records or [record()]))))


def measurement(**changes) -> bytes:
    document = vram_json()
    document["measurements"][0].update(changes)
    return json.dumps(document).encode()


def without(field: str) -> bytes:
    document = vram_json()
    del document["measurements"][0][field]
    return json.dumps(document).encode()


HOSTILE = {
    "not UTF-8": (b'{"version": 1, "measurements": []}\xff', "not UTF-8 text (byte 34: b'\\xff')"),
    "a JSON list": (b"[]", "got a list"),
    "not JSON": (b'{"version": 1,', "not valid JSON (Expecting property name"),
    "measurements null": (json.dumps({"version": 1, "measurements": None}).encode(),
                          "measurements must be a list, got null"),
    "no peak_bytes": (without("peak_bytes"), "measurements[0] ('t.py::test_a'): 'peak_bytes' "
                      "is missing"),
    "a string figure": (measurement(peak_bytes="7 MiB"), "peak_bytes must be a non-negative "
                        "integer number of bytes below 2**64, got a string '7 MiB'"),
    "a NaN figure": (measurement(peak_bytes=float("nan")), "holds NaN (not a JSON number)"),
    "a fractional figure": (measurement(model_bytes=1.5), "model_bytes must be a non-negative"),
    "a boolean figure": (measurement(peak_bytes=True), "got a boolean True"),
    "a negative figure": (measurement(peak_bytes=-1), "got int -1"),
    "unknown version": (json.dumps({**vram_json(), "version": 2}).encode(),
                        "--vram-json version 2 is not the one this pytest-vram reads (1)"),
    "a key twice": (json.dumps({**vram_json(record(), record())}).encode(),
                    "measurements[0] and measurements[1] both have key 't.py::test_a'"),
    "a duplicate JSON key": (b'{"version": 1, "version": 1, "measurements": []}',
                             "key 'version' appears twice in one JSON object"),
    "a lone surrogate": (measurement(key="t.py::\ud800"), "measurements[0].key holds an "
                         "unpaired surrogate escape ('\\ud800')"),
    "an empty time": (measurement(time={}), "time must be an object of the timed rounds"),
    "a list as largest": (measurement(largest=[]), "largest must be an object of the largest "
                          "value that fits"),
    "a string as off_device": (measurement(off_device="cpu"), "off_device must be an object of "
                               "what is not on the device"),
    "a number as card": (measurement(card=8), "card must be a string, got int 8"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a 5000-digit figure": (b'{"version": 1, "measurements": [{"key": "k", "model_bytes": 0, '
                            b'"peak_bytes": ' + b"9" * 5000 + b"}]}", "not valid JSON"),
}  # fmt: skip


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["compare", "comment", "benchmark", "chart"])
@pytest.mark.parametrize("case", HOSTILE, ids=lambda case: case.replace(" ", "-"))
def test_hostile_run_file_is_one_line_error_and_exit_2(tmp_path, capsys, command, case):
    content, message = HOSTILE[case]
    bad = tmp_path / "run.json"
    bad.write_bytes(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(vram_json()))
    out = tmp_path / "out.png"
    argv = {
        "compare": ["compare", str(good), str(bad), "--fail-on-growth"],
        "comment": ["comment", str(bad), "-o", str(out)],
        "benchmark": ["benchmark", str(bad), "-o", str(out)],
        "chart": ["chart", str(bad), "-o", str(out)],
    }[command]
    if command == "chart":
        pytest.importorskip("matplotlib")
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {bad}: ") and message in line
    assert not out.exists()


def test_every_field_a_record_writes_is_checked_when_read_back():
    written = set(vram_json()["measurements"][0]) - {"activation_bytes", "verdict"}
    assert written - set(FIELDS) == set()


def test_a_record_with_every_optional_part_reads_back_into_a_comment(tmp_path):
    """The answer of vram.largest (its probes and the lost baseline), figures not on the
    device with their causes, a card and the timed rounds: what the plugin writes, the
    command line reads."""
    largest = Largest(
        value=4, low=1, high=64, step=1, card="8GiB",
        probes=(Probe(4, True, 5 * MiB), Probe(5, False, 9 * MiB)),
        lost={"value": 5, "peak_bytes": 9 * MiB, "breakdown": None},
    )  # fmt: skip
    off = OffDevice(
        step="vram.build(make)", device="cuda:0", backend="estimate", params=10,
        elsewhere=("cpu",), causes=(Cause("import-time device", "DEVICE", "cpu", "t.py:3"),),
    )  # fmt: skip
    timed = {"rounds": 3, "min_s": 0.1, "median_s": 0.2, "mean_s": 0.2, "backend": "cuda",
             "gpu": True}  # fmt: skip
    records = [
        record(largest=largest, baseline_largest=5, baseline_card="8GiB", card="8GiB",
               card_note="an upper bound", time=timed),
        record("t.py::test_b", off_device=off),
    ]  # fmt: skip
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json(*records)))
    out = tmp_path / "comment.md"
    assert main(["comment", str(run), "-o", str(out)]) == 0
    assert "`t.py::test_a`" in out.read_text()


def test_unknown_version_does_not_pass_as_an_empty_run(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(vram_json(record(peak=6 * MiB))))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"version": 3, "measurements": {"t.py::test_a": 1}}))
    assert main(["compare", str(old), str(new), "--fail-on-growth"]) == 2
    assert "version 3 is not the one this pytest-vram reads" in error_line(capsys)


def test_a_baseline_file_is_read_with_the_bounded_loader(tmp_path, capsys):
    baseline = tmp_path / "scripted.yaml"
    baseline.write_text(
        "profile: scripted\nentries:\n  a: &f {model_bytes: 1, peak_bytes: 2}\n  b: *f\n"
    )
    new = tmp_path / "new.json"
    new.write_text(json.dumps(vram_json()))
    assert main(["compare", str(baseline), str(new)]) == 2
    assert f"{baseline}, line 3, column 6: invalid YAML: anchor &f" in error_line(capsys)
    baseline.write_text("profile: scripted\nentries:\n  a: {model_bytes: 3, peak_bytes: 2}\n")
    assert main(["compare", str(baseline), str(new)]) == 2
    assert "peak_bytes (2) must be at least model_bytes (3)" in error_line(capsys)


def test_a_git_ref_is_never_read_as_an_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = f"git:--output={tmp_path / 'x'}:baselines/scripted.yaml"
    assert main(["compare", spec, spec]) == 2
    assert "a git ref cannot start with '-'" in error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_missing_or_bad_breakdowns_file_is_an_error(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json()))
    out = tmp_path / "comment.md"
    missing = tmp_path / "breakdowns" / "scripted.yaml"
    assert main(["comment", str(run), "--breakdowns", str(missing), "-o", str(out)]) == 2
    assert f"error: {missing}: no such file; check the path" == error_line(capsys)
    missing.parent.mkdir()
    for text, message in [
        (b"entries:\n  a: \xff\n", "not UTF-8 text"),
        (b"entries: &e {}\n", "anchor &e is not allowed in a breakdowns store"),
        (b"entries:\n  a: {'x (parameters)': -5}\n", "bytes must be a non-negative integer"),
        (b"- 1\n", "expected a mapping with keys about, entries, got a list"),
        (b"about: {}\nentries: {}\nextra: 1\n", "unknown top-level key 'extra'"),
    ]:
        missing.write_bytes(text)
        assert main(["comment", str(run), "--breakdowns", str(missing), "-o", str(out)]) == 2
        assert message in error_line(capsys)
    assert not out.exists()
    missing.write_text("entries:\n  t.py::test_a:\n    x (parameters): 1024\n")
    assert main(["comment", str(run), "--breakdowns", str(missing), "-o", str(out)]) == 0
    assert out.read_text().startswith("**:x: VRAM: 1 of 1 measurements failed")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (".", "is a directory; give a file name inside it"),
        ("run.json/out.md", "run.json is a file, not a directory"),
        ("readonly.md", "the file is read-only (mode 0444)"),
        ("", "-o: empty path"),
    ],
)
def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch, target,
                                                      message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(vram_json()))
    (tmp_path / "readonly.md").write_text("kept\n")
    (tmp_path / "readonly.md").chmod(0o444)
    for command in ("comment", "benchmark"):
        assert main([command, "run.json", "-o", target]) == 2
        assert message in error_line(capsys)
    assert (tmp_path / "readonly.md").read_text() == "kept\n"


def device(tmp_path: Path, name: str, minor: int) -> Path:
    """A character device of the machine's own (1, minor: 3 null, 7 full) under tmp_path,
    so that the test does not depend on (or touch) the machine's /dev."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        pytest.skip("creating a device node needs root (mknod)")
    return path


def test_output_to_a_device_writes_into_it_and_never_replaces_it(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json()))
    null, full = device(tmp_path, "null", 3), device(tmp_path, "full", 7)
    assert main(["benchmark", str(run), "-o", str(null)]) == 0
    assert stat.S_ISCHR(null.stat().st_mode)
    assert main(["comment", str(run), "-o", str(full)]) == 2
    assert f"{full}: cannot write it (No space left on device)" in error_line(capsys)
    assert stat.S_ISCHR(full.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "null", "run.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and device nodes")
def test_output_to_a_pipe_nobody_reads_is_an_error_not_a_hang(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json()))
    os.mkfifo(tmp_path / "fifo")
    done = subprocess.run(
        [sys.executable, "-m", "pytest_vram", "benchmark", str(run), "-o", "fifo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: fifo: cannot write it (no process reads it); choose a writable path\n"
    )
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)


def test_output_to_a_block_device_is_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json()))
    node = tmp_path / "blk"
    try:  # a loop device's numbers, under tmp_path: never the machine's /dev
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except (PermissionError, AttributeError):
        pytest.skip("creating a device node needs root (mknod)")
    before = node.stat()
    assert main(["comment", str(run), "-o", str(node)]) == 2
    assert f"{node}: it is a block device, which is never written or replaced" in error_line(capsys)
    after = node.stat()
    assert (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino,
        before.st_mode,
        before.st_rdev,
    )


def test_chart_refuses_an_unknown_image_format_before_reading(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json()))
    for name, said in [("chart.xyz", "unknown image format '.xyz'"), ("chart", "no image format")]:
        assert main(["chart", str(tmp_path / "missing.json"), "-o", str(tmp_path / name)]) == 2
        line = error_line(capsys)
        assert said in line and "one of" in line and "png" in line
    assert main(["chart", str(run), "-o", str(tmp_path / "chart.svg")]) == 0
    assert (tmp_path / "chart.svg").read_text().lstrip().startswith("<?xml")


def test_chart_of_many_tests_draws_the_largest_changes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [
        [
            record(f"t.py::test_{i:05d}", peak=MiB + i, baseline_peak_bytes=MiB + i)
            for i in range(5000)
        ]
        for _ in range(2)
    ]
    old, new = vram_json(*runs[0]), vram_json(*runs[1])
    new["measurements"][1234]["peak_bytes"] += 10 * MiB  # the change to see
    paths = []
    for name, document in (("old", old), ("new", new)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(document))
    out = tmp_path / "chart.svg"
    assert main(["chart", *map(str, paths), "-o", str(out), "--max-tests", "3"]) == 0
    svg = out.read_text()
    assert "3 of 5000 tests: the largest peak changes" in svg
    assert "test_01234" in svg and "test_00000" not in svg
    keys, total = chart_keys([load_run(str(p)) for p in paths], 3)
    assert total == 5000 and keys == ["t.py::test_01234", "t.py::test_04998", "t.py::test_04999"]


# --------------------------------------------------------------------------- fuzzing

_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json = st.recursive(
    _atoms,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=3),
    max_leaves=8,
)  # fmt: skip
_FIELDS = [*vram_json()["measurements"][0], "version", "measurements", "run", "breakdown"]


@st.composite
def _documents(draw) -> bytes:
    """A --vram-json document with some fields replaced by anything, or random bytes."""
    kind = draw(st.sampled_from(["mutated", "any JSON", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "any JSON":
        return json.dumps(draw(_json)).encode()
    document = vram_json(record(), record("t.py::test_b", breakdown={"groups": [["m", "c", 1]]}))
    for field in draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3)):
        measurements = document["measurements"]
        dicts = [m for m in measurements if isinstance(m, dict)] if isinstance(
            measurements, list) else []  # fmt: skip
        top = field in ("version", "measurements", "run") or not dicts
        target = document if top else draw(st.sampled_from(dicts))
        target[field] = draw(_json)
    return json.dumps(document).encode()


def _fuzz(capsys, tmp: Path, command: list[str], content: bytes, ok: tuple[int, ...]) -> None:
    (tmp / "fuzz.json").write_bytes(content)
    code = main(command)
    err = capsys.readouterr().err
    assert code in ok, err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "good.json").write_text(json.dumps(vram_json()))
    return path


_FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(_documents())
def test_fuzz_compare_and_benchmark_give_a_result_or_one_error_line(capsys, fuzz_dir, content):
    fuzz, good = str(fuzz_dir / "fuzz.json"), str(fuzz_dir / "good.json")
    _fuzz(capsys, fuzz_dir, ["compare", good, fuzz, "--fail-on-growth"], content, (0, 1, 2))
    out = str(fuzz_dir / "out.json")
    _fuzz(capsys, fuzz_dir, ["benchmark", fuzz, "-o", out], content, (0, 2))


@_FUZZ
@given(_documents(), st.text(max_size=200))
def test_fuzz_comment_gives_a_comment_or_one_error_line(capsys, fuzz_dir, content, store):
    (fuzz_dir / "scripted.yaml").write_text(store)
    fuzz, out = str(fuzz_dir / "fuzz.json"), str(fuzz_dir / "out.md")
    command = ["comment", fuzz, "--breakdowns", str(fuzz_dir / "scripted.yaml"), "-o", out]
    _fuzz(capsys, fuzz_dir, command, content, (0, 2))


@settings(_FUZZ, max_examples=40)
@given(_documents())
def test_fuzz_chart_gives_an_image_or_one_error_line(capsys, fuzz_dir, content):
    pytest.importorskip("matplotlib")
    out = str(fuzz_dir / "out.png")
    _fuzz(capsys, fuzz_dir, ["chart", str(fuzz_dir / "fuzz.json"), "-o", out], content, (0, 2))


@pytest.mark.parametrize("command", ["compare", "comment", "benchmark", "chart", "record-json"])
def test_hostile_input_in_a_fresh_interpreter_is_one_line_without_traceback(tmp_path, command):
    bad = tmp_path / "run.json"
    bad.write_bytes(measurement(peak_bytes="7 MiB"))
    args = {
        "compare": [str(bad), str(bad)],
        "record-json": [str(bad), "--baselines", str(tmp_path / "baselines")],
        "chart": [str(bad), "-o", str(tmp_path / "c.png")],
    }.get(command, [str(bad)])
    done = subprocess.run(
        [sys.executable, "-m", "pytest_vram", command, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stderr
    text = done.stdout + done.stderr
    assert "Traceback" not in text
    (line,) = text.splitlines()
    assert line.startswith(f"error: {bad}: measurements[0] ('t.py::test_a'): peak_bytes must be")
    assert list(tmp_path.iterdir()) == [bad]
