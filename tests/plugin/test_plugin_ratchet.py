"""Ratchet options: stale entries fail strict runs, improvements can fail, new-only updates,
and a run's ``--vram-json`` recorded as baselines elsewhere (``record-json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vram_testing import MiB, load, write_baseline

from pytest_vram.__main__ import main
from pytest_vram.store import baselines
from pytest_vram.store.baselines import BaselineFile, Entry

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


# --------------------------------------------------------------------------- record-json input
#
# record-json validates every figure as the baseline loader would, before it writes
# anything: what it writes always loads back.


def write_baseline_at(path: Path, entries: dict[str, tuple[int, int]]) -> None:
    baselines.write(
        BaselineFile(
            path,
            path.stem,
            {k: Entry(model, peak) for k, (model, peak) in entries.items()},
            {"backend": "scripted"},
        )
    )


def vram_json(*measurements: dict) -> dict:
    """A --vram-json document whose measurements carry what a baseline needs."""
    base = {"profile": "scripted", "context": {"backend": "scripted"}, "params": None}
    return {"version": 1, "measurements": [{**base, **m} for m in measurements]}


GOOD = {"key": A, "model_bytes": 2 * MiB, "peak_bytes": 10 * MiB}


#: figures that are not the test's device memory, as the plugin writes them
OFF_DEVICE = {
    "step": "vram.build(make_model)",
    "device": "cuda:0",
    "backend": "scripted",
    "params": 1024,
    "tensors": 0,
    "elsewhere": ["cpu"],
    "causes": [],
}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"peak_bytes": MiB}, f"({A!r}): peak_bytes (1048576) is below model_bytes (2097152)"),
        ({"peak_bytes": -1}, f"({A!r}): peak_bytes must be a non-negative integer"),
        ({"model_bytes": 1.5}, "model_bytes must be a non-negative integer number of bytes"),
        ({"peak_bytes": True}, "peak_bytes must be a non-negative integer number of bytes"),
        ({"peak_bytes": 10**30}, "below 2**64, got int 1000000000000000000000000000000"),
        ({"params": -3}, "params must be a non-negative integer"),
        ({"key": ""}, "key must be a non-empty string"),
        ({"key": "t.py::\ud800"}, ".key holds an unpaired surrogate escape ('\\ud800')"),
        ({"profile": "../x"}, "profile name '../x' is not a safe file name"),
        ({"context": {"torch": 2.13}}, "context must be an object of names to strings"),
        (
            {"model_bytes": 0, "peak_bytes": 0, "off_device": OFF_DEVICE},
            "its figures were not counted on the device",
        ),
        ({"off_device": {"headline": "model on cpu"}}, "off_device must be an object of what"),
    ],
)
def test_record_json_refuses_figures_a_baseline_cannot_hold(tmp_path, capsys, bad, message):
    existing = {B: (0, 20 * MiB)}
    path = tmp_path / "baselines" / "scripted.yaml"
    write_baseline_at(path, existing)
    before = path.read_bytes()
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json({**GOOD, **bad})))
    assert main(["record-json", str(run), "--baselines", str(tmp_path / "baselines")]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"error: {run}: measurements[0]") and message in out, out
    assert out.rstrip().endswith("(no baseline file was changed)") and len(out.splitlines()) == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["scripted.yaml"]


def test_record_json_refuses_two_figures_for_one_key(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json(GOOD, {**GOOD, "peak_bytes": 11 * MiB})))
    assert main(["record-json", str(run), "--baselines", str(tmp_path / "baselines")]) == 2
    out = capsys.readouterr().out
    assert f"measurements[0] and measurements[1] both have key {A!r}" in out
    assert not (tmp_path / "baselines").exists()


def test_record_json_checks_every_profile_before_writing_any(tmp_path, capsys):
    run = tmp_path / "run.json"
    later = {**GOOD, "profile": "zzz", "key": B, "peak_bytes": 0}  # below its model bytes
    run.write_text(json.dumps(vram_json(GOOD, later)))
    assert main(["record-json", str(run), "--baselines", str(tmp_path / "baselines")]) == 2
    assert "measurements[1]" in capsys.readouterr().out
    assert not (tmp_path / "baselines").exists()


def test_what_record_json_writes_loads_with_the_bounded_loader(tmp_path, capsys):
    keys = [
        "t.py::test_x[a: b]",
        "t.py::test_x[# not a comment]",
        "t.py::test_x['quoted' \"twice\"]",
        "t.py::test_x[ünïcode-€-日本]",
        "t.py::test_x[" + "long-" * 300 + "]",
        "t.py::test_x[-1]::name with spaces",
        "t.py::test_x[yes]",
        "t.py::test_x[~]",
    ]
    measurements = [{**GOOD, "key": key, "peak_bytes": 10 * MiB + i} for i, key in enumerate(keys)]
    document = vram_json(*measurements)
    document["measurements"][0]["context"] = {"note": "a: b # c", "torch": "2.13.0"}
    run = tmp_path / "run.json"
    run.write_text(json.dumps(document))
    assert main(["record-json", str(run), "--baselines", str(tmp_path / "baselines")]) == 0
    assert "written; 8 added" in capsys.readouterr().out
    loaded = load(tmp_path / "baselines" / "scripted.yaml")
    assert {k: e.peak_bytes for k, e in loaded.entries.items()} == {
        key: 10 * MiB + i for i, key in enumerate(keys)
    }
    assert loaded.setup == {"note": "a: b # c", "torch": "2.13.0"}


def test_record_json_into_a_read_only_baseline_changes_nothing(tmp_path, capsys):
    path = tmp_path / "baselines" / "scripted.yaml"
    write_baseline_at(path, {B: (0, 20 * MiB)})
    path.chmod(0o444)
    before = path.read_bytes()
    run = tmp_path / "run.json"
    run.write_text(json.dumps(vram_json(GOOD, {**GOOD, "key": "a.py::t", "profile": "aaa"})))
    assert main(["record-json", str(run), "--baselines", str(tmp_path / "baselines")]) == 2
    assert "the baseline file is read-only (mode 0444)" in capsys.readouterr().out
    assert path.read_bytes() == before and not (path.parent / "aaa.yaml").exists()


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=2),
)
_fields = st.sampled_from(["key", "profile", "model_bytes", "peak_bytes", "params", "context"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.dictionaries(_fields, _values, max_size=3), min_size=1, max_size=3))
def test_fuzz_record_json_records_what_loads_or_refuses_in_one_line(
    tmp_path_factory, capsys, changes
):
    tmp = tmp_path_factory.mktemp("record")
    document = vram_json(*({**GOOD, "key": f"t.py::t{i}", **c} for i, c in enumerate(changes)))
    run = tmp / "run.json"
    run.write_text(json.dumps(document))
    code = main(["record-json", str(run), "--baselines", str(tmp / "baselines")])
    out = capsys.readouterr().out
    if code == 2:
        assert len(out.splitlines()) == 1 and out.startswith("error: "), out
        assert not (tmp / "baselines").exists()
    else:
        assert code == 0, out
        for written in (tmp / "baselines").iterdir():
            load(written)  # what it wrote loads with the bounded loader
