"""Claims declared in ``vram_claims``: judged once on the session's figures, reported like tests.

The measuring tests spike the scripted backend by a chosen size, so every claim sits on a
known side of its limit; the claim module reads their figures by key.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from vram_testing import MiB

MEASURING = """
    MiB = 1024**2

    def test_small(vram):
        vram.run(vram.backend.spike, 100 * MiB)

    def test_big(vram):
        vram.run(vram.backend.spike, 101 * MiB)

    def test_linear(vram):
        for n in (1, 2, 4):
            vram.run(vram.backend.spike, n * 8 * MiB, name=f"n{n}")
"""

CLAIMS = """
    from pytest_vram.claims import Claim, activation, peak

    vram_claims = [
        # 101 MiB against 100 MiB + 1%: exactly on the limit holds
        Claim.at_most("big_within_1pct", peak("test_m.py::test_big"),
                      peak("test_m.py::test_small"), within="1%"),
        Claim.at_most("big_exactly", peak("test_m.py::test_big"),
                      peak("test_m.py::test_small")),
        Claim.at_most("big_known", peak("test_m.py::test_big"),
                      peak("test_m.py::test_small"), expect_broken="big spikes 1 MiB more"),
        Claim.at_most("small_fits", peak("test_m.py::test_small"), "100MiB"),
        Claim.at_most("small_known_too_big", peak("test_m.py::test_small"), "1GiB",
                      expect_broken="thought it was over 1 GiB"),
        Claim.grows_like("linear", {n: activation(f"test_m.py::test_linear::n{n}")
                                    for n in (1, 2, 4)}, exponent=1, within=0.01),
        Claim.grows_like("quadratic", {n: activation(f"test_m.py::test_linear::n{n}")
                                       for n in (1, 2, 4)}, exponent=2, within=0.5),
    ]
