"""The per-run state of pytest-vram, without pytest hooks: :class:`VramSession`.

One backend (created before the first test of a run with vram tests), the baseline files
(each read once per process), the collection bookkeeping, the records, judging, and the
session-end work (stale entries, setup notes, ``--vram-update``, the stored breakdowns, the
report files) as plain methods. The hook classes of :mod:`pytest_vram.pytest_plugin` call
it; a unit test builds one from a :class:`~pytest_vram.pytest_plugin.options.Settings` and
a rootdir, without pytester. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vram import __version__
from pytest_vram.backends import Backend, BackendUnavailable, create
from pytest_vram.core.breakdown import growth
from pytest_vram.core.figures import MemoryFigures
from pytest_vram.core.marks import VramMark, effective_tolerance
from pytest_vram.core.names import unstorable
from pytest_vram.core.records import Outcome, Record, records_from
from pytest_vram.core.verdicts import OffDevice, judge, worst
from pytest_vram.measure import placement
from pytest_vram.measure.meter import Meter
from pytest_vram.measure.vram import Vram
from pytest_vram.pytest_plugin import world
from pytest_vram.pytest_plugin.options import Settings
from pytest_vram.render import artifacts, json_report, markdown
from pytest_vram.render.breakdowns import explain
from pytest_vram.render.verdicts import failure_text, nothing_measured
from pytest_vram.store import artifacts as artifact_files
from pytest_vram.store import baselines, breakdowns, files, workspaces
from pytest_vram.store.baselines import BaselineError, BaselineFile, Entry, file_setup
from pytest_vram.store.breakdowns import BreakdownError
from pytest_vram.store.workspaces import WorkspaceError

#: Context fields that change figures when they change (the plugin's version does not).
SETUP_KEYS = ("backend", "device", "torch", "cuda", "allocator", "metric")

#: The ``user_properties`` entry of a test report that carries an error of the process that
#: ran the test (an artefact it could not write) to where the summary is printed.
ERROR_PROPERTY = "vram_error"


class VramSession:
    """Per-run state: one backend, baseline files read once, results collected.

    ``worker``: an xdist worker (measures and judges; the controller reports and writes);
    ``secondary_rank``: a launched rank other than 0 (likewise); ``profile_source``: how
    the user spelled the profile option, for messages.
    """

    def __init__(
        self,
        settings: Settings,
        rootpath: Path,
        *,
        worker: bool = False,
        secondary_rank: bool = False,
        profile_source: str = "--vram-profile",
    ) -> None:
        self.settings = settings
        self.rootpath = rootpath
        self.worker = worker
        #: a launched rank other than 0 measures and judges, but rank 0 reports and writes
        self.secondary_rank = secondary_rank
        self.profile_source = profile_source
        self._backend: Backend | None = None
        self._backend_error: str | None = None
        #: the backend's session scope (and, with --vram-emulate=session, its visible
        #: device), from its creation to :meth:`close`
        self._session_scope = contextlib.ExitStack()
        #: the whole tests entered and not yet left (a KeyboardInterrupt skips teardown)
        self._open_tests: dict[str, WholeTest] = {}
        self._baselines: dict[Path, BaselineFile | None | BaselineError] = {}
        update = settings.update or settings.update_new_only
        #: everything this run learned (``ClaimHooks`` appends the judged claims)
        self.outcome = Outcome(update=update)
        #: stored breakdown file -> its entries (or why it cannot be read), read once per
        #: process
        self._stored_breakdowns: dict[Path, breakdowns.Stored | BreakdownError] = {}
        #: errors that test reports carried (artefacts a process could not write), in order
        self.report_errors: list[str] = []
        #: why this process stopped writing artefacts (after the first that failed)
        self._artifacts_broken: str | None = None
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
        #: cuDNN convolution workspaces: whether the backend was told of the project's file
        #: (or asked to record), the error its file gave, the setup it records for, and
        #: what xdist workers recorded ([setup, entries] pairs)
        self._workspaces_attached = False
        self._workspace_error: str | None = None
        self._recording: dict[str, str] | None = None
        self._received_workspaces: list[list[dict[str, Any]]] = []

    # -- backend and baselines, created on first use --------------------------------

    @property
    def created_backend(self) -> Backend | None:
        """The backend if a measurement created it already (never creates it)."""
        return self._backend

    def backend(self) -> Backend:
        """The measuring backend, created and warmed up where :meth:`prepare_backend` was not
        called (a ``vram`` fixture requested at run time, the ``vram_backend`` fixture);
        one that cannot run fails the caller with the reason."""
        self.prepare_backend()
        if self._backend is None:
            message = f"--vram-backend={self.settings.backend}: {self._backend_error}"
            pytest.fail(message, pytrace=False)
        return self._backend

    def prepare_backend(self) -> None:
        """Create and warm up the backend, and enter its session scope, once; a backend that
        cannot run is remembered, for every vram test to fail with (:meth:`backend`)."""
        if self._backend is not None or self._backend_error is not None:
            return
        try:
            world.select_local_device()
            backend = create(
                self.settings.backend, allocator=self.settings.allocator, card=self.settings.card
            )
            backend.warmup()
            self._session_scope.enter_context(backend.session_scope())
            if self.settings.emulate == "session":
                self._session_scope.enter_context(backend.visible_device_scope())
        except (BackendUnavailable, ValueError, ImportError) as exc:
            self._backend_error = str(exc)
        except Exception as exc:  # a broken driver, a SyntaxError in a custom backend
            self._backend_error = backend_failure(exc)
        else:
            self._backend = backend

    def close(self) -> None:
        """The session's end: leave the whole tests still open (a KeyboardInterrupt skipped
        their teardown), then the backend's session scope. Safe to call twice."""
        try:
            while self._open_tests:
                _, test = self._open_tests.popitem()
                test.close()
        finally:
            self._session_scope.close()

    def profile(self) -> str:
        if self.settings.profile:
            return self.settings.profile
        try:
            return self.backend().profile()
        except Exception as exc:  # pytest.fail's exception is a BaseException: not caught
            message = f"--vram-backend={self.settings.backend}: profile() {backend_failure(exc)}"
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
                self.profile_source
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
        for candidate in (path, files.real_path(path)):  # a report path keeps its links
            try:
                return str(candidate.relative_to(self.rootpath))
            except ValueError:
                pass
        return str(path)

    # -- cuDNN convolution workspaces (store.workspaces) --------------------------------

    def attach_workspaces(self, backend: Backend) -> None:
        """Once per process (``Backend.workspace_setup``): a run that updates baselines
        asks the backend to record the workspaces of its convolutions; a backend that reads
        them (``reads_workspaces``: the estimator) gets the project's file of its setup. A
        malformed file it would read fails every vram test, as a malformed baseline does."""
        if not self._workspaces_attached:
            self._workspaces_attached = True
            try:
                self._attach_workspaces(backend)
            except WorkspaceError as exc:
                self._workspace_error = f"{exc}\n(the file is left untouched; fix it and rerun)"
        if self._workspace_error is not None:
            pytest.fail(self._workspace_error, pytrace=False)

    def _attach_workspaces(self, backend: Backend) -> None:
        updating = self.settings.update or self.settings.update_new_only
        if updating and backend.record_workspaces():
            self._recording = backend.workspace_setup()
            return
        setup = backend.workspace_setup() if getattr(backend, "reads_workspaces", False) else None
        if setup is None:
            return
        path = workspaces.path_for(self.settings.baselines, setup)
        loaded = workspaces.load(path)
        backend.use_workspaces(loaded.entries if loaded else {}, self.display(path))

    def recorded_workspaces(self) -> list[list[dict[str, Any]]]:
        """[setup, entries] of what this process's backend recorded, and what workers sent."""
        recorded = list(self._received_workspaces)
        if self._backend is not None and self._recording is not None:
            entries = self._backend.recorded_workspaces()
            if entries:
                recorded.append([self._recording, entries])
        return recorded

    def store_workspaces(self) -> bool:
        """``--vram-update``: merge the recorded workspaces into the project's files (one
        per setup; entries are never dropped). True if a file could not be written."""
        failed = False
        merged: dict[Path, tuple[dict[str, Any], dict[str, int]]] = {}
        for setup, entries in self.recorded_workspaces():
            try:
                path = workspaces.path_for(self.settings.baselines, setup)
            except WorkspaceError as exc:  # a custom backend's setup
                self.outcome.errors.append(str(exc))
                failed = True
                continue
            into = merged.setdefault(path, (setup, {}))[1]
            for key, size in entries.items():
                into[key] = max(size, into.get(key, 0))
        for path, (setup, entries) in sorted(merged.items()):
            try:
                result = workspaces.update(path, setup, entries)
            except WorkspaceError as exc:
                self.outcome.errors.append(
                    f"{exc} (this run's convolution workspaces were not recorded; the file "
                    f"was left untouched)"
                )
                failed = True
                continue
            if result.written:
                self.outcome.written.append(
                    f"{self.display(path)} ({len(result.added)} convolution workspaces "
                    f"added, {len(result.changed)} changed)"
                )
        return failed

    # -- collection ------------------------------------------------------------------

    def collect(self, nodeid: str, mark: VramMark | None, *, vram: bool) -> None:
        """Note a collected test (deselected ones too); ``vram``: it is a vram test, whose
        baseline key (from ``mark``, or its node id) it owns."""
        self.collected_files.add(nodeid.split("::", 1)[0])
        if not vram:
            return
        key = mark.base_key(nodeid) if mark else nodeid
        other = self.owners.get(key)
        if other is not None and other != nodeid:
            self.shared_keys.setdefault(key, []).extend(
                n for n in (other, nodeid) if n not in self.shared_keys.get(key, [])
            )
        self.owners[key] = nodeid

    def collect_plain(self, nodeids: list[str]) -> None:
        """Note collected tests that are not vram tests (:meth:`collect` of each, at once)."""
        self.collected_files.update({nodeid.split("::", 1)[0] for nodeid in nodeids})

    def shared_with(self, nodeid: str, key: str) -> list[str]:
        """The other tests that use baseline ``key`` if ``nodeid`` shares it, else []."""
        if nodeid not in self.shared_keys.get(key, ()):
            return []
        return [n for n in self.shared_keys[key] if n != nodeid]

    def collection(self) -> dict[str, Any]:
        """What a worker sends to the controller (see :meth:`receive`)."""
        data = {"files": sorted(self.collected_files), "owners": self.owners}
        return {**data, "profiles": self.used_profiles, "workspaces": self.recorded_workspaces()}

    def receive(self, data: dict[str, Any]) -> None:
        """Merge a worker's collection into the controller's."""
        self.collected_files.update(data["files"])
        self.owners.update(data["owners"])
        self.used_profiles.update(data.get("profiles", {}))
        self._received_workspaces.extend(data.get("workspaces", []))

    def owner(self, key: str) -> str | None:
        """The collected test that produces baseline ``key``."""
        return owner(key, self.owners)

    def produced_nowhere(self, key: str) -> bool:
        """Whether no test of this run's tree produces baseline ``key``: no collected test
        owns it, and its test file was collected (so every test of it was seen) or does not
        exist. A file that was not collected (``pytest other.py``) says nothing."""
        if self.owner(key) is not None:
            return False
        file = key.split("::", 1)[0]
        if file in self.collected_files:
            return True
        try:
            return not (self.rootpath / file).exists()
        except (OSError, ValueError):  # a name no file can have
            return True

    # -- one test ---------------------------------------------------------------------

    def open(self, mark: VramMark, nodeid: str) -> Vram:
        """Fixture setup of a test that runs outside a whole-test scope (it requested
        ``vram`` at run time): start counting now."""
        self._check_key(mark, nodeid)
        backend = self._measuring_backend(mark)
        if mark.card is not None and mark.card != self.settings.card:
            pytest.fail(
                f"{nodeid}: @pytest.mark.vram(card={mark.card!r}) needs the whole test on the "
                "card: take the `vram` fixture as an argument of the test instead of "
                "requesting it at run time (request.getfixturevalue)",
                pytrace=False,
            )
        meter = Meter(backend, attribution=self.attribution_on(backend))
        meter.start()
        return Vram(meter, mark.base_key(nodeid), self.largest_hint)

    def enter_test(self, mark: VramMark, nodeid: str) -> WholeTest:
        """Before the fixtures of the vram test ``nodeid`` are set up: the test's world
        (``world_size=``), then the backend's ``test_scope()``; counting starts at its
        first function-scoped fixture (:meth:`WholeTest.start`). Left by
        :meth:`WholeTest.close` after the fixtures are torn down (or by :meth:`close`)."""
        self._check_key(mark, nodeid)
        backend = self._measuring_backend(mark)
        test = WholeTest(Meter(backend, attribution=self.attribution_on(backend)), mark, nodeid)
        self._open_tests[nodeid] = test
        test.stack.callback(self._open_tests.pop, nodeid, None)
        # Left in reverse: the test scope, the world (whose process group keeps the tensors
        # of its last collectives until it ends), then the leak is measured.
        test.stack.callback(test.finish)
        test.stack.enter_context(self.world(mark, nodeid))
        test.stack.enter_context(_card_scope(backend, mark, nodeid))
        return test

    def open_test(self, nodeid: str) -> WholeTest | None:
        """The whole test ``nodeid`` if it was entered and not left yet."""
        return self._open_tests.get(nodeid)

    def leave_test(self, nodeid: str) -> None:
        """After the test's fixtures are torn down: :meth:`WholeTest.close`."""
        test = self._open_tests.pop(nodeid, None)
        if test is not None:
            test.close()

    @staticmethod
    def _check_key(mark: VramMark, nodeid: str) -> None:
        """Fail a test whose id is its baseline key but no baseline file could hold it (a
        ``key=`` was checked with the marker)."""
        why = unstorable(mark.base_key(nodeid)) if mark.key is None else None
        if why is not None:
            pytest.fail(
                f"{nodeid!r}: the test id is its baseline key, but {why}; give the test a key "
                f"of printable text with @pytest.mark.vram(key='...') or rename it",
                pytrace=False,
            )

    def _measuring_backend(self, mark: VramMark) -> Backend:
        """The backend a vram test measures on, its profile's baseline file read (a malformed
        one fails the test before its fixtures or workload run)."""
        backend = self.backend()
        if mark.skip_estimate is not None and backend.name == "estimate":
            pytest.skip(f"not measurable on the estimate backend: {mark.skip_estimate}")
        profile = self.profile()
        self.baseline(profile)  # a malformed file fails before the workload runs
        self.attach_workspaces(backend)
        self.used_profiles[profile] = self.display(self.baseline_path(profile))
        return backend

    def largest_hint(self, key: str) -> tuple[int | None, str | None]:
        """The recorded answer of ``vram.largest`` for baseline ``key`` and its card, which
        the search checks first ((None, None) where the entry has none)."""
        baseline = self.baseline(self.profile())
        entry = baseline.entries.get(key) if baseline else None
        return (None, None) if entry is None else (entry.largest, entry.card)

    def world(self, mark: VramMark | None, nodeid: str) -> Any:
        """The process group of a test marked ``world_size=N`` (see :mod:`.world`)."""
        if mark is None or mark.world_size is None:
            return contextlib.nullcontext()
        simulates = bool(getattr(self.backend(), "simulates_ranks", False))
        opened = world.open_world(mark.world_size, simulates, nodeid, self._session_scope)
        return _entered_or_fail(opened, world.WorldError, str)

    def judge(
        self,
        nodeid: str,
        probe: Vram,
        mark: VramMark | None = None,
        gathered: list[tuple[bool, list[tuple[int, int]]]] | None = None,
        function: Any = None,
    ) -> list[Record]:
        """Verdicts of every measurement of the test ``nodeid`` against its baseline;
        ``gathered``: every launched rank's figures (the worst rank is judged);
        ``function``: the test function, whose code may say why a figure counted nothing
        on the device."""
        profile = self.profile()
        baseline = self.baseline(profile)
        path = self.display(self.baseline_path(profile))
        records = []
        for index, m in enumerate(probe.measurements):
            key = probe.key(m)
            measured = m.figures
            setup = {**m.setup, "plugin": __version__}
            if gathered is not None:
                model_bytes, peak_bytes, peaks = world.worst_rank(gathered, index)
                measured = MemoryFigures(model_bytes, peak_bytes, params=m.params)
                setup["ranks"] = f"{len(peaks)} launched, peak per rank: {peaks}"
            entry = baseline.entries.get(key) if baseline else None
            tolerance = effective_tolerance(
                mark,
                entry.tolerance if entry else None,
                baseline.tolerance if baseline else None,
                self.settings.tolerance,
            )
            budget = mark.budget if mark else None
            reserved_budget = mark.reserved_budget if mark else None
            off_device = with_test_causes(m.off_device, function)
            largest = None if m.largest is None else (m.largest.value, m.largest.card)
            verdicts = judge(
                measured,
                entry,
                tolerance=tolerance,
                budget=budget,
                reserved=m.reserved_bytes,
                reserved_budget=reserved_budget,
                strict=self.settings.strict,
                update=self.settings.update or (self.settings.update_new_only and entry is None),
                fail_improvements=self.settings.fail_improvements,
                off_device=off_device,
                largest=largest,
                baseline_largest=(entry.largest, entry.card) if entry else (None, None),
            )
            first = worst(verdicts)
            ordered = (first, *(v for v in verdicts if v is not first))
            records.append(
                Record(
                    key=key,
                    nodeid=nodeid,
                    name=m.name,
                    profile=profile,
                    baseline_path=path,
                    params=m.params,
                    model_bytes=measured.model_bytes,
                    peak_bytes=measured.peak_bytes,
                    reserved_bytes=m.reserved_bytes,
                    setup=setup,
                    tolerance=tolerance,
                    budget=budget,
                    baseline_model_bytes=entry.model_bytes if entry else None,
                    baseline_peak_bytes=entry.peak_bytes if entry else None,
                    verdicts=ordered,
                    breakdown=m.breakdown,
                    reserved_budget=reserved_budget,
                    off_device=off_device,
                    card=m.card,
                    card_note=m.card_note,
                    largest=m.largest,
                    baseline_largest=entry.largest if entry else None,
                    baseline_card=entry.card if entry else None,
                )
            )
        return records

    def failures(self, nodeid: str, records: list[Record]) -> list[str]:
        """The failure texts of a judged test (strict: measuring nothing is one)."""
        failing = [failure_text(r) for r in records if r.fails]
        if not records and self.settings.strict:
            failing.append(nothing_measured(nodeid))
        return failing

    def attribution_on(self, backend: Backend) -> bool:
        """``--vram-attribution``: auto is on for the estimator (it costs little there) and
        off for a real GPU, where the dispatch mode that follows storages slows kernels'
        launch."""
        if self.settings.attribution == "auto":
            return backend.name == "estimate"
        return self.settings.attribution == "on"

    def explain(self, records: list[Record]) -> str:
        """Top contributors at the peak and what grew, for each failing record with a
        breakdown; the growth travels with the record (the PR comment shows it too)."""
        parts = []
        for record in records:
            if not record.fails or not record.breakdown or not record.recordable:
                continue  # a figure off the device has no growth worth explaining
            path = breakdowns.path_for(self.baseline_path(record.profile))
            if path not in self._stored_breakdowns:
                try:
                    self._stored_breakdowns[path] = breakdowns.load(path)
                except BreakdownError as exc:
                    self._stored_breakdowns[path] = exc
            stored = self._stored_breakdowns[path]
            shown = self.display(path)
            # a store that cannot be read is said instead of a comparison
            unreadable = str(stored) if isinstance(stored, BreakdownError) else None
            known = {} if isinstance(stored, BreakdownError) else stored
            lost = record.largest.lost if record.largest else None
            if lost is not None and lost.get("breakdown"):
                # what grew at the recorded answer, which no longer fits: the stored
                # breakdown is the one of that value, when it fitted
                head = (
                    f"at {lost['value']}, the recorded largest, which now runs out of memory, "
                    "live at the highest allocation it reached:"
                )
                text = explain(
                    lost["breakdown"], known.get(record.key), shown, head, unreadable=unreadable
                )
                parts.append(text if len(records) == 1 else f"{record.key}:\n{text}")
                continue
            text = explain(record.breakdown, known.get(record.key), shown, unreadable=unreadable)
            if record.key in known:
                record.breakdown["grown"] = growth(record.breakdown, stored[record.key])
                record.breakdown["compared_with"] = shown
            parts.append(text if len(records) == 1 else f"{record.key}:\n{text}")
        return "\n\n".join(parts)

    # -- aggregation (controller or single process) -----------------------------------

    def add_report(self, nodeid: str, when: str, passed: bool, properties: Any) -> None:
        """A test report's phase: a passed call completes the test; the teardown carries
        its records (``user_properties``); any phase may carry an error of the process
        that ran it."""
        if when == "call" and passed:
            self.completed.add(nodeid)
        if when == "teardown" and properties:
            self.outcome.records.extend(records_from(properties))
        for name, value in properties or ():
            if name == ERROR_PROPERTY and str(value) not in self.report_errors:
                self.report_errors.append(str(value))

    def write_artifacts(self, nodeid: str, probe: Vram, records: list[Record]) -> list[Path]:
        """``--vram-artifacts``: the test's files (see :mod:`pytest_vram.render.artifacts`).

        Raises ArtifactError, with the option, the file and the fix, when one cannot be
        written; after that this process writes no more (every later test would meet the
        same directory).
        """
        root = self.settings.artifacts
        if root is None or self._artifacts_broken is not None:
            return []
        shown = f"--vram-artifacts={self.display(root)}"
        try:
            made = artifacts.contents(nodeid, probe, records)
            return artifact_files.write(root, nodeid, made, shown=self.display(root))
        except artifact_files.ArtifactError as exc:
            self._artifacts_broken = f"{shown}: {exc} (no more artefacts in this process)"
        except Exception as exc:  # drawing or the snapshot failed: the run goes on
            self._artifacts_broken = (
                f"{shown}: cannot make the artefacts of {nodeid} ({type(exc).__name__}: "
                f"{exc}); see docs/attribution.md, or run without --vram-artifacts"
            )[:1000]
        raise artifact_files.ArtifactError(self._artifacts_broken)

    # -- session end ------------------------------------------------------------------

    def finish(self, partly_selected: set[str] | frozenset[str] = frozenset()) -> bool:
        """The session-end work of the controller (or single process): stale entries, setup
        notes, ``--vram-update``, strict stale failures, report files. ``partly_selected``:
        files of which only some tests were selected. True: the session must fail."""
        quiet = not (self._profiles_in_play() or self._writes_reports or self.report_errors)
        if not self.outcome.records and quiet:
            return False  # nothing measured, no profile to check for stale entries, no file
        # Under xdist records arrive in completion order; sorted, the table, the JSON and the
        # Markdown read the same from run to run.
        self.outcome.records.sort(key=lambda r: r.key)
        self.find_stale(partly_selected)
        if not self.settings.update:  # an update records this run's setup anyway
            self.compare_setup()
        failed = False
        if self.settings.update or self.settings.update_new_only:
            failed |= self.update()
            failed |= self.store_workspaces()
        failed |= self.fail_on_stale()
        if self.settings.update and not self.outcome.errors:
            failed |= self.store_breakdowns()
        if self.report_errors:
            self.outcome.errors.extend(self.report_errors)
            failed = True
        failed |= self.write_reports()
        return failed

    def store_breakdowns(self) -> bool:
        """``--vram-update``: store the measured breakdowns next to their baselines (and
        drop those of pruned entries). True if a store could not be written: it is left as
        it was, with every other test's entries."""
        by_store: dict[Path, dict[str, dict[str, Any]]] = {}
        for r in self.outcome.records:
            if r.breakdown and r.recordable:
                path = breakdowns.path_for(self.baseline_path(r.profile))
                by_store.setdefault(path, {})[r.key] = r.breakdown
        pruned: dict[Path, list[str]] = {}
        for shown, keys in self.outcome.pruned.items():
            baseline = Path(shown) if Path(shown).is_absolute() else self.rootpath / shown
            pruned[breakdowns.path_for(baseline)] = keys
        failed = False
        for path in sorted({*by_store, *(p for p in pruned if p.exists())}):
            try:
                changed = breakdowns.write(path, by_store.get(path, {}), pruned.get(path, ()))
            except BreakdownError as exc:
                self.outcome.errors.append(f"{exc} (not updated; the file was left untouched)")
                failed = True
                continue
            if changed:
                self.outcome.written.append(self.display(path))
        return failed

    def write_reports(self) -> bool:
        """``--vram-json`` and ``--vram-markdown``; True if one could not be written."""
        failed = False
        for option, path, render in (
            ("--vram-json", self.settings.json_path, json_report.document),
            ("--vram-markdown", self.settings.markdown_path, markdown.report),
        ):
            if path is not None:
                failed |= self._write_report(option, path, render)
        return failed

    @property
    def _writes_reports(self) -> bool:
        return self.settings.json_path is not None or self.settings.markdown_path is not None

    def _profiles_in_play(self) -> bool:
        """Whether :meth:`_profiles` can name one (a test opened one, or the option did)."""
        return bool(self.used_profiles or self.settings.profile)

    def _write_report(self, option: str, path: Path, render: Callable[[Outcome], str]) -> bool:
        # A name no file can hold (a lone surrogate) is written escaped, not lost.
        data = render(self.outcome).encode("utf-8", "backslashreplace")
        try:
            files.write_output(path, data)
        except OSError as exc:
            if isinstance(exc, files.ReadOnly):
                fix = "make it writable or give another file path"
            elif isinstance(exc, files.NotRegular):
                fix = "give the path of a file (it is created or replaced)"
            else:
                fix = "give a writable file path"
            self.outcome.errors.append(
                f"{option}={self.display(path)}: cannot write the report "
                f"({files.describe(exc)}); {fix}"
            )
            return True
        return False

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

    def compare_setup(self) -> None:
        """Note where a baseline was recorded on another setup (torch, device, allocator)."""
        current = {r.profile: (r.baseline_path, r.setup) for r in self.outcome.records}
        for profile, (shown, setup) in sorted(current.items()):
            baseline = self._reread(profile)
            if baseline is None:
                continue
            recorded = baseline.setup
            differ = [
                f"{key} {recorded[key]} (this run: {setup[key]})"
                for key in SETUP_KEYS
                if key in recorded and key in setup and recorded[key] != setup[key]
            ]
            if differ:
                self.outcome.setup_changes[shown] = ", ".join(differ)

    def find_stale(self, partly_selected: set[str] | frozenset[str] = frozenset()) -> None:
        """Entries of the collected files that no completed test produced."""
        produced = {r.key for r in self.outcome.records}
        completed = {r.nodeid for r in self.outcome.records} | self.completed
        for profile, shown in self._profiles().items():
            baseline = self._reread(profile)
            if baseline is None:
                continue
            # An entry whose test was collected but did not complete (deselected, skipped,
            # failed) says nothing: count it as produced so that it is not called stale.
            owners = {k: owner(k, self.owners) for k in baseline.entries}
            unknown = {k for k, who in owners.items() if who not in (None, *completed)}
            files = self.collected_files - partly_selected
            stale = baselines.stale_keys(baseline, produced | unknown, files)
            if stale:
                self.outcome.stale[shown] = stale

    def fail_on_stale(self) -> bool:
        """Strict mode: stale entries fail the session (like unused snapshots in syrupy).
        True if they do."""
        if not self.settings.strict or self.settings.stale_warn or self.settings.update:
            return False
        failed = False
        for path, keys in sorted(self.outcome.stale.items()):
            self.outcome.errors.append(
                f"{path}: {len(keys)} stale entr{'y' if len(keys) == 1 else 'ies'} (listed "
                f"above) fail the session in strict mode; delete them with `pytest "
                f"--vram-update --vram-prune`, or only list them with --vram-stale-warn"
            )
            failed = True
        return failed

    def update(self) -> bool:
        """``--vram-update`` / ``--vram-update-new-only``: rewrite the measured entries
        (and with ``--vram-prune`` delete the stale ones). True if a file could not be."""
        failed = False
        by_profile: dict[str, list[Record]] = {}
        for record in self.outcome.records:
            if self.settings.update_new_only and record.baseline_peak_bytes is not None:
                continue  # judged against its entry, which stays as it is
            if not record.recordable:
                continue  # counted none of the device's memory: failed, never recorded
            by_profile.setdefault(record.profile, []).append(record)
        for profile, shown in self._profiles().items():
            records = by_profile.get(profile, [])
            prune = self.outcome.stale.get(shown, []) if self.settings.prune else []
            if not records and not prune:
                continue
            measured = {
                r.key: Entry.of(
                    r.figures,
                    largest=r.largest.value if r.largest else None,
                    card=r.largest.card if r.largest else None,
                )
                for r in records
            }
            setup = file_setup(records[0].setup) if records else {"plugin": __version__}
            existing = self._reread(profile) if self.settings.update_new_only else None
            if existing is not None:  # the file's figures keep the setup they came from
                setup = existing.setup
            path = self.baseline_path(profile)
            seen = self._baselines.get(path)
            try:
                result = baselines.update(
                    path,
                    profile,
                    measured,
                    setup=setup,
                    prune=prune,
                    seen=None if isinstance(seen, BaselineError) else seen,
                    read_before=path in self._baselines and not isinstance(seen, BaselineError),
                )
            except BaselineError as exc:
                self.outcome.errors.append(f"{exc} (not updated; the file was left untouched)")
                failed = True
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
        return failed


