"""pytest entry point of pytest-vram (registered under the ``pytest11`` entry point ``vram``).

Options, the marker, the ``vram`` fixture and the hooks that connect them. The per-run
state lives in :class:`VramPlugin`, registered with the plugin manager at configure time.
Importing this module does not import torch: the backend is created at the first
measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vram import (
    __version__,
    baselines,
    benchmarking,
    claiming,
    marks,
    output,
    report,
    world,
    xdist,
)
from pytest_vram.backends import ALLOCATOR_MODES, CHOICES, Backend, BackendUnavailable, create
from pytest_vram.baselines import BaselineError, BaselineFile, Entry
from pytest_vram.fixture import Vram, VramUsageError
from pytest_vram.measure import Meter, is_out_of_memory
from pytest_vram.report import records_from
from pytest_vram.units import Tolerance, UnitError, parse_tolerance
from pytest_vram.verdicts import Verdict, judge, worst

PLUGIN_KEY = pytest.StashKey["VramPlugin"]()
MARK_KEY = pytest.StashKey["marks.VramMark | marks.MarkError | None"]()
PROBE_KEY = pytest.StashKey[Vram]()
RECORDS_KEY = pytest.StashKey["list[report.Record]"]()
#: every rank's (passed, figures) of a test in a launched world (world.gather_figures)
RANKS_KEY = pytest.StashKey[list[tuple[bool, list[tuple[int, int]]]]]()

#: Context fields that change figures when they change (the plugin's version does not).
SETUP_KEYS = ("backend", "device", "torch", "cuda", "allocator", "metric")

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", marks.MARKER_HELP)
    plugin = VramPlugin(config, Settings.from_config(config))
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "vram-session")
    config.pluginmanager.register(output.OutputHooks(plugin), "vram-output")
    if not xdist.is_worker(config):
        config.pluginmanager.register(xdist.ControllerHooks(plugin.receive), "vram-controller")
    claim_hooks = claiming.ClaimHooks(
        config,
        worker=plugin.worker,
        strict=plugin.settings.strict,
        owner=lambda key: _owner(key, plugin.owners),
        results=plugin.outcome.claims,
    )
    config.pluginmanager.register(claim_hooks, "vram-claims")
    if config.pluginmanager.hasplugin("benchmark"):  # pytest-benchmark is active
        hooks = benchmarking.BenchmarkHooks(PROBE_KEY, RECORDS_KEY)
        config.pluginmanager.register(hooks, "vram-benchmark")


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
    plugin = request.config.stash[PLUGIN_KEY]
    with plugin.world(request.node):
        probe = plugin.open(request.node)
        yield probe
    # After the world (process group) ends: it keeps the tensors of its last collectives.
    probe.finish()


@pytest.fixture(scope="session")
def vram_backend(pytestconfig: pytest.Config) -> Backend:
    """The measuring backend of this run (``--vram-backend``), created and warmed up on
    first use; the same object ``vram.backend`` returns. For session-wide helpers that
    need the device or the profile outside a measured test.
    """
    return pytestconfig.stash[PLUGIN_KEY].backend()


# --------------------------------------------------------------------------- state


class VramPlugin:
    """Per-run state and hooks: one backend, baseline files read once, results collected."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.worker = xdist.is_worker(config)
        #: a launched rank other than 0 measures and judges, but rank 0 reports and writes
        self.secondary_rank = world.is_secondary_rank()
        self._backend: Backend | None = None
        self._backend_error: str | None = None
        self._baselines: dict[Path, BaselineFile | None | BaselineError] = {}
        self.outcome = report.Outcome(update=settings.update or settings.update_new_only)
        #: test files collected (deselected ones too): only their entries can be stale
        self.collected_files: set[str] = set()
        #: baseline key prefix -> node id of the collected test that produces it
        self.owners: dict[str, str] = {}
        #: baseline key -> node ids of the collected tests that all claim it (key=...)
        self.shared_keys: dict[str, list[str]] = {}
        #: node ids whose call phase passed (a test that measured nothing is one of them)
        self.completed: set[str] = set()
        #: profile -> baseline path shown, of every profile a vram test used
        self.used_profiles: dict[str, str] = {}

    # -- backend and baselines, created on first use --------------------------------

    def backend(self) -> Backend:
        """The measuring backend, created and warmed up at the first measurement."""
        if self._backend is None and self._backend_error is None:
            try:
                world.select_local_device()
                backend = create(self.settings.backend, allocator=self.settings.allocator)
                backend.warmup()
            except (BackendUnavailable, ValueError, ImportError) as exc:
                self._backend_error = str(exc)
            except Exception as exc:  # a broken driver, a SyntaxError in a custom backend
                self._backend_error = _backend_failure(exc)
            else:
                self._backend = backend
        if self._backend is None:
            message = f"--vram-backend={self.settings.backend}: {self._backend_error}"
            pytest.fail(message, pytrace=False)
        return self._backend

    def profile(self) -> str:
        if self.settings.profile:
            return self.settings.profile
        try:
            return self.backend().profile()
        except Exception as exc:  # pytest.fail's exception is a BaseException: not caught
            message = f"--vram-backend={self.settings.backend}: profile() {_backend_failure(exc)}"
            pytest.fail(message, pytrace=False)

    def baseline_path(self, profile: str) -> Path:
        return baselines.profile_path(self.settings.baselines, profile)

    def baseline(self, profile: str) -> BaselineFile | None:
        """The profile's baseline file, loaded once per process (read-only)."""
        try:
            path = self.baseline_path(profile)
        except BaselineError as exc:
            # Name what chose the profile: the option, or the backend when none was given.
            source = (
                _source(self.config, "vram_profile")
                if self.settings.profile
                else f"--vram-backend={self.settings.backend}: its profile()"
            )
            pytest.fail(f"{source}: {exc}", pytrace=False)
        loaded = self._load(path)
        if isinstance(loaded, BaselineError):
            pytest.fail(f"{loaded}\n(the file is left untouched; fix it and rerun)", pytrace=False)
        return loaded

    def _load(self, path: Path) -> BaselineFile | None | BaselineError:
        """The file at ``path``, parsed once per process (or the error it gave)."""
        if path not in self._baselines:
            try:
                self._baselines[path] = baselines.load(path)
            except BaselineError as exc:
                self._baselines[path] = exc
        return self._baselines[path]

    def display(self, path: Path) -> str:
        """``path`` relative to the rootdir when it lies inside it, for messages."""
        try:
            return str(path.relative_to(self.config.rootpath))
        except ValueError:
            return str(path)

    # -- collection ------------------------------------------------------------------

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        # A test that uses the fixture is a vram test: `pytest -m vram` must select it.
        if "vram" in getattr(item, "fixturenames", ()) and item.get_closest_marker("vram") is None:
            item.add_marker(marks.MARKER)

    @pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: deselected tests are not stale
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.collected_files.add(item.nodeid.split("::", 1)[0])
            if item.get_closest_marker(marks.MARKER) is None:
                continue
            mark = _evaluated(item)
            if isinstance(mark, marks.MarkError):
                mark = None  # reported at setup
            key = mark.base_key(item.nodeid) if mark else item.nodeid
            other = self.owners.get(key)
            if other is not None and other != item.nodeid:
                self.shared_keys.setdefault(key, []).extend(
                    n for n in (other, item.nodeid) if n not in self.shared_keys.get(key, [])
                )
            self.owners[key] = item.nodeid

    def receive(self, data: dict[str, Any]) -> None:
        """Merge a worker's collection into the controller's."""
        self.collected_files.update(data["files"])
        self.owners.update(data["owners"])
        self.used_profiles.update(data.get("profiles", {}))

    # -- one test ---------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        mark = _evaluated(item)
        if isinstance(mark, marks.MarkError):
            pytest.fail(str(mark), pytrace=False)
        key = mark.base_key(item.nodeid) if mark else item.nodeid
        if item.nodeid in self.shared_keys.get(key, ()):
            others = ", ".join(n for n in self.shared_keys[key] if n != item.nodeid)
            pytest.fail(
                f"{item.nodeid}: baseline key {key!r} is also used by {others}; only one "
                f"figure per key can be kept: give each test its own key=",
                pytrace=False,
            )
        # Only a marker on the test itself demands the fixture: a module-wide marker that
        # sets a tolerance must not break the module's other tests.
        own = any(m.name == marks.MARKER for m in getattr(item, "own_markers", ()))
        if own and "vram" not in getattr(item, "fixturenames", ()):
            pytest.fail(
                f"{item.nodeid}: marked @pytest.mark.vram but does not use the `vram` fixture; "
                f"add a `vram` argument and measure with vram.run(workload, ...)",
                pytrace=False,
            )

    def open(self, item: pytest.Item) -> Vram:
        """Fixture setup: start counting for ``item``."""
        mark = _valid(item) or marks.VramMark()
        backend = self.backend()
        if mark.skip_estimate is not None and backend.name == "estimate":
            pytest.skip(f"not measurable on the estimate backend: {mark.skip_estimate}")
        profile = self.profile()
        self.baseline(profile)  # a malformed file fails before the workload runs
        self.used_profiles[profile] = self.display(self.baseline_path(profile))
        meter = Meter(backend, attribution=output.attribution_on(self.settings, backend))
        meter.start()
        probe = Vram(meter, mark.base_key(item.nodeid))
        item.stash[PROBE_KEY] = probe
        return probe

    def world(self, item: pytest.Item) -> Any:
        """The process group of a test marked ``world_size=N`` (see :mod:`.world`)."""
        mark = _valid(item)
        if mark is None or mark.world_size is None:
            return contextlib.nullcontext()
        simulates = bool(getattr(self.backend(), "simulates_ranks", False))
        return _world_or_fail(world.open_world(mark.world_size, simulates, item.nodeid))

    def _gather_ranks(self, item: pytest.Item, probe: Vram, rep: pytest.TestReport) -> None:
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

    def judge(self, item: pytest.Item, probe: Vram) -> list[report.Record]:
        """Verdicts of every measurement of ``item`` against its baseline."""
        mark = _valid(item)
        profile = self.profile()
        baseline = self.baseline(profile)
        path = self.display(self.baseline_path(profile))
        records = []
        gathered = item.stash.get(RANKS_KEY, None)
        for index, m in enumerate(probe.measurements):
            key = probe.key(m)
            measured = Entry(m.model_bytes, m.peak_bytes, params=m.params)
            context = {**m.context, "plugin": __version__}
            if gathered is not None:
                model_bytes, peak_bytes, peaks = world.worst_rank(gathered, index)
                measured = Entry(model_bytes, peak_bytes, params=m.params)
                context["ranks"] = f"{len(peaks)} launched, peak per rank: {peaks}"
            entry = baseline.entries.get(key) if baseline else None
            tolerance = marks.effective_tolerance(
                mark,
                entry.tolerance if entry else None,
                baseline.tolerance if baseline else None,
                self.settings.tolerance,
            )
            budget = mark.budget if mark else None
            verdicts = judge(
                key,
                measured,
                entry,
                tolerance=tolerance,
                budget=budget,
                reserved=m.reserved_bytes,
                reserved_budget=mark.reserved_budget if mark else None,
                strict=self.settings.strict,
                update=self.settings.update or (self.settings.update_new_only and entry is None),
                fail_improvements=self.settings.fail_improvements,
                baseline_path=path,
                nodeid=item.nodeid,
            )
            first = worst(verdicts)
            ordered = [first, *(v for v in verdicts if v is not first)]
            records.append(
                report.Record(
                    key=key,
                    nodeid=item.nodeid,
                    name=m.name,
                    profile=profile,
                    baseline_path=path,
                    params=m.params,
                    model_bytes=measured.model_bytes,
                    peak_bytes=measured.peak_bytes,
                    reserved_bytes=m.reserved_bytes,
                    context=context,
                    tolerance=str(tolerance),
                    budget=budget,
                    baseline_model_bytes=entry.model_bytes if entry else None,
                    baseline_peak_bytes=entry.peak_bytes if entry else None,
                    verdicts=[_verdict_dict(v) for v in ordered],
                    breakdown=m.breakdown,
                )
            )
        return records

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        probe = item.stash.get(PROBE_KEY, None)
        if probe is None:
            return rep
        if call.when == "call":
            self._gather_ranks(item, probe, rep)
        if call.when == "call" and rep.passed:
            # Only a workload that ran to completion is judged (and may become a baseline).
            records = self.judge(item, probe)
            item.stash[RECORDS_KEY] = records
            failing = [output.failure_text(r) for r in records if r.fails]
            if not records and self.settings.strict:
                failing.append(_NOTHING_MEASURED.format(nodeid=item.nodeid))
            if failing:
                rep.outcome = "failed"
                rep.longrepr = "\n\n".join(failing)
                explained = output.explain_failures(self, records)
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

    # -- aggregation (controller or single process) -----------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.worker or self.secondary_rank:
            return
        if report.when == "call" and report.passed:
            self.completed.add(report.nodeid)
        if report.when != "teardown":
            return
        # `report` is the hook argument here, shadowing the module.
        self.outcome.records.extend(records_from(report.user_properties))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.worker:
            data = {"files": sorted(self.collected_files), "owners": self.owners}
            xdist.send(self.config, {**data, "profiles": self.used_profiles})
            return
        if self.secondary_rank:
            return
        # Under xdist records arrive in completion order; sorted, the table, the JSON and the
        # Markdown read the same from run to run.
        self.outcome.records.sort(key=lambda r: r.key)
        self._find_stale()
        if not self.settings.update:  # an update records this run's setup anyway
            self._compare_setup()
        if self.settings.update or self.settings.update_new_only:
            self._update(session)
        self._fail_on_stale(session)
        for option, path, render in (
            ("--vram-json", self.settings.json_path, report.to_json),
            ("--vram-markdown", self.settings.markdown_path, report.to_markdown),
        ):
            if path is not None:
                self._write_report(session, option, path, render)

    def _write_report(self, session: pytest.Session, option: str, path: Path, render: Any) -> None:
        try:
            report.write_text(path, render(self.outcome))
        except OSError as exc:
            self.outcome.errors.append(
                f"{option}={self.display(path)}: cannot write the report "
                f"({exc.strerror or exc}); give a writable file path"
            )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _profiles(self) -> dict[str, str]:
        """profile -> baseline path shown to users, for every profile measured or chosen."""
        # A profile whose tests all stopped measuring has no record but may have stale entries.
        profiles = {
            **self.used_profiles,
            **{r.profile: r.baseline_path for r in self.outcome.records},
        }
        if self.settings.profile and self.settings.profile not in profiles:
            with contextlib.suppress(BaselineError):  # reported by every vram test already
                path = self.baseline_path(self.settings.profile)
                profiles[self.settings.profile] = self.display(path)
        return profiles

    def _reread(self, profile: str) -> BaselineFile | None:
        """The profile's file (read once per process), or None if missing or malformed.

        A malformed file was already reported by every vram test that used it.
        """
        try:
            loaded = self._load(self.baseline_path(profile))
        except BaselineError:
            return None
        return None if isinstance(loaded, BaselineError) else loaded

    def _compare_setup(self) -> None:
        """Note where a baseline was recorded on another setup (torch, device, allocator)."""
        current = {r.profile: (r.baseline_path, r.context) for r in self.outcome.records}
        for profile, (shown, context) in sorted(current.items()):
            baseline = self._reread(profile)
            if baseline is None:
                continue
            recorded = baseline.recorded_with
            differ = [
                f"{key} {recorded[key]} (this run: {context[key]})"
                for key in SETUP_KEYS
                if key in recorded and key in context and recorded[key] != context[key]
            ]
            if differ:
                self.outcome.setup_changes[shown] = ", ".join(differ)

    def _find_stale(self) -> None:
        produced = {r.key for r in self.outcome.records}
        completed = {r.nodeid for r in self.outcome.records} | self.completed
        for profile, shown in self._profiles().items():
            baseline = self._reread(profile)
            if baseline is None:
                continue
            # An entry whose test was collected but did not complete (deselected, skipped,
            # failed) says nothing: count it as produced so that it is not called stale.
            owners = {k: _owner(k, self.owners) for k in baseline.entries}
            unknown = {k for k, owner in owners.items() if owner not in (None, *completed)}
            files = self.collected_files - _partly_selected_files(self.config)
            stale = baselines.stale_keys(baseline, produced | unknown, files)
            if stale:
                self.outcome.stale[shown] = stale

    def _fail_on_stale(self, session: pytest.Session) -> None:
        """Strict mode: stale entries fail the session (like unused snapshots in syrupy)."""
        if not self.settings.strict or self.settings.stale_warn or self.settings.update:
            return
        for path, keys in sorted(self.outcome.stale.items()):
            self.outcome.errors.append(
                f"{path}: {len(keys)} stale entr{'y' if len(keys) == 1 else 'ies'} (listed "
                f"above) fail the session in strict mode; delete them with `pytest "
                f"--vram-update --vram-prune`, or only list them with --vram-stale-warn"
            )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _update(self, session: pytest.Session) -> None:
        by_profile: dict[str, list[report.Record]] = {}
        for record in self.outcome.records:
            if self.settings.update_new_only and record.baseline_peak_bytes is not None:
                continue  # judged against its entry, which stays as it is
            by_profile.setdefault(record.profile, []).append(record)
        for profile, shown in self._profiles().items():
            records = by_profile.get(profile, [])
            prune = self.outcome.stale.get(shown, []) if self.settings.prune else []
            if not records and not prune:
                continue
            measured = {r.key: Entry(r.model_bytes, r.peak_bytes, params=r.params) for r in records}
            context = records[0].context if records else {"plugin": __version__}
            existing = self._reread(profile) if self.settings.update_new_only else None
            if existing is not None:  # the file's figures keep the setup they came from
                context = existing.recorded_with
            path = self.baseline_path(profile)
            seen = self._baselines.get(path)
            try:
                result = baselines.update(
                    path,
                    profile,
                    measured,
                    recorded_with=context,
                    prune=prune,
                    seen=None if isinstance(seen, BaselineError) else seen,
                    read_before=path in self._baselines and not isinstance(seen, BaselineError),
                )
            except BaselineError as exc:
                self.outcome.errors.append(f"{exc} (not updated; the file was left untouched)")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
                continue
            self.outcome.updated.extend(
                (c.key, c.old.peak_bytes, c.new.peak_bytes)
                for c in result.changed
                if c.old is not None and c.new is not None
            )
            if result.removed:
                self.outcome.pruned[shown] = [c.key for c in result.removed]
                self.outcome.stale.pop(shown, None)
            if result.written:
                self.outcome.written.append(shown)
            self.outcome.conflicts.extend(
                f"{c.key} in {shown} was changed by another run since this one read it "
                f"(peak {c.old.peak_bytes} B); this run's figure replaced it (last writer wins)"
                for c in result.conflicts
                if c.old is not None and c.new is not None
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        outcome = self.outcome
        anything = outcome.records or outcome.stale or outcome.pruned or outcome.errors
        if self.worker or self.secondary_rank or not anything:
            return
        output.terminal_summary(self, terminalreporter)


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
    if MARK_KEY not in item.stash:
        try:
            item.stash[MARK_KEY] = marks.evaluate(item)
        except marks.MarkError as exc:
            item.stash[MARK_KEY] = exc
    return item.stash[MARK_KEY]


def _valid(item: pytest.Item) -> marks.VramMark | None:
    mark = item.stash.get(MARK_KEY, None)
    return None if isinstance(mark, marks.MarkError) else mark


_NOTHING_MEASURED = (
    "{nodeid}: is a vram test but measured nothing (--vram-strict): call "
    "vram.run(workload, ...) and let the workload's exceptions propagate, or drop the "
    "marker and the `vram` fixture"
)


def _backend_failure(exc: BaseException) -> str:
    """A backend that could not be created or warmed up, said without a traceback."""
    return (
        f"the backend failed with {type(exc).__name__}: {exc}; check the backend's class "
        f"(it must be a concrete pytest_vram Backend that takes no arguments) and, for cuda, "
        f"the driver (nvidia-smi), or choose another with --vram-backend"
    )


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"kind": v.kind.value, "summary": v.summary, "detail": v.detail, "fails": v.fails}


@contextlib.contextmanager
def _world_or_fail(manager: Any) -> Iterator[None]:
    """Enter a world; one that cannot be set up fails the test with its own message."""
    try:
        manager.__enter__()
    except world.WorldError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield
    except BaseException as exc:
        if not manager.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        manager.__exit__(None, None, None)


def _owner(key: str, owners: dict[str, str]) -> str | None:
    """The collected test that produces baseline ``key`` (``<base>`` or ``<base>::<name>``)."""
    if key in owners:
        return owners[key]
    base = key.rsplit("::", 1)[0]
    return owners.get(base) if base != key else None