"""


@pytest.fixture
def claims_dir(vram_pytester):
    vram_pytester.makepyfile(test_m=MEASURING, test_declared=CLAIMS)
    return vram_pytester


def test_claims_are_reported_as_items_with_the_measured_figures(claims_dir, run_vram):
    result = run_vram("-rxs", "--vram-json=vram.json", "--junitxml=junit.xml")
    # 3 measuring tests, then 7 claims: 3 hold, big_exactly, quadratic and the strict
    # small_known_too_big fail, big_known is an expected failure.
    result.assert_outcomes(passed=6, failed=3, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_declared.py::big_exactly: peak of test_m.py::test_big 101.0 MiB "
            "(105906176 B) vs peak of test_m.py::test_small 100.0 MiB (104857600 B): "
            "+1.0 MiB (+1.00%), over the stated tolerance 0B",
            "*[[]XPASS(strict)[]] test_declared.py::small_known_too_big: declared broken "
            "(thought it was over 1 GiB) but it holds: *remove expect_broken=*",
            "*test_declared.py::quadratic: activation grows like x^1.000 "
            "(claimed x^2 +/- 0.5): x=1: 8.0 MiB (8388608 B), x=2: *",
        ]
    )
    # the expected contradiction's reason quotes the figures measured in this run
    result.stdout.fnmatch_lines(
        ["XFAIL test_declared.py::big_known - big spikes 1 MiB more: peak of test_m.py::test_big "
         "101.0 MiB (105906176 B) vs peak of test_m.py::test_small 100.0 MiB (104857600 B)*"]
    )  # fmt: skip
    document = json.loads((claims_dir.path / "vram.json").read_text())
    kinds = {c["name"]: c["kind"] for c in document["claims"]}
    assert kinds == {
        "big_within_1pct": "holds",
        "big_exactly": "broken",
        "big_known": "broken as expected",
        "small_fits": "holds",
        "small_known_too_big": "holds unexpectedly",
        "linear": "holds",
        "quadratic": "broken",
    }
    figures = {c["name"]: c["figures"] for c in document["claims"]}
    assert figures["big_exactly"] == {
        "peak of test_m.py::test_big": 101 * MiB,
        "peak of test_m.py::test_small": 100 * MiB,
    }
    cases = ET.parse(claims_dir.path / "junit.xml").getroot().iter("testcase")
    junit = {c.get("name"): sorted(child.tag for child in c) for c in cases}
    assert junit["big_within_1pct"] == ["properties"]
    assert junit["big_exactly"] == ["failure", "properties"]  # sorted
    assert junit["big_known"] == ["properties", "skipped"]
    cases = ET.parse(claims_dir.path / "junit.xml").getroot().iter("testcase")
    (case,) = [c for c in cases if c.get("name") == "big_exactly"]
    (prop,) = case.iter("property")
    assert prop.get("name") == "vram_claim" and json.loads(prop.get("value"))["kind"] == "broken"


def test_claims_are_in_the_markdown_file(claims_dir, run_vram):
    run_vram("--vram-markdown=vram.md")
    markdown = (claims_dir.path / "vram.md").read_text()
    assert (
        "| `test_declared.py::big_known` | broken as expected | big spikes 1 MiB more: " in markdown
    )


def test_a_claim_whose_figures_were_deselected_says_so_and_does_not_pass(claims_dir, run_vram):
    result = run_vram("-k", "small", "-rs")
    # Only test_small ran: the claims that also read test_big are undecided; those that
    # read only test_linear are not in play. small_fits holds, small_known_too_big fails.
    result.assert_outcomes(passed=2, skipped=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "not evaluated: 2 claims of test_declared.py: none of the tests they read ran",
            "SKIPPED [[]3[]] test_declared.py: not evaluated: no figures for test_m.py::test_big "
            "(test_m.py::test_big was deselected or did not run)",
        ]
    )
    strict = run_vram("-k", "small", "--vram-update", "--vram-strict")  # record test_small
    strict = run_vram("-k", "small", "--vram-strict")
    strict.assert_outcomes(passed=2, failed=4)
    strict.stdout.fnmatch_lines(["*strict mode: every claim must be decided*"])


def test_a_claim_over_a_failed_test_names_the_failure(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_m="""
        def test_fails(vram):
            vram.run(vram.backend.spike, 1)
            assert False
        """,
        test_declared="""
        from pytest_vram.claims import Claim, peak
        vram_claims = [Claim.at_most("fits", peak("test_m.py::test_fails"), "1MiB")]
        """,
    )
    result = run_vram("-rs")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*no figures for test_m.py::test_fails (test_m.py::test_fails failed)"]
    )


def test_a_claim_over_tests_that_skipped_themselves_is_not_in_play(vram_pytester, run_vram):
    # A claim over multi-GPU tests on a one-GPU runner: skipped like its tests, also in
    # strict mode; a claim with one test that ran and one that skipped is undecided.
    vram_pytester.makepyfile(
        test_m="""
        import pytest

        def test_ran(vram):
            vram.run(vram.backend.spike, 1)

        @pytest.mark.skip(reason="needs 8 GPUs")
        def test_skipped_a(vram):
            vram.run(vram.backend.spike, 1)

        def test_skipped_b(vram):
            pytest.skip("needs 8 GPUs")
        """,
        test_declared="""
        from pytest_vram.claims import Claim, peak
        vram_claims = [
            Claim.at_most("skipped_only", peak("test_m.py::test_skipped_a"),
                          peak("test_m.py::test_skipped_b")),
            Claim.at_most("half_skipped", peak("test_m.py::test_ran"),
                          peak("test_m.py::test_skipped_a")),
        ]
        """,
    )
    run_vram("--vram-update", "-k", "test_ran")
    result = run_vram("--vram-strict", "-rs")
    result.assert_outcomes(passed=1, skipped=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*half_skipped: not evaluated: no figures for test_m.py::test_skipped_a "
            "(test_m.py::test_skipped_a skipped) (strict mode: every claim must be decided)",
            "not evaluated: test_declared.py::skipped_only: none of its tests ran "
            "(test_m.py::test_skipped_a: test_m.py::test_skipped_a skipped; "
            "test_m.py::test_skipped_b: test_m.py::test_skipped_b skipped)",
        ]
    )


def test_a_bad_declaration_is_a_collection_error_naming_the_module(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_declared="vram_claims = ['peak of a <= peak of b']")
    result = run_vram()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_declared.py: vram_claims: 'peak of a <= peak of b' is not a Claim; declare claims "
         "with Claim.at_most(...) or Claim.grows_like(...)"]
    )  # fmt: skip


def test_under_xdist_claims_are_judged_once_on_the_controller(claims_dir, run_vram_subprocess):
    pytest.importorskip("xdist")
    result = run_vram_subprocess("-p", "xdist", "-n", "2", "--vram-json=vram.json")
    result.assert_outcomes(passed=6, failed=3, xfailed=1)
    document = json.loads((claims_dir.path / "vram.json").read_text())
    keys = [m["key"] for m in document["measurements"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 5  # each measured once
    assert len(document["claims"]) == 7


def test_vram_figures_gives_this_process_figures_by_key(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_f="""
        import pytest

        def test_a(vram):
            vram.run(vram.backend.spike, 3 * 1024**2)

        def test_reads(vram_figures):
            assert vram_figures["test_f.py::test_a"].peak_bytes == 3 * 1024**2
            with pytest.raises(KeyError, match="no figures for 'test_f.py::test_z' in this "
                               "process.*declare the comparison as a claim"):
                vram_figures["test_f.py::test_z"]
        """
    )
    run_vram().assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('Claim.at_most("fits", "test_m.py::test_a", "1GiB")',
         "claim 'fits': the subject must be a figure, peak(key), model(key) or activation(key), "
         "got 'test_m.py::test_a'"),
        ('Claim.at_most("mixed", peak("test_m.py::test_a"), peak(7))',
         "Figure(7, ...): the key must be a measurement's baseline key"),
        ('Claim.grows_like("mixed", {1: peak("test_m.py::test_a"), "2": peak("test_m.py::b")})',
         "claim 'mixed': every x of grows_like must be a finite number > 0"),
        ('Claim.grows_like("lin", {1: peak("test_m.py::test_a"), 2: peak("test_m.py::b")}, '
         'within=float("nan"))',
         "claim 'lin': within must be a finite number and not negative, got nan"),
        ('Claim.grows_like("lin", {1: peak("test_m.py::test_a"), 2: peak("test_m.py::b")}, '
         'exponent="abc")',
         "claim 'lin': exponent must be a finite number, got 'abc'"),
        ('Claim("rel", "at_least", peak("test_m.py::test_a"), None, 5)',
         "claim 'rel': unknown relation 'at_least'; valid relations are at_most, grows_like"),
    ],
)  # fmt: skip
def test_a_bad_claim_is_a_collection_error_at_its_line(vram_pytester, run_vram, declaration,
                                                        message):  # fmt: skip
    vram_pytester.makepyfile(
        test_m="def test_a(vram):\n    vram.run(vram.backend.spike, 1)\n",
        test_declared=f"from pytest_vram.claims import Claim, peak\n\nvram_claims = [\n"
        f"    {declaration},\n]\n",
    )
    result = run_vram()
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"test_declared.py:4: vram_claims: {message}*"])
    text = result.stdout.str()
    assert "Traceback" not in text and "pytest_vram/" not in text and "<string>" not in text


TYPO = """
    from pytest_vram.claims import Claim, peak

    vram_claims = [
        Claim.at_most("typo", peak("test_m.py::test_aa"), "1GiB"),
        Claim.at_most("gone_file", peak("test_gone.py::test_a"), peak("test_m.py::test_a")),
    ]
