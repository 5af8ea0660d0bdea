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

from pytest_vram import __version__, baselines, marks, output, report, xdist
from pytest_vram.backends import CHOICES, Backend, BackendUnavailable, create
from pytest_vram.baselines import BaselineError, BaselineFile, Entry
from pytest_vram.fixture import Vram, VramUsageError
from pytest_vram.measure import Meter, is_out_of_memory
from pytest_vram.report import records_from
from pytest_vram.units import Tolerance, UnitError, parse_tolerance
from pytest_vram.verdicts import Verdict, judge, worst

PLUGIN_KEY = pytest.StashKey["VramPlugin"]()
MARK_KEY = pytest.StashKey["marks.VramMark | None"]()
PROBE_KEY = pytest.StashKey[Vram]()
RECORDS_KEY = pytest.StashKey["list[report.Record]"]()

#: Context fields that change figures when they change (the plugin's version does not).
SETUP_KEYS = ("backend", "device", "torch", "cuda", "allocator")

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
    update: bool
    prune: bool
    strict: bool
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
        strict = _value(config, "vram_strict")
        profile = str(_value(config, "vram_profile") or "") or None
        if profile is not None:
            try:
                baselines.check_profile_name(profile)
            except BaselineError as exc:
                raise pytest.UsageError(f"{_source(config, 'vram_profile')}: {exc}") from None
        attribution = str(_value(config, "vram_attribution")).strip().lower()
        if attribution not in ("auto", "on", "off"):
            raise pytest.UsageError(
                f"{_source(config, 'vram_attribution')}: expected on, off or auto, "
                f"got {attribution!r}"
            )
        return cls(
            attribution=attribution,
            artifacts=_optional_path(config, "vram_artifacts"),
            artifacts_all=bool(_value(config, "vram_artifacts_all")),
            backend=backend,
            update=update,
            prune=prune,
            strict=_ci() if strict is None else bool(strict),
            tolerance=tolerance,
            profile=profile,
            baselines=_path(config, "vram_baselines", config.rootpath),
            json_path=_optional_path(config, "vram_json"),
            markdown_path=_optional_path(config, "vram_markdown"),
        )


