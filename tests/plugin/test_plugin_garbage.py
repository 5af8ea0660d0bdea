"""The collections at test boundaries freeze what survives them (speed), and the plugin thaws
after each test module, so an object a module-scoped fixture drops in a reference cycle is
still collected before the next measured test (correctness)."""

from __future__ import annotations

import gc

from pytest_vram.backends.base import collect_garbage, thaw_garbage


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_a_frozen_cycle_outlives_collections_until_thawed() -> None:
    import weakref

    node = Node()
    ref = weakref.ref(node)
    collect_garbage()  # node is alive: frozen with everything else
    del node
    try:
        collect_garbage()
        assert ref() is not None  # frozen garbage is not visited
        thaw_garbage()
        collect_garbage()
        assert ref() is None
    finally:
        thaw_garbage()
        gc.collect()


def test_a_module_fixtures_cycle_is_collected_before_the_next_module_measures(
    run_vram, vram_pytester
):
    vram_pytester.makeconftest(
        """
        import weakref
        import pytest

        REFS = []

        class Node:
            def __init__(self):
                self.me = self

        @pytest.fixture(scope="module")
        def cyclic():
            node = Node()
            REFS.append(weakref.ref(node))
            yield node
        """
    )
    vram_pytester.makepyfile(
        test_a="""
        def test_holds(vram, cyclic):
            vram.backend.cycles = True
            vram.run(vram.backend.spike, 1024)

        def test_holds_still(vram, cyclic):
            vram.backend.cycles = True
            vram.run(vram.backend.spike, 1024)
        """,
        test_b="""
        from conftest import REFS

        def test_after(vram):
            vram.backend.cycles = True
            # the measurement's start collected the dropped cycle
            vram.run(vram.backend.spike, 1024)
            assert REFS and REFS[0]() is None
        """,
    )
    result = run_vram("-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_the_last_measurement_stays_frozen_for_pytests_collections_at_exit(
    run_vram_subprocess, vram_pytester
):
    # pytest collects five times at exit (unraisableexception): over everything a process
    # that imported torch holds unless it stays frozen. A module boundary asks the next
    # measurement's collection to thaw; a plain module after the last one asks nothing of it.
    vram_pytester.makeconftest(
        """
        import gc

        def pytest_runtest_logfinish(nodeid):
            print("FROZEN", nodeid, gc.get_freeze_count() > 0)

        def pytest_unconfigure(config):
            print("FROZEN at exit", gc.get_freeze_count() > 0)
        """
    )
    measuring = (
        "def test_{0}(vram):\n    vram.backend.cycles = True\n"
        "    vram.run(vram.backend.spike, 1024)\n"
    )
    vram_pytester.makepyfile(
        test_a=measuring.format("a"),
        test_b=measuring.format("b"),
        test_c="def test_plain():\n    pass\n",
    )
    result = run_vram_subprocess("-s", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*FROZEN test_a.py::test_a True",
            "*FROZEN test_b.py::test_b True",
            "*FROZEN test_c.py::test_plain True",
            "FROZEN at exit True",
        ]
    )
