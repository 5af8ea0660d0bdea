"""pytest entry point of pytest-vram (registered under the ``pytest11`` entry point ``vram``).

Options, the marker, the ``vram`` fixture and thin hook classes, one feature each. The
per-run state lives in :class:`~pytest_vram.session.VramSession` (``config.stash[PLUGIN_KEY]``);
``pytest_configure`` registers the hook classes the run needs, as pytest's cacheprovider
does. Importing this module does not import torch: the backend is created at the first
measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vram import claiming, marker, output, world, xdist
from pytest_vram.backends import ALLOCATOR_MODES, CHOICES
from pytest_vram.session import SETUP_KEYS, VramSession
from pytest_vram.units import Tolerance, UnitError, parse_tolerance

if TYPE_CHECKING:  # marks (the marker's options) is imported where a test is a vram test
    from pytest_vram import marks
    from pytest_vram.backends import Backend
    from pytest_vram.fixture import Vram

PLUGIN_KEY = pytest.StashKey[VramSession]()
MARK_KEY = pytest.StashKey["marks.VramMark | marks.MarkError | None"]()
PROBE_KEY = pytest.StashKey["Vram"]()
RECORDS_KEY = pytest.StashKey["list[report.Record]"]()
#: every rank's (passed, figures) of a test in a launched world (world.gather_figures)
RANKS_KEY = pytest.StashKey[list[tuple[bool, list[tuple[int, int]]]]]()

__all__ = ["PLUGIN_KEY", "SETUP_KEYS", "Settings", "VramSession", "vram", "vram_backend"]

_BACKEND_HELP = ", ".join(CHOICES) + ", or a custom backend as 'package.module:ClassName'"


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vram", "GPU memory measurement (pytest-vram)")

    def option(
        *names: str, ini: str, ini_type: str | None, default: Any, help: str, **kw: Any
    ) -> None:
        group.addoption(
            *names, dest=ini, default=None, help=f"{help.replace('%', '%%')} [ini: {ini}]", **kw
        )
        parser.addini(ini, help=help, type=ini_type, default=default)

    option(
        "--vram-backend",
        ini="vram_backend",
        ini_type="string",
        default="auto",
        metavar="NAME",
        help=f"measuring backend: {_BACKEND_HELP} (default: auto)",
    )
    option(
        "--vram-allocator",
        ini="vram_allocator",
        ini_type="string",
        default="expandable",
        metavar="MODE",
        help="which allocator figure to measure: 'expandable' (expandable segments: the sum "
        "of 512-B-rounded live requests, the same whatever ran before; default) or "
        "'default' (the allocator's default settings: depends on allocation history and "
        "can change with test order)",
    )
    option(
        "--vram-update",
        ini="vram_update",
        ini_type="bool",
        default=False,
        action="store_true",
        help="rewrite the baseline entries of the measured tests (and nothing else)",
    )
    option(
        "--vram-prune",
        ini="vram_prune",
        ini_type="bool",
        default=False,
        action="store_true",
        help="with --vram-update: delete stale entries that no collected test produces",
    )
    option(
        "--vram-update-new-only",
        ini="vram_update_new_only",
        ini_type="bool",
        default=False,
        action="store_true",
        help="record entries only for measurements without a baseline; existing entries are "
        "judged as usual and never rewritten",
    )
    option(
        "--vram-stale-warn",
        ini="vram_stale_warn",
        ini_type="bool",
        default=False,
        action="store_true",
        help="in strict mode, only list stale baseline entries instead of failing the session",
    )
    option(
        "--vram-fail-improvements",
        ini="vram_fail_improvements",
        ini_type="bool",
        default=False,
        action="store_true",
        help="fail a measurement below its baseline minus tolerance until it is recorded",
    )
    option(
        "--vram-strict",
        ini="vram_strict",
        ini_type="bool",
        default=None,
        action="store_true",
        help="fail measurements without a baseline (default: on when the CI environment "
        "variable is set, e.g. CI=true)",
    )
    group.addoption(
        "--vram-no-strict",
        dest="vram_strict",
        action="store_false",
        default=None,
        help="switch strict mode off, also under CI",
    )
    option(
        "--vram-tolerance",
        ini="vram_tolerance",
        ini_type="string",
        default="0",
        metavar="TOL",
        help="allowed deviation from a baseline, e.g. '0.5%', '4MiB', '0.5% + 4MiB' "
        "(default 0; a baseline file, an entry or the marker may set their own)",
    )
    option(
        "--vram-profile",
        ini="vram_profile",
        ini_type="string",
        default="",
        metavar="NAME",
        help="baseline profile name instead of the backend's own",
    )
    option(
        "--vram-baselines",
        ini="vram_baselines",
        ini_type="string",
        default="baselines",
        metavar="DIR",
        help="directory of the baseline files, relative to rootdir (default: baselines)",
    )
    option(
        "--vram-json",
        ini="vram_json",
        ini_type="string",
        default="",
        metavar="PATH",
        help="write every measurement and verdict to this JSON file",
    )
    option(
        "--vram-attribution",
        ini="vram_attribution",
        ini_type="string",
        default="auto",
        metavar="WHEN",
        help="collect what is live at each peak by module and category: on, off, or auto "
        "(on for the estimate backend, off for cuda, where it costs time; see docs/attribution.md)",
    )
    option(
        "--vram-artifacts",
        ini="vram_artifacts",
        ini_type="string",
        default="",
        metavar="DIR",
        help="write a breakdown, an image of memory over the run (needs matplotlib: "
        "pip install 'pytest-vram[plot]') and on cuda a torch memory snapshot for each "
        "failing test (or each test, with --vram-artifacts-all) into DIR",
    )
    option(
        "--vram-artifacts-all",
        ini="vram_artifacts_all",
        ini_type="bool",
        default=False,
        action="store_true",
        help="with --vram-artifacts: write them for every measured test, not only failing ones",
    )
    option(
        "--vram-markdown",
        ini="vram_markdown",
        ini_type="string",
        default="",
        metavar="PATH",
        help="write the VRAM table to this Markdown file",
    )
    parser.addini(
        "vram_numprocesses",
        type="string",
        default="",
        help="run `pytest -m vram` on this many pytest-xdist workers ('auto': one per CPU) "
        "when -n is not given; figures are the same in any process (default: one process)",
    )
    parser.addini(
        "vram_testpaths",
        type="paths",
        default=[],
        help="where `pytest -m vram` collects when no paths are given (instead of testpaths), "
        "so that the memory job does not import the rest of the test tree",
    )


def _selects_only_vram(config: pytest.Config) -> bool:
    expression = " ".join(str(config.option.markexpr or "").split())
    return expression == "vram" or expression.startswith("vram and ")


@pytest.hookimpl(wrapper=True)  # before pytest-xdist's own tryfirst hook reads -n
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, Any, Any]:
    """``vram_numprocesses``: the memory job on pytest-xdist workers unless ``-n`` is given."""
    workers = str(config.getini("vram_numprocesses")).strip()
    if (
        workers
        and getattr(config.option, "numprocesses", "missing") is None  # xdist there, no -n
        and not os.environ.get("PYTEST_XDIST_WORKER")
        and _selects_only_vram(config)
    ):
        if workers not in ("auto", "logical") and not workers.isdigit():
            raise pytest.UsageError(
                f"vram_numprocesses = {workers!r}: give a number of workers or 'auto'"
            )
        config.option.numprocesses = workers if not workers.isdigit() else int(workers)
    return (yield)


def _narrow_collection(config: pytest.Config) -> None:
    """``pytest -m vram`` with no paths collects ``vram_testpaths`` instead of testpaths.

    Only when the mark expression selects nothing but vram tests (``vram``, or ``vram and
    ...``) and the paths came from testpaths: explicit paths are the user's, and another
    expression may select tests the narrower paths do not hold.
    """
    paths = config.getini("vram_testpaths")
    if not paths or config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return
    if not _selects_only_vram(config):
        return
    config.args[:] = [str(path) for path in paths]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated ``vram`` options of one run."""

    backend: str
    allocator: str
    update: bool
    prune: bool
    strict: bool
    update_new_only: bool
    stale_warn: bool
    fail_improvements: bool
    tolerance: Tolerance
    profile: str | None
    baselines: Path
    json_path: Path | None
    markdown_path: Path | None
    attribution: str = "auto"
    artifacts: Path | None = None
    artifacts_all: bool = False

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Read options (command line first, then ini) and raise UsageError on bad values."""
        backend = str(_value(config, "vram_backend")).strip()
        if backend not in CHOICES and not _looks_like_target(backend):
            raise pytest.UsageError(
                f"{_source(config, 'vram_backend')}: unknown backend {backend!r}; "
                f"valid values: {_BACKEND_HELP}"
            )
        allocator = str(_value(config, "vram_allocator")).strip()
        if allocator not in ALLOCATOR_MODES:
            raise pytest.UsageError(
                f"{_source(config, 'vram_allocator')}: unknown allocator mode {allocator!r}; "
                f"valid values: {', '.join(ALLOCATOR_MODES)}"
            )
        try:
            tolerance = parse_tolerance(
                _value(config, "vram_tolerance"), what=_source(config, "vram_tolerance")
            )
        except UnitError as exc:
            raise pytest.UsageError(str(exc)) from None
        update, prune = bool(_value(config, "vram_update")), bool(_value(config, "vram_prune"))
        if prune and not update:
            raise pytest.UsageError(
                "--vram-prune only works together with --vram-update: "
                "run `pytest --vram-update --vram-prune`"
            )
        update_new_only = bool(_value(config, "vram_update_new_only"))
        if update_new_only and update:
            raise pytest.UsageError(
                "--vram-update-new-only records only missing entries and --vram-update "
                "rewrites every measured one: use one of them"
            )
        strict = _value(config, "vram_strict")
        profile = str(_value(config, "vram_profile") or "") or None
        if profile is not None:
            from pytest_vram import baselines
            from pytest_vram.baselines import BaselineError

            try:
                baselines.check_profile_name(profile)
            except BaselineError as exc:
                raise pytest.UsageError(f"{_source(config, 'vram_profile')}: {exc}") from None
        if not str(_value(config, "vram_baselines")).strip():
            raise pytest.UsageError(
                f"{_source(config, 'vram_baselines')} is empty, which would mean the rootdir "
                f"itself; give the directory of the baseline files, e.g. 'baselines'"
            )
        attribution = str(_value(config, "vram_attribution")).strip().lower()
        if attribution not in ("auto", "on", "off"):
            raise pytest.UsageError(
                f"{_source(config, 'vram_attribution')}: expected on, off or auto, "
                f"got {attribution!r}"
            )
        settings = cls(
            attribution=attribution,
            artifacts=_optional_path(config, "vram_artifacts"),
            artifacts_all=bool(_value(config, "vram_artifacts_all")),
            backend=backend,
            allocator=allocator,
            update=update,
            prune=prune,
            strict=_ci() if strict is None else bool(strict),
            update_new_only=update_new_only,
            stale_warn=bool(_value(config, "vram_stale_warn")),
            fail_improvements=bool(_value(config, "vram_fail_improvements")),
            tolerance=tolerance,
            profile=profile,
            baselines=_path(config, "vram_baselines", config.rootpath),
            json_path=_optional_path(config, "vram_json"),
            markdown_path=_optional_path(config, "vram_markdown"),
        )
        _check_report_paths(config, settings)
        return settings


def _value(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    if value is not None:
        return value
    try:
        value = config.getini(name)
    except ValueError as exc:  # an ini bool such as `vram_update = maybe`
        raise pytest.UsageError(
            f"{name} (ini): {exc}; write true or false (or leave the key out)"
        ) from None
    return _unquote(value) if isinstance(value, str) else value


def _unquote(value: str) -> str:
    # An ini file keeps quotes as part of the value: `vram_tolerance = '0.5%'` would read
    # as the 6-character string "'0.5%'". Nothing here ever means the quotes.
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return value


def _source(config: pytest.Config, name: str) -> str:
    """How the user spelled the setting: ``--vram-x`` or ``vram_x (ini)``."""
    if config.getoption(name) is not None:
        return "--" + name.replace("_", "-")
    return f"{name} (ini)"


def _check_report_paths(config: pytest.Config, settings: Settings) -> None:
    """Refuse report files that would overwrite a baseline file or each other."""
    if settings.json_path is None and settings.markdown_path is None:
        return
    from pytest_vram import baselines

    baseline_dir = baselines.real_path(settings.baselines)
    seen: dict[Path, str] = {}
    for name, path in (
        ("vram_json", settings.json_path),
        ("vram_markdown", settings.markdown_path),
    ):
        if path is None:
            continue
        real = baselines.real_path(path)
        if real.parent == baseline_dir and real.suffix.lower() in (".yaml", ".yml"):
            raise pytest.UsageError(
                f"{_source(config, name)}={path} would overwrite a baseline file in "
                f"{settings.baselines}; write the report elsewhere (e.g. vram-report.json)"
            )
        if real in seen:
            raise pytest.UsageError(
                f"{_source(config, name)} and {seen[real]} both name {path}; give each "
                f"report its own file"
            )
        seen[real] = _source(config, name)


def _looks_like_target(name: str) -> bool:
    module, sep, cls = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and cls.isidentifier()


def _ci() -> bool:
    """Strict by default on CI: the CI variable is set to something other than 0/false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _path(config: pytest.Config, name: str, ini_base: Path) -> Path:
    # Command-line paths are relative to where pytest was started (like --junitxml);
    # ini paths to the rootdir, so they mean the same from any working directory.
    value = str(_value(config, name))
    base = config.invocation_params.dir if config.getoption(name) is not None else ini_base
    return (base / value).resolve()


