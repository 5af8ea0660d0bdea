"""A measured test's reports: :class:`MeasureHooks` (judging, the failure text, the records
that travel on the teardown report, the ``-v`` peak, the ``--vram-artifacts``) and
:class:`GarbageHooks` (a thaw of the frozen generation at each module's end)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator
from typing import Any

import pytest

from pytest_vram.backends.base import thaw_at_next_collection
from pytest_vram.core.verdicts import OffDevice
from pytest_vram.measure import placement
from pytest_vram.measure.meter import is_out_of_memory
from pytest_vram.measure.vram import Vram, VramUsageError
from pytest_vram.pytest_plugin import world
from pytest_vram.pytest_plugin.collection import valid_mark
from pytest_vram.pytest_plugin.keys import RANKS, RECORDS, VRAM
from pytest_vram.pytest_plugin.session import ERROR_PROPERTY, VramSession, with_test_causes
from pytest_vram.render import artifacts
from pytest_vram.render.breakdowns import top_lines
from pytest_vram.render.json_report import record_property
from pytest_vram.render.longrepr import Failure, failure, text_of
from pytest_vram.render.terminal import peaks
from pytest_vram.render.verdicts import mixed_devices_failure, off_device_failure, out_of_memory
from pytest_vram.store.artifacts import ArtifactError


class MeasureHooks:
    """After a measured test: judging, the failure text, out-of-memory text and breakdown,
    the records on the teardown report (what travels to the controller and into JUnit
    XML), the ``-v`` peak, and the ``--vram-artifacts``."""

    def __init__(self, session: VramSession) -> None:
        self.session = session
        #: the terminal summary has begun: the short summary's FAILED lines must stay plain
        self._summarising = False

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """With ``--vram-artifacts`` on the cuda backend: record the allocator's history."""
        backend = self.session.created_backend
        if (
            self.session.settings.artifacts is not None
            and backend is not None
            and backend.name == "cuda"
            and item.stash.get(VRAM, None) is not None
        ):
            artifacts.start_recording()
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        probe = item.stash.get(VRAM, None)
        if probe is None:
            if call.when == "call" and self.session.settings.artifacts:
                artifacts.stop_recording()
            return rep
        if call.when == "call":
            self._judge(item, call, probe, rep)
            self._show(item, probe, rep)
        elif call.when == "teardown":
            # The leak is known only now; the teardown report is also what JUnit XML reads.
            for record in item.stash.get(RECORDS, []):
                record = dataclasses.replace(record, leaked_bytes=probe.leaked_bytes)
                rep.user_properties.append(record_property(record))
        return rep

    def _judge(
        self, item: pytest.Item, call: pytest.CallInfo[None], probe: Vram, rep: pytest.TestReport
    ) -> None:
        _gather_ranks(item, probe, rep)
        if rep.passed:
            # Only a workload that ran to completion is judged (and may become a baseline).
            gathered = item.stash.get(RANKS, None)
            function = getattr(item, "function", None)
            records = self.session.judge(
                item.nodeid, probe, valid_mark(item), gathered, function=function
            )
            item.stash[RECORDS] = records
            failing = self.session.failures(item.nodeid, records)
            if failing:
                rep.outcome = "failed"
                explained = self.session.explain(records)
                rep.longrepr = failure(item, "\n\n".join([*failing, *filter(None, [explained])]))
                # An xfail test whose body passed but whose memory fails is not the failure
                # it expected: without this pytest counts it as xfailed and exits 0.
                with contextlib.suppress(AttributeError):
                    del rep.wasxfail
        elif call.excinfo and call.excinfo.errisinstance(VramUsageError):
            rep.longrepr = failure(item, f"{item.nodeid}: {call.excinfo.value}")
        elif call.excinfo and _device_error(call.excinfo) and probe.off_device_build:
            # torch's device mismatch deep in its internals, caused by a model left on the CPU
            off = with_test_causes(probe.off_device_build, getattr(item, "function", None))
            where = placement.user_line(call.excinfo.tb)
            error = call.excinfo.exconly().splitlines()[0]
            rep.longrepr = failure(item, off_device_failure(off, error, where))
        elif call.excinfo and (mixed := _mixed_devices(item, probe, call.excinfo)):
            where = placement.user_line(call.excinfo.tb)
            error = call.excinfo.exconly().splitlines()[0]
            session = self.session.settings.emulate == "session"
            text = mixed_devices_failure(mixed, error, where, session_emulated=session)
            rep.longrepr = failure(item, text)
        elif (
            call.excinfo
            and probe.out_of_memory is not None
            and is_out_of_memory(call.excinfo.value)  # not one the test caught and went on
        ):
            text = out_of_memory(probe.out_of_memory, item.nodeid, probe.device)
            rep.longrepr = failure(item, text)
            probe.release_on_finish(call.excinfo.tb)

    def _show(self, item: pytest.Item, probe: Vram, rep: pytest.TestReport) -> None:
        """The call report's ``-v`` peak, out-of-memory breakdown and artifacts."""
        records = item.stash.get(RECORDS, [])
        if records:
            rep.vram_peak = peaks(records)  # type: ignore[attr-defined]
        settings = self.session.settings
        oom = probe.out_of_memory
        if rep.failed and oom is not None and oom.breakdown and isinstance(rep.longrepr, Failure):
            lines = top_lines(oom.breakdown)
            text = "\n".join(["", "live at the highest allocation the step reached:", *lines])
            rep.longrepr = failure(item, f"{text_of(rep.longrepr)}\n{text}")
        if settings.artifacts and (rep.failed or settings.artifacts_all):
            try:
                written = self.session.write_artifacts(item.nodeid, probe, records)
            except ArtifactError as exc:
                # Said in the summary of the process that reports (an xdist controller
                # too), which then exits non-zero; the test's own outcome stays.
                rep.user_properties.append((ERROR_PROPERTY, str(exc)))
                rep.sections.append(("vram artifacts", str(exc)))
                written = []
            finally:
                artifacts.stop_recording()
            if written and rep.failed:
                shown = ", ".join(self.session.display(p) for p in written)
                rep.sections.append(("vram artifacts", shown))
        elif settings.artifacts:
            artifacts.stop_recording()

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self) -> None:
        self._summarising = True

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
    ) -> Generator[None, Any, Any]:
        result = yield
        peak = getattr(report, "vram_peak", None)
        if (
            peak
            and not self._summarising
            and report.when == "call"
            and isinstance(result, tuple)
            and len(result) == 3
        ):
            category, short, verbose = result
            if isinstance(verbose, str) and verbose:
                return category, short, f"{verbose} ({peak})"
        return result


