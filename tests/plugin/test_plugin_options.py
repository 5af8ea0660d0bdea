"""Options, ini keys, the marker's validation, and what a run without vram tests costs."""

from __future__ import annotations

import os

import pytest
from vram_testing import load

PLAIN_TEST = """
    def test_plain():
        assert True
"""


def test_help_lists_every_option_and_ini_key(run_vram):
    result = run_vram("--help")
    result.stdout.fnmatch_lines(["GPU memory measurement (pytest-vram):"])
    for option in (
        "backend",
        "update",
        "prune",
        "strict",
        "no-strict",
        "tolerance",
        "profile",
        "baselines",
        "json",
        "markdown",
    ):
        result.stdout.fnmatch_lines([f"*--vram-{option}*"])
    for ini in ("backend", "update", "prune", "strict", "tolerance", "profile", "baselines"):
        result.stdout.fnmatch_lines([f"*vram_{ini} *"])


def test_marker_is_registered(run_vram):
    result = run_vram("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.vram(tolerance=None, budget=None, reserved_budget=None, key=None, "
            "world_size=None, skip_estimate=None, card=None): *"
        ]
    )


def test_fixture_docstring_shows(run_vram):
    result = run_vram("--fixtures")
    result.stdout.fnmatch_lines(["vram -- *", "*Measure the GPU memory of a model build*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--vram-backend=cdua"],
            "ERROR: --vram-backend: unknown backend 'cdua'; valid values: auto, cuda, "
            "estimate, or a custom backend as 'package.module:ClassName'",
        ),
        (
            ["--vram-tolerance=0.5"],
            "ERROR: --vram-tolerance: '0.5' is ambiguous without a unit; write '0.5%'*",
        ),
        (["--vram-tolerance=5 parsecs"], "ERROR: --vram-tolerance: unknown unit 'parsecs'*"),
        (["--vram-prune"], "ERROR: --vram-prune only works together with --vram-update*"),
        (
            ["--vram-allocator=expandible"],
            "ERROR: --vram-allocator: unknown allocator mode 'expandible'; valid values: "
            "expandable, default",
        ),
        (["--vram-profile=../x"], "ERROR: --vram-profile: profile name '../x' is not a safe*"),
    ],
)
def test_bad_option_values_are_usage_errors(vram_pytester, run_vram, args, message):
    vram_pytester.makepyfile(PLAIN_TEST)
    result = run_vram(*args[1:], backend=args[0])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_value_names_the_ini_key(vram_pytester, run_vram):
    vram_pytester.makeini("[pytest]\nvram_tolerance = lots\n")
    vram_pytester.makepyfile(PLAIN_TEST)
    result = run_vram()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: vram_tolerance (ini): *'lots'*"])


def test_unimportable_custom_backend_fails_the_vram_tests(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        """
        def test_a(vram):
            vram.run(lambda: None)
        """
    )
    result = run_vram(backend="--vram-backend=no_such_module:Backend")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*--vram-backend=no_such_module:Backend: vram backend *cannot import*"]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "tolerence='1%'",
            "unknown option 'tolerence' (did you mean 'tolerance'?); "
            "valid options are budget, card, key, reserved_budget, skip_estimate, tolerance, "
            "world_size",
        ),
        (
            "card='rtx3080'",
            "card: unknown card 'rtx3080': give one of h200, h100-80gb, a100-40gb, a100-80gb, "
            "rtx3080-laptop, or a capacity such as '8GiB'*",
        ),
        ("card='8G'", "card: unknown card '8G': give one of *, or a capacity such as '8GiB'*"),
        ("card=8", "card=...): give a card's name or a capacity as a string*"),
        ("skip_estimate=True", "skip_estimate=...): give the reason as a non-empty string*"),
        ("budget='8 gigs'", "budget: '8 gigs' is ambiguous; write '8GiB'*"),
        ("budget=8.5", "budget must be a whole number of bytes*"),
        ("tolerance='2 %'", "*"),
        ("tolerance=0.5", "tolerance: 0.5 is ambiguous without a unit*"),
        ("key=''", "key must be a non-empty string*"),
        ("key='k\\udcff'", "key='k\\udcff'): it holds a lone surrogate (U+DCFF at position 1)*"),
        ("key='k\\x85'", "key='k\\x85'): it holds the control character U+0085 *"),
        ("'8GiB'", "takes keyword options only*"),
    ],
)
def test_marker_options_are_validated_at_setup(vram_pytester, run_vram, options, message):
    vram_pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.vram({options})
        def test_marked(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    result = run_vram()
    if options == "tolerance='2 %'":  # "2 %" is valid: spaces are allowed
        result.assert_outcomes(passed=1)
        return
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*_validated_at_setup.py::test_marked: @pytest.mark.vram*{message}"]
    )


