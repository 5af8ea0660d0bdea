"""pytest entry point of pytest-vram (registered under the ``pytest11`` entry point ``vram``).

Options, the marker, the ``vram`` fixture and thin hook classes, one feature each. The
per-run state lives in :class:`~pytest_vram.session.VramSession` (``config.stash[PLUGIN_KEY]``);
``pytest_configure`` registers the hook classes the run needs, as pytest's cacheprovider
does. Importing this module does not import torch: the backend is created at the first
measurement.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from pytest_vram import marker
from pytest_vram.backends import ALLOCATOR_MODES, CHOICES

if TYPE_CHECKING:  # imported where a run measures (see pytest_vram.session_hooks)
    from pytest_vram import marks
    from pytest_vram.backends import Backend
    from pytest_vram.figures import Figures
    from pytest_vram.fixture import Vram
    from pytest_vram.session import VramSession
    from pytest_vram.units import Tolerance

#: the run's session, once activated (``pytest_vram.session_hooks.activate``)
PLUGIN_KEY = pytest.StashKey["VramSession"]()
#: the validated options (:class:`Settings`), from ``pytest_configure`` on
SETTINGS_KEY = pytest.StashKey["Settings"]()
#: the claims' hooks, once activated
CLAIMS_KEY = pytest.StashKey["ClaimHooks"]()
MARK_KEY = pytest.StashKey["marks.VramMark | marks.MarkError | None"]()
PROBE_KEY = pytest.StashKey["Vram"]()
RECORDS_KEY = pytest.StashKey["list[report.Record]"]()
#: every rank's (passed, figures) of a test in a launched world (world.gather_figures)
RANKS_KEY = pytest.StashKey[list[tuple[bool, list[tuple[int, int]]]]]()

__all__ = ["PLUGIN_KEY", "Settings", "vram", "vram_backend", "vram_figures"]

#: ``vram_tolerance``'s default: no deviation allowed
TOLERANCE_DEFAULT = "0"

#: the ini keys of type bool (their errors say "write true or false")
_BOOL_KEYS: set[str] = set()

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
        if ini_type == "bool":
            _BOOL_KEYS.add(ini)

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
        default=TOLERANCE_DEFAULT,
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
    """``vram_numprocesses``: the memory job on pytest-xdist workers unless ``-n`` is given
    (with ``--dist worksteal`` unless ``--dist`` is given)."""
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
        if getattr(config.option, "dist", "no") == "no" and _xdist_steals():
            # The memory job's tests differ a hundredfold in length: with xdist's default
            # "load" one worker is left with the last long ones while the other idles;
            # "worksteal" hands them over (2-core CPU: 24.3-24.9 s -> 23.6-23.7 s).
            config.option.dist = "worksteal"
    return (yield)


def _xdist_steals() -> bool:
    """Whether the installed pytest-xdist has ``--dist worksteal`` (3.2 on)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("pytest-xdist").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (3, 2)


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


