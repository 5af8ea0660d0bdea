"""The hooks of a run that measures, judges claims or writes reports, and their activation.

:mod:`pytest_vram.plugin` (the entry point) holds what every run needs: the options, their
validation, the fixtures and the collection hooks. What only a run with vram tests, claims,
report files, pytest-xdist workers or a launched world needs lives here, with the session
object (:class:`~pytest_vram.session.VramSession`), and is imported and registered by
:func:`activate` the first time one of those shows up: at ``pytest_configure`` where the
options or the process's role say so, else when the collection finds a vram test or a
claim, or when a test requests the ``vram`` fixture at run time.

Why on first use: under pytest, every module of a plugin's distribution is loaded through
the assertion-rewriting import hook, which reads its cached code object with
``marshal.load`` from a file object, at about 200 instructions per byte of bytecode; the
modules a measuring run needs are about 180 KB of it. A suite without vram tests pays for
``plugin`` alone (see docs/suite.md, "Plugin overhead").
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vram import claiming, output, world, xdist
from pytest_vram.longrepr import failure
from pytest_vram.plugin import (
    CLAIMS_KEY,
    PLUGIN_KEY,
    PROBE_KEY,
    RANKS_KEY,
    RECORDS_KEY,
    SETTINGS_KEY,
    _source,
    _valid,
)
from pytest_vram.session import VramSession
from pytest_vram.units import parse_tolerance

if TYPE_CHECKING:
    from pytest_vram.fixture import Vram


def activate(config: pytest.Config) -> VramSession:
    """The run's session, created and its hooks registered on the first call."""
    session = config.stash.get(PLUGIN_KEY, None)
    if session is not None:
        return session
    settings = config.stash[SETTINGS_KEY]
    if isinstance(settings.tolerance, str):  # the default, left unparsed at configure
        settings = settings._replace(tolerance=parse_tolerance(settings.tolerance))
    worker = xdist.is_worker(config)
    session = VramSession(
        settings,
        config.rootpath,
        worker=worker,
        secondary_rank=world.is_secondary_rank(),
        profile_source=_source(config, "vram_profile"),
    )
    config.stash[PLUGIN_KEY] = session
    register = config.pluginmanager.register
    register(session, "vram-session")  # no hooks of its own: found by name, as before
    register_measuring(config, session)
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
    config.stash[CLAIMS_KEY] = claim_hooks
    register_reports(config, session, claim_hooks)
    return session


MEASURING = ("vram-measure", "vram-garbage", "vram-measured-output", "vram-benchmark")


def register_measuring(config: pytest.Config, session: VramSession) -> None:
    """Register the hooks that act on a measured test (a ``vram`` fixture's probe).

    At activation, with the others; an activated run that collects no vram test drops them
    again at the end of collection (:meth:`~pytest_vram.plugin.CollectionHooks.
    pytest_collection_finish`), so that its thousand plain tests do not each pass through
    them.
    """
    register = config.pluginmanager.register
    register(MeasureHooks(session), "vram-measure")
    register(GarbageHooks(), "vram-garbage")
    register(output.MeasuredOutputHooks(session), "vram-measured-output")
    if config.pluginmanager.hasplugin("benchmark"):  # pytest-benchmark is active
        from pytest_vram import benchmarking

        register(benchmarking.BenchmarkHooks(PROBE_KEY, RECORDS_KEY), "vram-benchmark")


def register_reports(
    config: pytest.Config, session: VramSession, claim_hooks: claiming.ClaimHooks
) -> None:
    """The report hook, which only a run that measures or judges claims needs: dropped
    with :data:`MEASURING` where nothing measures and no module declared a claim."""
    aggregate = not session.worker and not session.secondary_rank
    config.pluginmanager.register(ReportHooks(session, claim_hooks, aggregate), "vram-reports")


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
                explained = output.explain_failures(self.session, records)
                rep.longrepr = failure(item, "\n\n".join([*failing, *filter(None, [explained])]))
                # An xfail test whose body passed but whose memory fails is not the failure
                # it expected: without this pytest counts it as xfailed and exits 0.
                with contextlib.suppress(AttributeError):
                    del rep.wasxfail
        elif call.when == "call" and call.excinfo and call.excinfo.errisinstance(VramUsageError):
            rep.longrepr = failure(item, f"{item.nodeid}: {call.excinfo.value}")
        elif call.when == "call" and call.excinfo and probe.out_of_memory is not None:
            if is_out_of_memory(call.excinfo.value):  # not one the test caught and went on
                rep.longrepr = failure(
                    item, probe.out_of_memory.describe(item.nodeid, probe.device)
                )
                probe.release_on_finish(call.excinfo.tb)
        elif call.when == "teardown":
            # The leak is known only now; the teardown report is also what JUnit XML reads.
            for record in item.stash.get(RECORDS_KEY, []):
                record = dataclasses.replace(record, leaked_bytes=probe.leaked_bytes)
                rep.user_properties.append(record.to_property())
        return rep


class GarbageHooks:
    """Ask for a thaw of what the backends' collections froze once a test module is done
    (see :func:`pytest_vram.backends.base.collect_garbage`), so that a cycle a
    module-scoped fixture dropped at its teardown is collected at the next measured test's
    start.

    The thaw is done by that next collection, not here: where no measurement follows
    (the session's last module, plain tests after the last vram test) the freeze stays,
    and pytest's own clean-up at exit (``unraisableexception``'s five full collections, to
    run the finalizers of cyclic garbage) visits only what came after it instead of every
    object of a process that imported torch: about 0.3 s apiece, 1.6 s of a one-process
    memory job on the 2-core CPU machine. The cost: a finalizer of a cycle among objects
    that were alive at the last measurement does not run (nor report an exception) before
    the process exits.
    """

    @pytest.hookimpl(trylast=True)  # after pytest's own teardown of the fixtures
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        module = getattr(item, "module", None)
        if nextitem is not None and getattr(nextitem, "module", None) is not module:
            from pytest_vram.backends.base import thaw_at_next_collection

            thaw_at_next_collection()


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
        rep.longrepr = failure(item, f"{item.nodeid}: failed on rank(s) {failed}; see their output")
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