SKIP_ESTIMATE_TEST = """
import pytest

@pytest.mark.vram(skip_estimate="boolean indexing of the batch")
def test_masked(vram):
    vram.run(vram.backend.spike, 1024)
"""


def test_skip_estimate_skips_on_the_estimator_with_the_reason(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        estimate_named="""
        from vram_scripted import ScriptedBackend

        class EstimateNamed(ScriptedBackend):
            name = "estimate"
        """
    )
    vram_pytester.makepyfile(SKIP_ESTIMATE_TEST)
    result = run_vram("-rs", backend="--vram-backend=estimate_named:EstimateNamed")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*not measurable on the estimate backend: boolean indexing of the batch*"]
    )


def test_skip_estimate_still_measures_on_other_backends(vram_pytester, run_vram):
    vram_pytester.makepyfile(SKIP_ESTIMATE_TEST)
    result = run_vram()
    result.assert_outcomes(passed=1)


def test_marker_without_fixture_is_an_error_with_the_fix(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.vram(tolerance="1%")  # module-wide: other tests unaffected

        @pytest.mark.vram
        def test_forgot():
            pass

        def test_helper():
            pass
        """
    )
    result = run_vram()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*::test_forgot: marked @pytest.mark.vram but does not use the `vram` fixture; add*"]
    )


def test_fixture_users_are_selected_by_dash_m_vram(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_m="""
        import pytest

        def test_fixture_only(vram):
            vram.run(vram.backend.spike, 1024)

        def test_plain():
            pass
        """
    )
    result = run_vram("-m", "vram")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["test_m.py::test_fixture_only * new"])


def test_several_runs_need_names(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        test_n="""
        MiB = 1024**2

        def test_named(vram):
            model = vram.build(vram.backend.alloc, 10 * MiB)
            vram.run(vram.backend.spike, 1 * MiB, name="infer")
            vram.run(vram.backend.spike, 3 * MiB, name="train")
            assert [m.name for m in vram.measurements] == ["infer", "train"]
            assert vram.device == "scripted:0" and vram.backend.name == "scripted"

        def test_unnamed_twice(vram):
            vram.run(vram.backend.spike, 1)
            vram.run(vram.backend.spike, 1)
        """
    )
    result = run_vram()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_unnamed_twice: vram.run() is called more than once in this test: give "
            "every call its own name*",
            "*::test_named::infer * 10.0 MiB * 11.0 MiB * 1.0 MiB * new",
            "*::test_named::train * 10.0 MiB * 13.0 MiB * 3.0 MiB * new",
        ]
    )


def test_a_name_no_baseline_file_can_hold_is_refused_where_it_is_given(vram_pytester, run_vram):
    # A lone surrogate cannot be written as UTF-8; NEL reads back from YAML as a space:
    # either would give a baseline file the next run refuses or misreads.
    vram_pytester.makepyfile(
        test_n="""
        def test_surrogate(vram):
            vram.run(vram.backend.spike, 1, name="step\\ud800")

        def test_nel(vram):
            vram.run(vram.backend.spike, 1, name="a\\x85b")

        def test_kept(vram):
            vram.run(vram.backend.spike, 1, name="train")
        """
    )
    result = run_vram("--vram-update")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "test_n.py::test_surrogate: vram.run(name='step\\ud800'): the name is part of the "
            "baseline key, but it holds a lone surrogate (U+D800 at position 4)*; use printable "
            "text*",
            "test_n.py::test_nel: vram.run(name='a\\x85b'): * the control character U+0085 *",
        ]
    )
    entries = load(vram_pytester.path / "baselines" / "scripted.yaml").entries
    assert list(entries) == ["test_n.py::test_kept::train"]  # and the next run can read it
    assert run_vram("-k", "kept").ret == pytest.ExitCode.OK


def test_a_test_id_no_baseline_file_can_hold_needs_a_key(vram_pytester, run_vram):
    # A file name with a byte that is not UTF-8 becomes a lone surrogate in the node id.
    name = os.fsdecode(b"test_\xff.py")
    (vram_pytester.path / name).write_text("def test_x(vram):\n    vram.run(lambda: None)\n")
    result = run_vram("--vram-update", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "'test_\\udcff.py::test_x': the test id is its baseline key, but it holds a lone "
            "surrogate (U+DCFF at position 5)*; give the test a key of printable text with "
            "@pytest.mark.vram(key='...') or rename it"
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert not (vram_pytester.path / "baselines" / "scripted.yaml").exists()


def test_marker_key_overrides_the_node_id(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        """
        import pytest

        @pytest.mark.vram(key="shared/inference")
        def test_keyed(vram):
            vram.run(vram.backend.spike, 1024)
        """
    )
    run_vram().stdout.fnmatch_lines(["shared/inference * new"])


def test_warmup_is_not_counted_and_runs_once(vram_pytester, run_vram):
    vram_pytester.makepyfile(
        """
        def test_session_backend(vram_backend):
            assert vram_backend.warmups == 1 and vram_backend.device == "scripted:0"

        def test_a(vram, vram_backend):
            assert vram.backend is vram_backend
            assert vram.backend.warmups == 1
            vram.run(vram.backend.spike, 1024)
            assert vram.measurements[0].peak_bytes == 1024  # the warm-up's 32 MiB is not in it

        def test_b(vram):
            assert vram.backend.warmups == 1
            vram.run(vram.backend.spike, 1024)
        """
    )
    run_vram().assert_outcomes(passed=3)


def test_torch_is_not_imported_without_vram_tests(vram_pytester, run_vram_subprocess):
    vram_pytester.makepyfile(
        """
        import sys

        def test_plain():
            assert "torch" not in sys.modules, "the vram plugin imported torch"
        """
    )
    # The default backend (auto) would import torch to look for a GPU: it must not be
    # resolved while no vram test runs.
    result = run_vram_subprocess("-p", "no:xdist", backend="--vram-backend=auto")
    result.assert_outcomes(passed=1)


def test_cuda_backend_without_gpu_points_to_the_estimator(torch, vram_pytester, run_vram):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    vram_pytester.makepyfile(
        test_c="""
        def test_a(vram):
            vram.run(lambda: None)
        """
    )
    result = run_vram(backend="--vram-backend=cuda")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*vram backend 'cuda': no CUDA GPU is visible*use --vram-backend=estimate*"]
    )


def test_cuda_profile_slug():
    from pytest_vram.backends.cuda import slug

    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("NVIDIA GeForce RTX 4090 (24 GB)") == "nvidia-geforce-rtx-4090-24-gb"


@pytest.mark.parametrize(
    ("worker", "count", "expected"),
    [
        (None, 8, None),  # not under xdist: the current device
        ("gw0", 1, None),  # one GPU: every worker shares it
        ("gw0", 2, 0),
        ("gw1", 2, 1),
        ("gw2", 2, 0),  # more workers than GPUs: round robin
        ("gw7", 8, 7),
        ("master", 4, None),
    ],
)
def test_xdist_worker_gets_a_gpu_of_its_own(worker, count, expected):
    from pytest_vram.backends.cuda import worker_device

    assert worker_device(worker, count) == expected


def test_vram_testpaths_narrow_the_memory_job_only(vram_pytester, run_vram):
    vram_pytester.makeini(
        """
        [pytest]
        testpaths = tests
        vram_testpaths = tests/memory
        """
    )
    vram_pytester.mkdir("tests")
    vram_pytester.mkdir("tests/memory")
    vram_pytester.mkdir("tests/unit")
    (vram_pytester.path / "tests/memory/test_mem.py").write_text(
        "def test_mem(vram):\n    vram.run(vram.backend.spike, 1024)\n"
    )
    (vram_pytester.path / "tests/unit/test_unit.py").write_text(
        "raise RuntimeError('the memory job must not import me')\n"
    )
    run_vram("-m", "vram").assert_outcomes(passed=1)  # tests/unit not even imported
    run_vram("-m", "vram and not slow").assert_outcomes(passed=1)
    # Any other selection, or explicit paths, collects what it always did.
    assert "the memory job must not import me" in run_vram("-m", "not vram").stdout.str()
    explicit = run_vram("-m", "vram", "tests")
    assert "the memory job must not import me" in explicit.stdout.str()


def test_vram_numprocesses_runs_the_memory_job_on_workers(vram_pytester, run_vram_subprocess):
    pytest.importorskip("xdist")
    vram_pytester.makeini("[pytest]\nvram_numprocesses = 2\n")
    vram_pytester.makepyfile(
        test_mem="""
        def test_a(vram):
            vram.run(vram.backend.spike, 1024)

        def test_b(vram):
            vram.run(vram.backend.spike, 2048)

        def test_plain():
            pass
        """
    )
    memory_job = run_vram_subprocess("-m", "vram", "-v")
    memory_job.assert_outcomes(passed=2)
    assert "2 workers [2 items]" in memory_job.stdout.str()
    assert "scheduling tests via WorkStealingScheduling" in memory_job.stdout.str()
    # --dist given: as the user asked
    loaded = run_vram_subprocess("-m", "vram", "-v", "--dist", "load")
    assert "scheduling tests via LoadScheduling" in loaded.stdout.str()
    # -n given, or another selection: as the user asked
    assert " workers [" not in run_vram_subprocess("-m", "vram", "-n", "0").stdout.str()
    everything = run_vram_subprocess()
    everything.assert_outcomes(passed=3)
    assert " workers [" not in everything.stdout.str()


def test_vram_numprocesses_rejects_a_bad_value(vram_pytester, run_vram_subprocess):
    pytest.importorskip("xdist")
    vram_pytester.makeini("[pytest]\nvram_numprocesses = many\n")
    vram_pytester.makepyfile(test_mem="def test_a(vram):\n    vram.run(vram.backend.spike, 1024)\n")
    result = run_vram_subprocess("-m", "vram")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "vram_numprocesses = 'many'" in result.stderr.str()


def test_a_report_path_as_its_own_word_that_moved_the_rootdir_is_refused(
    vram_pytester, run_vram_subprocess
):
    """pytest picks the rootdir before plugins add their options: in `--vram-json PATH`
    an existing PATH outside the project became the rootdir, the project's ini was not
    read and every measurement lacked its baseline."""
    vram_pytester.makeini("[pytest]\nvram_baselines = baselines\n")
    vram_pytester.makepyfile(test_mem="def test_a(vram):\n    vram.run(vram.backend.spike, 1024)\n")
    outside = vram_pytester.path.parent / "reports"
    outside.mkdir(exist_ok=True)
    report = outside / "run.json"
    report.write_text("{}")  # a report from an earlier run: now an existing path
    refused = run_vram_subprocess("--vram-json", str(report))
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert f"write --vram-json={report}" in refused.stderr.str()
    run_vram_subprocess(f"--vram-json={report}").assert_outcomes(passed=1)