class Settings(NamedTuple):
    """The validated ``vram`` options of one run.

    A named tuple, not a dataclass: it is built in every pytest process that has the
    plugin installed, and a 16-field dataclass costs about 0.5 ms to create (a tenth of
    that as a named tuple), which a suite without vram tests would pay for nothing.
    ``tolerance`` is the default's text (``"0"``) until the session parses it (the
    units module is imported only by a run that measures); any other value is parsed,
    and so checked, here.
    """

    backend: str
    allocator: str
    update: bool
    prune: bool
    strict: bool
    update_new_only: bool
    stale_warn: bool
    fail_improvements: bool
    tolerance: Tolerance | str
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
        tolerance = _value(config, "vram_tolerance")
        if str(tolerance).strip() != TOLERANCE_DEFAULT:
            from pytest_vram.units import UnitError, parse_tolerance

            try:
                tolerance = parse_tolerance(tolerance, what=_source(config, "vram_tolerance"))
            except UnitError as exc:
                raise pytest.UsageError(str(exc)) from None
        else:
            tolerance = TOLERANCE_DEFAULT
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
    except (ValueError, pytest.UsageError) as exc:
        # An ini bool such as `vram_update = maybe`: pytest < 9.2 raises a ValueError,
        # 9.2 on a UsageError; neither names the key in an ini file.
        fix = "write true or false" if name in _BOOL_KEYS else "write the value as a string"
        raise pytest.UsageError(f"{name} (ini): {exc}; {fix} (or leave the key out)") from None
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
        import inspect

        from _pytest.config.findpaths import determine_setup

        # pytest 9 added override_ini (the -o values can name the ini file's options)
        extra = (
            {"override_ini": config.option.override_ini}
            if "override_ini" in inspect.signature(determine_setup).parameters
            else {}
        )

        def rootdir(words: list[str]) -> Path:
            return determine_setup(
                inifile=config.option.inifilename,
                args=words,
                rootdir_cmd_arg=config.option.rootdir,
                invocation_dir=Path(config.invocation_params.dir),
                **extra,
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
    settings = Settings.from_config(config)
    config.stash[SETTINGS_KEY] = settings
    worker = hasattr(config, "workerinput")  # as pytest_vram.xdist.is_worker
    collection = CollectionHooks(config, worker=worker)
    config.pluginmanager.register(collection, "vram-collection")
    if _activated_at_configure(config, settings, worker):
        collection.activate()


def _activated_at_configure(config: pytest.Config, settings: Settings, worker: bool) -> bool:
    """Whether this run needs the session before collection (else on first use, see
    :mod:`pytest_vram.session_hooks`): options whose work happens at the session's end
    whatever is collected (a profile's stale entries, an update, report files, artifacts),
    an xdist controller (it collects nothing itself: its workers do), a launched world."""
    if (
        settings.profile is not None
        or settings.update
        or settings.update_new_only
        or settings.json_path is not None
        or settings.markdown_path is not None
        or settings.artifacts is not None
    ):
        return True
    controller = (
        not worker
        and getattr(config.option, "dist", "no") != "no"
        and bool(getattr(config.option, "tx", None))
        and not config.option.collectonly
    )
    return controller or int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def _ensure_measuring(config: pytest.Config) -> VramSession:
    """A measurement in a run whose collection had no vram test (``vram`` requested with
    ``request.getfixturevalue``, or ``vram_backend`` alone): activate the session, or
    register the measuring hooks again where the collection dropped them."""
    from pytest_vram import session_hooks

    manager = config.pluginmanager
    if PLUGIN_KEY not in config.stash:
        return session_hooks.activate(config)
    session = config.stash[PLUGIN_KEY]
    if manager.get_plugin(session_hooks.MEASURING[0]) is None:
        session_hooks.register_measuring(config, session)
        # The records of this test on: what came before measured nothing.
        if manager.get_plugin("vram-reports") is None:
            session_hooks.register_reports(config, session, config.stash[CLAIMS_KEY])
    return session


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
    session = _ensure_measuring(request.config)
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
    # also where nothing was collected: a backend's collections freeze what GarbageHooks thaws
    return _ensure_measuring(pytestconfig).backend()


@pytest.fixture(scope="session")
def vram_figures(pytestconfig: pytest.Config) -> Figures:
    """The figures measured so far in this process, by baseline key:
    ``vram_figures[key].peak_bytes``. For comparisons across tests, declare a claim
    (``vram_claims``), which sees every test's figures whatever the order and worker."""
    _ensure_measuring(pytestconfig)
    return pytestconfig.stash[CLAIMS_KEY].figures


# --------------------------------------------------------------------------- hooks


class CollectionHooks:
    """What every run needs: which tests are vram tests and the baseline key each owns,
    which modules declare claims, the header line, the marker checks at setup; and the
    session's activation (:mod:`pytest_vram.session_hooks`) where one of those shows up."""

    def __init__(self, config: pytest.Config, *, worker: bool) -> None:
        self.config = config
        self.worker = worker
        #: a collected test (deselected ones too) carries the marker or uses the fixture
        self.measuring = False
        #: the files of the collected tests that are not vram tests (until activation)
        self.plain_files: set[str] = set()

    @property
    def active(self) -> bool:
        return PLUGIN_KEY in self.config.stash

    def activate(self) -> VramSession:
        from pytest_vram import session_hooks

        session = session_hooks.activate(self.config)
        if self.plain_files:
            session.collect_plain(sorted(self.plain_files))
            self.plain_files.clear()
        return session

    def pytest_report_header(self, config: pytest.Config) -> str:
        settings = config.stash[SETTINGS_KEY]
        profile = settings.profile or "the backend's"
        strict = "on" if settings.strict else "off"
        try:
            baselines = str(settings.baselines.relative_to(config.rootpath)) or "."
        except ValueError:
            baselines = str(settings.baselines)
        return (
            f"vram: backend {settings.backend}, profile {profile}, baselines {baselines}/, "
            f"strict {strict}, attribution {settings.attribution}, "
            f"allocator {settings.allocator}"
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        rep = yield
        if (
            isinstance(collector, pytest.Module)
            and rep.passed
            and getattr(collector.obj, marker.CLAIMS_ATTRIBUTE, None) is not None
        ):
            self.activate()
            self.config.stash[CLAIMS_KEY].module_collected(collector, rep)
        return rep

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

            session = self.activate()
            self.measuring = True
            mark = _evaluated(item)
            if isinstance(mark, MarkError):
                mark = None  # reported at setup
            session.collect(item.nodeid, mark, vram=True)
        files = {nodeid.split("::", 1)[0] for nodeid in plain}
        if self.active:
            self.config.stash[PLUGIN_KEY].collect_plain(sorted(files))
        else:
            self.plain_files.update(files)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # An item that another plugin marked after our collection_modifyitems (tryfirst)
        # still counts.
        parents: dict[int, bool] = {}
        if self.measuring or any(marker.carries(i, parents) for i in session.items):
            self.measuring = True
            self.activate()
            return
        if self.worker:
            return  # its session-end hook sends the collection to the controller
        # No test here can measure: drop this class, whose setup check would return at
        # once, and, where the run was activated anyway (an option, a claim), the per-test
        # hooks of measured tests and the report hook that gathers their figures (unless
        # a module declared a claim, which needs every test's outcome).
        manager = self.config.pluginmanager
        names = ["vram-collection"]
        if self.active:
            from pytest_vram.session_hooks import MEASURING

            names.extend(MEASURING)
            claim_hooks = self.config.stash[CLAIMS_KEY]
            if not claim_hooks.declared:  # no claim to judge either
                names.append("vram-reports")
        for name in names:
            plugin = manager.get_plugin(name)
            if plugin is not None:
                manager.unregister(plugin, name)

    def pytest_sessionfinish(self) -> None:
        # A worker that was never activated still tells the controller which files it
        # collected: their baseline entries are not stale (pytest_vram.xdist.send).
        if self.worker and not self.active:
            from pytest_vram import xdist

            xdist.send(self.config, {"files": sorted(self.plain_files), "owners": {}})

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not self.measuring:  # no test of this run carries the marker: nothing to check
            return
        from pytest_vram.marks import MarkError

        mark = _evaluated(item)
        if isinstance(mark, MarkError):
            pytest.fail(str(mark), pytrace=False)
        session = self.config.stash[PLUGIN_KEY]
        key = mark.base_key(item.nodeid) if mark else item.nodeid
        others = session.shared_with(item.nodeid, key)
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
