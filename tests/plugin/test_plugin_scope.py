"""A vram test runs in its backend's test scope from before its fixtures are set up to after
they are torn down, and counting starts at its first function-scoped fixture: what
fixtures make counts wherever ``vram`` stands among them, what a wider-scoped fixture holds
is in no figure, the scope is left whatever ends the test (a failing or skipping fixture,
xfail, an interrupted session), and the backend exists before the first test.

On the scripted backend (a GPU-like device: one for the whole process), which writes its
scope events to the file ``VRAM_SCRIPTED_EVENTS`` names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vram_testing import MiB

FIXTURES = """
import pytest

MiB = 1024**2

@pytest.fixture
def weights(vram_backend):
    block = vram_backend.alloc(40 * MiB)
    yield block
    del block

@pytest.fixture(scope="module")
def shared(vram_backend):
    block = vram_backend.alloc(100 * MiB)
    yield block
    del block
"""


@pytest.fixture
def events(vram_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = vram_pytester.path / "events.txt"
    monkeypatch.setenv("VRAM_SCRIPTED_EVENTS", str(path))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _figures(path: Path) -> dict[str, tuple[int, int, int | None]]:
    report = json.loads(path.read_text())
    return {
        m["key"]: (m["model_bytes"], m["peak_bytes"], m["leaked_bytes"])
        for m in report["measurements"]
    }


def test_what_function_scoped_fixtures_make_counts_wherever_vram_stands(
    run_vram, vram_pytester, events
):
    vram_pytester.makeconftest(FIXTURES)
    vram_pytester.makepyfile(
        test_order="""
        MiB = 1024**2

        def step(vram):
            vram.backend.spike(10 * MiB)

        def test_fixture_first(weights, vram):
            vram.run(step, vram)

        def test_fixture_last(vram, weights):
            vram.run(step, vram)

        def test_made_in_the_body(vram):
            block = vram.backend.alloc(40 * MiB)
            vram.run(step, vram)
        """
    )
    result = run_vram("--vram-json=run.json")
    result.assert_outcomes(passed=3)
    figures = _figures(vram_pytester.path / "run.json")
    expected = (40 * MiB, 50 * MiB, 0)
    assert figures == {
        "test_order.py::test_fixture_first": expected,
        "test_order.py::test_fixture_last": expected,
        "test_order.py::test_made_in_the_body": expected,
    }


def test_a_wider_scoped_fixture_is_held_before_counting_starts_in_every_test(
    run_vram, vram_pytester, events
):
    vram_pytester.makeconftest(FIXTURES)
    vram_pytester.makepyfile(
        test_shared="""
        MiB = 1024**2

        def test_first(shared, vram):
            vram.run(vram.backend.spike, 10 * MiB)

        def test_second(shared, vram):
            vram.run(vram.backend.spike, 10 * MiB)
        """
    )
    result = run_vram("--vram-json=run.json", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert _figures(vram_pytester.path / "run.json") == {
        "test_shared.py::test_first": (0, 10 * MiB, 0),
        "test_shared.py::test_second": (0, 10 * MiB, 0),
    }
    # the zero point of each test: after the module's fixture (and the warm-up's 32 MiB)
    assert [line for line in _lines(events) if line.startswith("begin-test")] == [
        "begin-test 132",
        "begin-test 132",
    ]


def test_the_backend_and_its_session_scope_exist_before_the_first_test(
    run_vram, vram_pytester, events
):
    vram_pytester.makepyfile(
        test_one="""
        def test_plain():
            pass

        def test_measured(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    run_vram("-p", "no:randomly").assert_outcomes(passed=2)
    assert _lines(events) == [
        "session-scope-enter 32",
        "test-scope-enter 32",
        "begin-test 32",
        "test-scope-exit 32",
        "session-scope-exit 32",
    ]


def test_a_run_without_vram_tests_creates_no_backend(run_vram, vram_pytester, events):
    vram_pytester.makepyfile(
        test_one="""
        def test_plain():
            pass

        def test_measured(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    run_vram("-k", "plain").assert_outcomes(passed=1)
    run_vram("--collect-only")
    assert _lines(events) == []


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("raise RuntimeError('fixture broke')", {"errors": 1}),
        ("pytest.skip('not here')", {"skipped": 1}),
        ("pytest.fail('failed in setup')", {"errors": 1}),
    ],
    ids=["error", "skip", "fail"],
)
def test_the_scope_is_left_when_a_fixture_ends_the_test(
    run_vram, vram_pytester, events, body, outcome
):
    vram_pytester.makepyfile(
        test_setup=f"""
        import pytest

        @pytest.fixture
        def broken(vram):
            {body}

        def test_it(vram, broken):
            vram.run(vram.backend.spike, 1024)

        def test_next(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    result = run_vram("-p", "no:randomly")
    result.assert_outcomes(passed=1, **outcome)
    scopes = [line.split()[0] for line in _lines(events) if "scope" in line]
    assert scopes == [
        "session-scope-enter",
        "test-scope-enter",
        "test-scope-exit",
        "test-scope-enter",
        "test-scope-exit",
        "session-scope-exit",
    ]


def test_xfail_and_skip_markers_leave_the_scope_as_they_found_it(run_vram, vram_pytester, events):
    vram_pytester.makepyfile(
        test_marks="""
        import pytest

        @pytest.mark.xfail(reason="known", strict=True)
        def test_expected(vram):
            vram.run(vram.backend.spike, 1024)
            raise AssertionError("known")

        @pytest.mark.skip(reason="never here")
        def test_skipped(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    run_vram("-p", "no:randomly").assert_outcomes(xfailed=1, skipped=1)
    # a test skipped by its marker is skipped before its scope would be entered
    assert [line.split()[0] for line in _lines(events)] == [
        "session-scope-enter",
        "test-scope-enter",
        "begin-test",
        "test-scope-exit",
        "session-scope-exit",
    ]


def test_an_interrupted_session_leaves_the_scope(run_vram_subprocess, vram_pytester, events):
    vram_pytester.makepyfile(
        test_interrupt="""
        def test_interrupted(vram):
            vram.run(vram.backend.spike, 1024)
            raise KeyboardInterrupt
        """
    )
    result = run_vram_subprocess()  # in-process, pytester would raise the interrupt again
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert [line.split()[0] for line in _lines(events)] == [
        "session-scope-enter",
        "test-scope-enter",
        "begin-test",
        "test-scope-exit",
        "session-scope-exit",
    ]


def test_a_vram_fixture_requested_at_run_time_is_measured_from_then_on(run_vram, vram_pytester):
    vram_pytester.makeconftest(FIXTURES)
    vram_pytester.makepyfile(
        test_late="""
        MiB = 1024**2

        def test_late(weights, request):
            vram = request.getfixturevalue("vram")
            vram.run(vram.backend.spike, 10 * MiB)
        """
    )
    result = run_vram("--vram-json=run.json")
    result.assert_outcomes(passed=1)
    assert _figures(vram_pytester.path / "run.json") == {
        "test_late.py::test_late": (0, 10 * MiB, 0)
    }


def test_xdist_workers_measure_the_same_figures(run_vram_subprocess, vram_pytester):
    vram_pytester.makeconftest(FIXTURES)
    vram_pytester.makepyfile(
        test_order="""
        MiB = 1024**2

        def test_fixture_first(weights, vram):
            vram.run(vram.backend.spike, 10 * MiB)

        def test_fixture_last(vram, weights):
            vram.run(vram.backend.spike, 10 * MiB)
        """
    )
    result = run_vram_subprocess("-n", "2", "--vram-json=run.json")
    result.assert_outcomes(passed=2)
    assert set(_figures(vram_pytester.path / "run.json").values()) == {(40 * MiB, 50 * MiB, 0)}