def _optional_path(config: pytest.Config, name: str) -> Path | None:
    return _path(config, name, config.rootpath) if _value(config, name) else None


def _check_rootdir(config: pytest.Config) -> None:
    """Refuse a rootdir that pytest chose from a ``--vram-*`` value given as its own word.

    pytest finds the rootdir and the ini file before it loads plugins, so in
    ``--vram-json /tmp/run.json`` it takes ``/tmp/run.json``, if that file exists (a report
    of an earlier run), for a test path: the rootdir moves, the project's configuration
    (testpaths, baselines) is not read, and every measurement is "without a baseline".
    ``--vram-json=/tmp/run.json`` is unambiguous. Found by asking pytest's own rootdir
    finder with and without those words; skipped if that internal API changes.
    """
    args = [str(a) for a in config.invocation_params.args or ()]
    ours = [
        i + 1
        for i, (option, value) in enumerate(zip(args, args[1:], strict=False))
        if option.startswith("--vram-") and "=" not in option and not value.startswith("-")
    ]
    if not ours:
        return
    try:
        from _pytest.config.findpaths import determine_setup

        def rootdir(words: list[str]) -> Path:
            return determine_setup(
                inifile=config.option.inifilename,
                override_ini=config.option.override_ini,
                args=words,
                rootdir_cmd_arg=config.option.rootdir,
                invocation_dir=Path(config.invocation_params.dir),
            )[0]

        without = [a for i, a in enumerate(args) if i not in ours]
        moved = rootdir(args) != rootdir(without)
    except Exception:  # noqa: BLE001 - pytest's internals moved: no check rather than a crash
        return
    if moved:
        option, value = args[ours[0] - 1], args[ours[0]]
        raise pytest.UsageError(
            f"{option} {value}: pytest chose the rootdir ({config.rootpath}) from this value, "
            f"before it knew that {option} takes one, so the project's configuration was not "
            f"read; write {option}={value}"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", marker.MARKER_HELP)
    _check_rootdir(config)
    _narrow_collection(config)
    worker = xdist.is_worker(config)
    session = VramSession(
        Settings.from_config(config),
        config.rootpath,
        worker=worker,
        secondary_rank=world.is_secondary_rank(),
        profile_source=_source(config, "vram_profile"),
    )
    config.stash[PLUGIN_KEY] = session
    register = config.pluginmanager.register
    register(session, "vram-session")  # no hooks of its own: found by name, as before
    register(CollectionHooks(config, session), "vram-collection")
    _register_measuring(config, session)
    # Only the controller (or the single process) and a launched world's rank 0 aggregate,
    # report and write; a worker sends its collection to the controller.
    if worker:
        register(WorkerHooks(config, session), "vram-worker")
    elif not session.secondary_rank:
        register(AggregateHooks(config, session), "vram-aggregate")
    register(output.OutputHooks(session), "vram-output")
    if not worker:
        register(xdist.ControllerHooks(session.receive), "vram-controller")
    claim_hooks = claiming.ClaimHooks(
        config,
        worker=session.worker,
        strict=session.settings.strict,
        owner=session.owner,
        results=session.claims,
    )
    register(claim_hooks, "vram-claims")
    _register_reports(config, session, claim_hooks)


#: The hook classes only a test that measures needs (in the order they are registered).
MEASURING = ("vram-measure", "vram-garbage", "vram-measured-output", "vram-benchmark")


def _register_measuring(config: pytest.Config, session: VramSession) -> None:
    """Register the hooks that act on a measured test (a ``vram`` fixture's probe).

    At ``pytest_configure``, like the others; a run that collects no vram test drops them
    again at the end of collection (:meth:`CollectionHooks.pytest_collection_finish`), so
    that its thousand plain tests do not each pass through them.
    """
    register = config.pluginmanager.register
    register(MeasureHooks(session), "vram-measure")
    register(GarbageHooks(), "vram-garbage")
    register(output.MeasuredOutputHooks(session), "vram-measured-output")
    if config.pluginmanager.hasplugin("benchmark"):  # pytest-benchmark is active
        from pytest_vram import benchmarking

        register(benchmarking.BenchmarkHooks(PROBE_KEY, RECORDS_KEY), "vram-benchmark")


def _register_reports(
    config: pytest.Config, session: VramSession, claim_hooks: claiming.ClaimHooks
) -> None:
    """The report hook, which only a run that measures or judges claims needs: dropped
    with :data:`MEASURING` where nothing measures and no module declared a claim."""
    aggregate = not session.worker and not session.secondary_rank
    config.pluginmanager.register(ReportHooks(session, claim_hooks, aggregate), "vram-reports")


def _ensure_measuring(config: pytest.Config) -> None:
    """A measurement in a run whose collection had no vram test (``vram`` requested with
    ``request.getfixturevalue``, or ``vram_backend`` alone): register the hooks again."""
    manager = config.pluginmanager
    if manager.get_plugin(MEASURING[0]) is None:
        session = config.stash[PLUGIN_KEY]
        _register_measuring(config, session)
        # The records of this test on: what came before measured nothing.
        if manager.get_plugin("vram-reports") is None:
            _register_reports(config, session, manager.get_plugin("vram-claims"))


# --------------------------------------------------------------------------- fixture


@pytest.fixture
def vram(request: pytest.FixtureRequest) -> Iterator[Vram]:
    """Measure the GPU memory of a model build and of workloads in this test.

    ``vram.build(fn, *args, **kw)`` runs a setup step (e.g. building the model on
    ``vram.device``); what it leaves allocated is the model's memory. ``vram.run(fn, *args,
    name=None, **kw)`` runs a workload and records its peak: one ``run`` per test is keyed
    by the test's node id, several by ``f"{nodeid}::{name}"``. Counting starts at fixture
    setup; at teardown what is still allocated is reported as leaked. After the test the
    measurements are compared with ``baselines/<profile>.yaml``; a regression or a budget
    overrun fails the test. A test that uses this fixture is treated as marked
    ``@pytest.mark.vram`` (options on the marker: tolerance=, budget=, key=).
    Also: ``vram.measurements``, ``vram.device`` (e.g. ``"cuda:0"``), ``vram.backend``.
    """
    session = request.config.stash[PLUGIN_KEY]
    _ensure_measuring(request.config)
    item = request.node
    mark = _valid(item)
    with session.world(mark, item.nodeid):
        from pytest_vram.marks import VramMark

        probe = session.open(mark or VramMark(), item.nodeid)
        item.stash[PROBE_KEY] = probe
        yield probe
    # After the world (process group) ends: it keeps the tensors of its last collectives.
    probe.finish()


@pytest.fixture(scope="session")
def vram_backend(pytestconfig: pytest.Config) -> Backend:
    """The measuring backend of this run (``--vram-backend``), created and warmed up on
    first use; the same object ``vram.backend`` returns. For session-wide helpers that
    need the device or the profile outside a measured test.
    """
    _ensure_measuring(pytestconfig)  # a backend's collections freeze what GarbageHooks thaws
    return pytestconfig.stash[PLUGIN_KEY].backend()


# --------------------------------------------------------------------------- hooks


class CollectionHooks:
    """Which tests are vram tests, the baseline key each owns, and marker checks at setup."""

    def __init__(self, config: pytest.Config, session: VramSession) -> None:
        self.config = config
        self.session = session
        #: a collected test (deselected ones too) carries the marker or uses the fixture
        self.measuring = False

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        # A test that uses the fixture is a vram test: `pytest -m vram` must select it.
        if "vram" in getattr(item, "fixturenames", ()) and item.get_closest_marker("vram") is None:
            item.add_marker(marker.MARKER)

    @pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: deselected tests are not stale
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        parents: dict[int, bool] = {}
        plain = []
        for item in items:
            if not marker.carries(item, parents):
                plain.append(item.nodeid)
                continue
            from pytest_vram.marks import MarkError

            self.measuring = True
            mark = _evaluated(item)
            if isinstance(mark, MarkError):
                mark = None  # reported at setup
            self.session.collect(item.nodeid, mark, vram=True)
        self.session.collect_plain(plain)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # No test here can measure: drop the per-test hooks of measured tests (see
        # _register_measuring), the report hooks that gather their figures (and the claims'
        # where no module declared one), and this class, whose setup check would return at
        # once. An item that another plugin marked after our collection_modifyitems
        # (tryfirst) still counts.
        parents: dict[int, bool] = {}
        if self.measuring or any(marker.carries(i, parents) for i in session.items):
            self.measuring = True
            return
        manager = self.config.pluginmanager
        claim_hooks = manager.get_plugin("vram-claims")
        names = [*MEASURING, "vram-collection"]
        if claim_hooks is None or not claim_hooks.declared:  # no claim to judge either
            names.append("vram-reports")
        for name in names:
            plugin = manager.get_plugin(name)
            if plugin is not None:
                manager.unregister(plugin, name)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not self.measuring:  # no test of this run carries the marker: nothing to check
            return
        from pytest_vram.marks import MarkError

        mark = _evaluated(item)
        if isinstance(mark, MarkError):
            pytest.fail(str(mark), pytrace=False)
        key = mark.base_key(item.nodeid) if mark else item.nodeid
        others = self.session.shared_with(item.nodeid, key)
        if others:
            pytest.fail(
                f"{item.nodeid}: baseline key {key!r} is also used by {', '.join(others)}; "
                f"only one figure per key can be kept: give each test its own key=",
                pytrace=False,
            )
        # Only a marker on the test itself demands the fixture: a module-wide marker that
        # sets a tolerance must not break the module's other tests.
        own = any(m.name == marker.MARKER for m in getattr(item, "own_markers", ()))
        if own and "vram" not in getattr(item, "fixturenames", ()):
            pytest.fail(
                f"{item.nodeid}: marked @pytest.mark.vram but does not use the `vram` fixture; "
                f"add a `vram` argument and measure with vram.run(workload, ...)",
                pytrace=False,
            )


class MeasureHooks:
    """After a measured test: judging, the failure text, out-of-memory text, the records
    on the teardown report (what travels to the controller and into JUnit XML)."""

    def __init__(self, session: VramSession) -> None:
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        probe = item.stash.get(PROBE_KEY, None)
        if probe is None:
            return rep
        from pytest_vram.fixture import VramUsageError
        from pytest_vram.measure import is_out_of_memory

        if call.when == "call":
            _gather_ranks(item, probe, rep)
        if call.when == "call" and rep.passed:
            # Only a workload that ran to completion is judged (and may become a baseline).
            gathered = item.stash.get(RANKS_KEY, None)
            records = self.session.judge(item.nodeid, probe, _valid(item), gathered)
            item.stash[RECORDS_KEY] = records
            failing = self.session.failures(item.nodeid, records)
            if failing:
                rep.outcome = "failed"
                rep.longrepr = "\n\n".join(failing)
                explained = output.explain_failures(self.session, records)
                if explained:
                    rep.longrepr = f"{rep.longrepr}\n\n{explained}"
                # An xfail test whose body passed but whose memory fails is not the failure
                # it expected: without this pytest counts it as xfailed and exits 0.
                with contextlib.suppress(AttributeError):
                    del rep.wasxfail
        elif call.when == "call" and call.excinfo and call.excinfo.errisinstance(VramUsageError):
            rep.longrepr = f"{item.nodeid}: {call.excinfo.value}"
        elif call.when == "call" and call.excinfo and probe.out_of_memory is not None:
            if is_out_of_memory(call.excinfo.value):  # not one the test caught and went on
                rep.longrepr = probe.out_of_memory.describe(item.nodeid, probe.device)
                probe.release_on_finish(call.excinfo.tb)
        elif call.when == "teardown":
            # The leak is known only now; the teardown report is also what JUnit XML reads.
            for record in item.stash.get(RECORDS_KEY, []):
                record = dataclasses.replace(record, leaked_bytes=probe.leaked_bytes)
                rep.user_properties.append(record.to_property())
        return rep


class GarbageHooks:
    """Thaw what the backends' collections froze once a test module is done (see
    :func:`pytest_vram.backends.base.collect_garbage`), so that a cycle a module-scoped
    fixture dropped at its teardown is collected at the next test's start."""

    @pytest.hookimpl(trylast=True)  # after pytest's own teardown of the fixtures
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        module = getattr(item, "module", None)
        if nextitem is None or getattr(nextitem, "module", None) is not module:
            from pytest_vram.backends.base import thaw_garbage

            thaw_garbage()


class AggregateHooks:
    """The controller (or the single process; rank 0 of a launched world): does the
    session-end work and shows the ``VRAM`` section (:class:`ReportHooks` gathers the
    records from the reports)."""

    def __init__(self, config: pytest.Config, session: VramSession) -> None:
        self.config = config
        self.session = session

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.session.finish(_partly_selected_files(self.config)):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.session.has_summary:
            output.terminal_summary(self.session, terminalreporter)


class ReportHooks:
    """Each test report's phase: to the claims (what ran, the figures) and, where the
    process aggregates (:class:`AggregateHooks`), to the session (completed tests, the
    records a teardown report carries). Dropped where nothing can measure or claim."""

    def __init__(self, session: VramSession, claims: claiming.ClaimHooks, aggregate: bool) -> None:
        self.session = session
        self.claims = claims
        self.aggregate = aggregate

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.aggregate:
            self.session.add_report(
                report.nodeid, report.when, report.passed, report.user_properties
            )
        self.claims.add_report(report)


class WorkerHooks:
    """An xdist worker: hands its collection to the controller at the end of its session."""

    def __init__(self, config: pytest.Config, session: VramSession) -> None:
        self.config = config
        self.session = session

    def pytest_sessionfinish(self) -> None:
        xdist.send(self.config, self.session.collection())


def _gather_ranks(item: pytest.Item, probe: Vram, rep: pytest.TestReport) -> None:
    """In a launched world, collect every rank's figures; a rank that failed fails all."""
    mark = _valid(item)
    if world.launched_ranks(mark.world_size if mark else None) is None:
        return
    if getattr(probe.backend, "simulates_ranks", False):
        return  # each launched rank simulated its own world: nothing to gather
    figures = [(m.model_bytes, m.peak_bytes) for m in probe.measurements]
    gathered = world.gather_figures(rep.passed, figures)
    failed = [rank for rank, (passed, _f) in enumerate(gathered) if not passed]
    if failed and rep.passed:
        rep.outcome = "failed"
        rep.longrepr = f"{item.nodeid}: failed on rank(s) {failed}; see their output"
    elif not failed:
        item.stash[RANKS_KEY] = gathered


def _partly_selected_files(config: pytest.Config) -> set[str]:
    """Test files (rootdir-relative, as in node ids) of which the command line selected only
    some tests (``file.py::test_a``): their other entries were never collected, so a run
    says nothing about them and they cannot be stale."""
    partly: set[str] = set()
    whole: set[str] = set()
    for arg in config.args:
        path, sep, _ = str(arg).partition("::")
        try:
            resolved = (config.invocation_params.dir / path).resolve()
            relative = resolved.relative_to(config.rootpath).as_posix()
        except (OSError, ValueError):
            continue
        (partly if sep else whole).add(relative)
    return {
        f for f in partly if not any(f == w or f.startswith(w.rstrip("/") + "/") for w in whole)
    }


def _evaluated(item: pytest.Item) -> marks.VramMark | marks.MarkError | None:
    """The item's vram marker, evaluated once (at collection, or at setup for items added
    later) and kept in ``item.stash``; a bad marker is kept as its error for setup to report."""
    from pytest_vram import marks

    if MARK_KEY not in item.stash:
        try:
            item.stash[MARK_KEY] = marks.evaluate(item)
        except marks.MarkError as exc:
            item.stash[MARK_KEY] = exc
    return item.stash[MARK_KEY]


def _valid(item: pytest.Item) -> marks.VramMark | None:
    from pytest_vram.marks import MarkError

    mark = item.stash.get(MARK_KEY, None)
    return None if isinstance(mark, MarkError) else mark
