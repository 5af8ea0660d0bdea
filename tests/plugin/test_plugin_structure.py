"""How the plugin is put together: markers evaluated once, verdicts that keep their kind,
feature hooks registered only where they are needed."""

from __future__ import annotations

import pytest

from pytest_vram import marks
from pytest_vram.report import Record
from pytest_vram.verdicts import Kind


def test_markers_are_evaluated_once_per_test(vram_pytester, run_vram, monkeypatch):
    calls: list[str] = []
    evaluate = marks.evaluate

    def counting(item: pytest.Item) -> marks.VramMark | None:
        calls.append(item.nodeid)
        return evaluate(item)

    monkeypatch.setattr(marks, "evaluate", counting)
    vram_pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.vram(budget="1GiB")
        def test_a(vram):
            vram.run(vram.backend.spike, 1)

        def test_b(vram):
            vram.run(vram.backend.spike, 1)
        """
    )
    run_vram().assert_outcomes(passed=2)
    assert sorted(calls) == ["test_m.py::test_a", "test_m.py::test_b"]


def test_a_record_reads_its_verdict_back_as_a_kind():
    record = Record.from_dict(
        {
            "key": "t.py::a", "nodeid": "t.py::a", "name": None, "profile": "p",
            "baseline_path": "b", "params": None, "model_bytes": 0, "peak_bytes": 1,
            "context": {}, "tolerance": "0B", "budget": None, "baseline_model_bytes": 0,
            "baseline_peak_bytes": 2,
            "verdicts": [{"kind": "over budget", "summary": "", "detail": "", "fails": True}],
        }
    )  # fmt: skip
    assert record.kind is Kind.OVER_BUDGET


FEATURES_PROBE = """
def pytest_collection_finish(session):
    config = session.config
    names = {"vram-claims", "vram-benchmark"}
    found = {n for n in names if config.pluginmanager.get_plugin(n) is not None}
    print("FEATURES", sorted(found))
"""


def test_feature_hooks_are_registered_only_where_needed(vram_pytester):
    # The conftest is registered before the plugin's hook classes: its hook runs after theirs.
    vram_pytester.makeconftest(FEATURES_PROBE)
    vram_pytester.makepyfile(test_x="def test_x(): pass")
    from vram_testing import QUIET, SCRIPTED, plugin_args

    plain = vram_pytester.runpytest(*plugin_args(), *QUIET, "-s")
    plain.stdout.fnmatch_lines(["FEATURES []"])  # no vram test: nothing activated
    vram_pytester.makepyfile(test_m="def test_m(vram): pass")
    # the scripted backend: an in-process estimator would import torch's compiler stack,
    # which pytester drops afterwards, and the next test of the process re-imports it
    args = (*plugin_args(), *QUIET, "-s", "--vram-no-strict", SCRIPTED)
    without = vram_pytester.runpytest(*args, "-p", "no:benchmark")
    without.stdout.fnmatch_lines(["FEATURES ['vram-claims']"])
    pytest.importorskip("pytest_benchmark")
    with_benchmark = vram_pytester.runpytest(*args)
    with_benchmark.stdout.fnmatch_lines(["FEATURES ['vram-benchmark', 'vram-claims']"])


ROLE_PROBE = """
import pytest

def role(config, when):
    manager = config.pluginmanager
    names = ["vram-session", "vram-aggregate", "vram-worker", "vram-controller"]
    print("ROLE", when, "+".join(n for n in names if manager.get_plugin(n) is not None) or "-")