"""


def test_a_claim_no_test_can_produce_fails_in_strict_mode(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_m="def test_a(vram):\n    vram.run(vram.backend.spike, 1)\n", test_declared=TYPO
    )
    run_vram("--vram-update")
    relaxed = run_vram("-rs")
    relaxed.assert_outcomes(passed=1, skipped=1)
    assert relaxed.ret == pytest.ExitCode.OK
    relaxed.stdout.fnmatch_lines(
        ["not evaluated: test_declared.py::typo: none of its tests ran (test_m.py::test_aa: no "
         "collected test produces it: check the key*"]
    )  # fmt: skip
    strict = run_vram("--vram-strict")
    strict.assert_outcomes(passed=1, failed=2)
    strict.stdout.fnmatch_lines(
        [
            "*test_declared.py::typo: not evaluated: no figures for test_m.py::test_aa (no "
            "collected test produces it: check the key, the test's node id or nodeid::name as "
            "the VRAM table shows it) (strict mode: every claim must be decided)",
            "*test_declared.py::gone_file: not evaluated: no figures for test_gone.py::test_a*",
        ]
    )


def test_a_claim_over_tests_of_a_file_not_collected_is_left_alone(vram_pytester, run_vram):
    # `pytest test_declared.py` alone says nothing about the tests of test_m.py.
    vram_pytester.makepyfile(
        test_m="def test_a(vram):\n    vram.run(vram.backend.spike, 1)\n",
        test_declared="""
        from pytest_vram.claims import Claim, peak
        vram_claims = [Claim.at_most("fits", peak("test_m.py::test_a"), "1GiB")]
        """,
    )
    result = run_vram("--vram-strict", "test_declared.py")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_claim_reads_a_test_that_asked_for_vram_at_run_time(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_m="""
        def test_late(request):
            vram = request.getfixturevalue("vram")
            vram.run(vram.backend.spike, 1024)
        """,
        test_declared="""
        from pytest_vram.claims import Claim, peak
        vram_claims = [Claim.at_most("late_fits", peak("test_m.py::test_late"), "1KiB")]
        """,
    )
    result = run_vram("--vram-json=vram.json")
    result.assert_outcomes(passed=2)
    claims = json.loads((vram_pytester.path / "vram.json").read_text())["claims"]
    assert [(c["name"], c["kind"]) for c in claims] == [("late_fits", "holds")]