def with_test_causes(off_device: OffDevice | None, function: Any) -> OffDevice | None:
    """``off_device`` with the likely causes the test function's module and closure show
    (a device variable chosen at import), after those the step itself showed."""
    if off_device is None or function is None:
        return off_device
    found = placement.causes([function], off_device.device)
    merged = tuple(dict.fromkeys((*off_device.causes, *found)))
    return dataclasses.replace(off_device, causes=merged)


class WholeTest:
    """One vram test from before its function-scoped fixtures are set up to after they are
    torn down: the test's world, the backend's ``test_scope()``, and its :class:`Meter`,
    whose zero point :meth:`start` takes when the first function-scoped fixture is set up.
    """

    def __init__(self, meter: Meter, mark: VramMark, nodeid: str) -> None:
        self.meter = meter
        self.mark = mark
        self.nodeid = nodeid
        #: what :meth:`close` leaves, newest first: the test scope, the world, the meter
        self.stack = contextlib.ExitStack()
        self.vram: Vram | None = None

    def start(self) -> None:
        """The zero point, once: the first function-scoped fixture is about to be set up."""
        if not self.meter.started:
            self.meter.start()

    def open(self, hints: Any = None) -> Vram:
        """The ``vram`` fixture's object (counting started at the first function-scoped
        fixture; the ``vram`` fixture is one); ``hints``: the recorded answers of
        ``vram.largest`` by key (:meth:`VramSession.largest_hint`)."""
        self.start()
        key = self.mark.base_key(self.nodeid)
        self.vram = Vram(self.meter, key) if hints is None else Vram(self.meter, key, hints)
        return self.vram

    def finish(self) -> None:
        """After the fixtures are torn down and the world has ended: the leak."""
        if self.vram is not None:
            self.vram.finish()
        elif self.meter.started:
            self.meter.finish()
        else:
            self.meter.close()

    def close(self) -> None:
        """Leave the test scope and the world, then measure the leak (each step even if one
        before it fails)."""
        self.stack.close()