def pytest_sessionstart(session):
    role(session.config, "start")

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    role(session.config, "finish")
"""


def test_the_session_end_hooks_are_the_process_role(vram_pytester):
    vram_pytester.makeconftest(ROLE_PROBE)
    vram_pytester.makepyfile(test_x="def test_x(): pass")
    from vram_testing import QUIET, SCRIPTED, plugin_args

    # Nothing to measure, judge or write: no session at all.
    plain = vram_pytester.runpytest(*plugin_args(), *QUIET, "-s")
    plain.stdout.fnmatch_lines(["ROLE start -", "*ROLE finish -"])
    # A report file is written whatever is collected: the session exists from the start.
    roles = "vram-session+vram-aggregate+vram-controller"
    report = vram_pytester.runpytest(*plugin_args(), *QUIET, "-s", "--vram-json=r.json")
    report.stdout.fnmatch_lines([f"ROLE start {roles}", f"*ROLE finish {roles}"])
    # A vram test activates it when the collection finds it.
    vram_pytester.makepyfile(test_m="def test_m(vram): pass")
    measured = vram_pytester.runpytest(*plugin_args(), *QUIET, "-s", "--vram-no-strict", SCRIPTED)
    measured.stdout.fnmatch_lines(["ROLE start -", f"*ROLE finish {roles}"])


def test_a_suite_without_vram_tests_imports_only_the_entry_point(vram_pytester):
    # Each module of the plugin costs a suite without vram tests its load through pytest's
    # assertion-rewriting hook (docs/suite.md, "Plugin overhead").
    vram_pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            print("MODULES", sorted(m for m in sys.modules if m.startswith("pytest_vram")))
        """
    )
    vram_pytester.makepyfile(test_x="def test_x(): pass")
    from vram_testing import QUIET, plugin_args

    result = vram_pytester.runpytest_subprocess(*plugin_args(), *QUIET, "-s", "-p", "no:xdist")
    result.stdout.fnmatch_lines(
        [
            "MODULES ['pytest_vram', 'pytest_vram.backends', 'pytest_vram.marker', "
            "'pytest_vram.plugin']"
        ]
    )


MEASURING_PROBE = """
def pytest_collection_finish(session):
    manager = session.config.pluginmanager
    names = ("vram-measure", "vram-garbage", "vram-measured-output", "vram-reports")
    print("MEASURING", [n for n in names if manager.get_plugin(n) is not None])
"""


def test_a_run_without_vram_tests_drops_the_hooks_of_measured_tests(vram_pytester, run_vram):
    # The conftest is registered before the plugin's hook classes: its hook runs after theirs.
    vram_pytester.makeconftest(MEASURING_PROBE)
    vram_pytester.makepyfile(test_plain="def test_a(): pass\ndef test_b(): pass")
    run_vram("-s").stdout.fnmatch_lines(["MEASURING []"])
    vram_pytester.makepyfile(test_model="def test_m(vram): pass")
    result = run_vram("-s", "--vram-no-strict")
    result.stdout.fnmatch_lines(
        ["MEASURING ['vram-measure', 'vram-garbage', 'vram-measured-output', 'vram-reports']"]
    )


def test_a_run_that_declares_claims_keeps_the_report_hook(vram_pytester, run_vram):
    # Claims need every test's outcome even where no collected test measures.
    vram_pytester.makeconftest(MEASURING_PROBE)
    vram_pytester.makepyfile(
        test_declared="""
        from pytest_vram.claims import Claim, peak

        vram_claims = [Claim.at_most("c", peak("test_m.py::test_m"), "1MiB")]

        def test_a():
            pass
        """
    )
    run_vram("-s").stdout.fnmatch_lines(["MEASURING ['vram-reports']"])


def test_a_measurement_the_collection_did_not_announce_is_still_judged(vram_pytester, run_vram):
    # The fixture requested at run time: no marker, no `vram` argument at collection.
    vram_pytester.makepyfile(
        test_model="""
        MiB = 1024**2

        def test_model(request):
            vram = request.getfixturevalue("vram")
            model = vram.build(vram.backend.alloc, 100 * MiB)
            vram.run(vram.backend.spike, 50 * MiB)
        """
    )
    result = run_vram("-v", "--vram-json=out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_model PASSED (peak 150.0 MiB)*", "*= VRAM =*"])