class GarbageHooks:
    """Ask for a thaw of what the backends' collections froze once a test module is done
    (see :func:`pytest_vram.backends.base.collect_garbage`), so that a cycle a
    module-scoped fixture dropped at its teardown is collected at the next measured test's
    start.

    The thaw is done by that next collection, not here: where no measurement follows
    (the session's last module, plain tests after the last vram test) the freeze stays,
    and pytest's own clean-up at exit (``unraisableexception``'s five full collections, to
    run the finalizers of cyclic garbage) visits only what came after it instead of every
    object of a process that imported torch. The cost: a finalizer of a cycle among
    objects that were alive at the last measurement does not run (nor report an
    exception) before the process exits.
    """

    @pytest.hookimpl(trylast=True)  # after pytest's own teardown of the fixtures
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        module = getattr(item, "module", None)
        if nextitem is not None and getattr(nextitem, "module", None) is not module:
            thaw_at_next_collection()


def _device_error(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """An error about devices (tensors on two devices, CUDA not compiled in): after a
    build step left its model elsewhere, that is the likely reason. Running out of memory
    on a device is not one (it has a failure text of its own)."""
    exc = excinfo.value
    if is_out_of_memory(exc):
        return False
    return "device" in type(exc).__name__.lower() or "device" in str(exc).lower()


def _mixed_devices(
    item: pytest.Item, probe: Vram, excinfo: pytest.ExceptionInfo[BaseException]
) -> OffDevice | None:
    """A device error in a test whose code holds tensors on the measured device and on
    another (a batch made on the CPU by a device chosen at import): what is elsewhere and
    the likely causes, from the failing frames, the fixtures' values and their code."""
    if not _device_error(excinfo):
        return None
    device = probe.device
    values = [v for name, v in item.funcargs.items() if name != "vram"]  # type: ignore[attr-defined]
    held = placement.survey([*placement.user_frame_values(excinfo.tb), *values], device)
    if not (held.off_device and held.on_device):
        return None
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}) or {}
    functions = [getattr(item, "function", None)]
    functions.extend(defs[-1].func for defs in fixtures.values() if defs)
    wider = [defs[-1].func for defs in fixtures.values() if defs and defs[-1].scope != "function"]
    return OffDevice(
        step="the test",
        device=device,
        backend=probe.backend.name,
        params=held.params,
        tensors=held.tensors,
        elsewhere=tuple(sorted(held.elsewhere)),
        causes=placement.causes(functions, device, set_up_outside=wider),
    )


def _gather_ranks(item: pytest.Item, probe: Vram, rep: pytest.TestReport) -> None:
    """In a launched world, collect every rank's figures; a rank that failed fails all."""
    mark = valid_mark(item)
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
        item.stash[RANKS] = gathered