def _card_scope(backend: Backend, mark: VramMark, nodeid: str) -> Any:
    """The backend's test scope, on the test's own card where its marker declares one; a
    card the backend cannot run (a GPU smaller than the card) fails the test with why."""
    if mark.card is None:
        return backend.test_scope()
    if not backend.supports_cards:
        pytest.fail(
            f"{nodeid}: @pytest.mark.vram(card={mark.card!r}): the {backend.name!r} backend "
            "cannot run a test on a declared card; measure it with --vram-backend=estimate "
            "or --vram-backend=cuda",
            pytrace=False,
        )
    return _entered_or_fail(
        backend.test_scope(card=mark.card), BackendUnavailable, lambda exc: f"{nodeid}: {exc}"
    )


@contextlib.contextmanager
def _entered_or_fail(
    manager: Any, refusal: type[Exception], message: Callable[[Exception], str]
) -> Iterator[None]:
    """Enter ``manager``; a ``refusal`` on entering fails the test with ``message(exc)``
    and no traceback."""
    try:
        manager.__enter__()
    except refusal as exc:
        pytest.fail(message(exc), pytrace=False)
    try:
        yield
    except BaseException as exc:
        if not manager.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        manager.__exit__(None, None, None)


def backend_failure(exc: BaseException) -> str:
    """A backend that could not be created or warmed up, said without a traceback."""
    return (
        f"the backend failed with {type(exc).__name__}: {exc}; check the backend's class "
        f"(it must be a concrete pytest_vram Backend that takes no arguments) and, for cuda, "
        f"the driver (nvidia-smi), or choose another with --vram-backend"
    )


def owner(key: str, owners: dict[str, str]) -> str | None:
    """The collected test that produces baseline ``key`` (``<base>`` or ``<base>::<name>``)."""
    if key in owners:
        return owners[key]
    base = key.rsplit("::", 1)[0]
    return owners.get(base) if base != key else None