def _value(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def _source(config: pytest.Config, name: str) -> str:
    """How the user spelled the setting: ``--vram-x`` or ``vram_x (ini)``."""
    if config.getoption(name) is not None:
        return "--" + name.replace("_", "-")
    return f"{name} (ini)"


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
    probe = plugin.open(request.node)
    yield probe
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
        self._backend: Backend | None = None
        self._backend_error: str | None = None
        self._baselines: dict[Path, BaselineFile | None | BaselineError] = {}
        self.outcome = report.Outcome(update=settings.update)
        #: test files collected (deselected ones too): only their entries can be stale
        self.collected_files: set[str] = set()
        #: baseline key prefix -> node id of the collected test that produces it
        self.owners: dict[str, str] = {}

    # -- backend and baselines, created on first use --------------------------------

    def backend(self) -> Backend:
        """The measuring backend, created and warmed up at the first measurement."""
        if self._backend is None and self._backend_error is None:
            try:
                backend = create(self.settings.backend)
                backend.warmup()
            except (BackendUnavailable, ValueError, ImportError) as exc:
                self._backend_error = str(exc)
            else:
                self._backend = backend
        if self._backend is None:
            message = f"--vram-backend={self.settings.backend}: {self._backend_error}"
            pytest.fail(message, pytrace=False)
        return self._backend

    def profile(self) -> str:
        return self.settings.profile or self.backend().profile()

    def baseline_path(self, profile: str) -> Path:
        return baselines.profile_path(self.settings.baselines, profile)

    def baseline(self, profile: str) -> BaselineFile | None:
        """The profile's baseline file, loaded once per process (read-only)."""
        try:
            path = self.baseline_path(profile)
        except BaselineError as exc:
            pytest.fail(f"--vram-profile: {exc}", pytrace=False)
        if path not in self._baselines:
            try:
                self._baselines[path] = baselines.load(path)
            except BaselineError as exc:
                self._baselines[path] = exc
        loaded = self._baselines[path]
        if isinstance(loaded, BaselineError):
            pytest.fail(f"{loaded}\n(the file is left untouched; fix it and rerun)", pytrace=False)
        return loaded

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
            try:
                mark = marks.evaluate(item)
            except marks.MarkError:
                mark = None  # reported at setup
            self.owners[(mark.key if mark and mark.key else item.nodeid)] = item.nodeid

    def receive(self, data: dict[str, Any]) -> None:
        """Merge a worker's collection into the controller's."""
        self.collected_files.update(data["files"])
        self.owners.update(data["owners"])

    # -- one test ---------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            mark = marks.evaluate(item)
        except marks.MarkError as exc:
            pytest.fail(str(exc), pytrace=False)
        item.stash[MARK_KEY] = mark
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
        mark = item.stash.get(MARK_KEY, None) or marks.VramMark()
        backend = self.backend()
        self.baseline(self.profile())  # a malformed file fails before the workload runs
        meter = Meter(backend, attribution=output.attribution_on(self.settings, backend))
        meter.start()
        probe = Vram(meter, mark.key or item.nodeid)
        item.stash[PROBE_KEY] = probe
        return probe

    def judge(self, item: pytest.Item, probe: Vram) -> list[report.Record]:
        """Verdicts of every measurement of ``item`` against its baseline."""
        mark = item.stash.get(MARK_KEY, None)
        profile = self.profile()
        baseline = self.baseline(profile)
        path = self.display(self.baseline_path(profile))
        records = []
        for m in probe.measurements:
            key = probe.key(m)
            measured = Entry(m.model_bytes, m.peak_bytes, params=m.params)
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
                strict=self.settings.strict,
                update=self.settings.update,
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
                    model_bytes=m.model_bytes,
                    peak_bytes=m.peak_bytes,
                    context={**m.context, "plugin": __version__},
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
        if call.when == "call" and rep.passed:
            # Only a workload that ran to completion is judged (and may become a baseline).
            records = self.judge(item, probe)
            item.stash[RECORDS_KEY] = records
            failing = [v["detail"] for r in records for v in r.verdicts if v["fails"]]
            if failing:
                rep.outcome = "failed"
                rep.longrepr = "\n\n".join(output.failure_text(r) for r in records if r.fails)
                explained = output.explain_failures(self, records)
                if explained:
                    rep.longrepr = f"{rep.longrepr}\n\n{explained}"
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
        if self.worker or report.when != "teardown":
            return
        # `report` is the hook argument here, shadowing the module.
        self.outcome.records.extend(records_from(report.user_properties))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.worker:
            xdist.send(self.config, {"files": sorted(self.collected_files), "owners": self.owners})
            return
        # Under xdist records arrive in completion order; sorted, the table, the JSON and the
        # Markdown read the same from run to run.
        self.outcome.records.sort(key=lambda r: r.key)
        self._find_stale()
        if not self.settings.update:  # an update records this run's setup anyway
            self._compare_setup()
        if self.settings.update:
            self._update(session)
        if self.settings.json_path:
            report.write_text(self.settings.json_path, report.to_json(self.outcome))
        if self.settings.markdown_path:
            report.write_text(self.settings.markdown_path, report.to_markdown(self.outcome))

    def _profiles(self) -> dict[str, str]:
        """profile -> baseline path shown to users, for every profile measured or chosen."""
        profiles = {r.profile: r.baseline_path for r in self.outcome.records}
        if self.settings.profile and self.settings.profile not in profiles:
            with contextlib.suppress(BaselineError):  # reported by every vram test already
                path = self.baseline_path(self.settings.profile)
                profiles[self.settings.profile] = self.display(path)
        return profiles

    def _reread(self, profile: str) -> BaselineFile | None:
        """The profile's file as it is on disk now, or None if missing or malformed.

        A malformed file was already reported by every vram test that used it.
        """
        try:
            return baselines.load(self.baseline_path(profile))
        except BaselineError:
            return None

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
        completed = {r.nodeid for r in self.outcome.records}
        for profile, shown in self._profiles().items():
            baseline = self._reread(profile)
            if baseline is None:
                continue
            # An entry whose test was collected but did not complete (deselected, skipped,
            # failed) says nothing: count it as produced so that it is not called stale.
            owners = {k: _owner(k, self.owners) for k in baseline.entries}
            unknown = {k for k, owner in owners.items() if owner not in (None, *completed)}
            stale = baselines.stale_keys(baseline, produced | unknown, self.collected_files)
            if stale:
                self.outcome.stale[shown] = stale

    def _update(self, session: pytest.Session) -> None:
        by_profile: dict[str, list[report.Record]] = {}
        for record in self.outcome.records:
            by_profile.setdefault(record.profile, []).append(record)
        for profile, shown in self._profiles().items():
            records = by_profile.get(profile, [])
            prune = self.outcome.stale.get(shown, []) if self.settings.prune else []
            if not records and not prune:
                continue
            measured = {r.key: Entry(r.model_bytes, r.peak_bytes, params=r.params) for r in records}
            context = records[0].context if records else {"plugin": __version__}
            try:
                result = baselines.update(
                    self.baseline_path(profile),
                    profile,
                    measured,
                    recorded_with=context,
                    prune=prune,
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

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        outcome = self.outcome
        anything = outcome.records or outcome.stale or outcome.pruned or outcome.errors
        if self.worker or not anything:
            return
        output.terminal_summary(self, terminalreporter)


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"kind": v.kind.value, "summary": v.summary, "detail": v.detail, "fails": v.fails}


def _owner(key: str, owners: dict[str, str]) -> str | None:
    """The collected test that produces baseline ``key`` (``<base>`` or ``<base>::<name>``)."""
    if key in owners:
        return owners[key]
    base = key.rsplit("::", 1)[0]
    return owners.get(base) if base != key else None
