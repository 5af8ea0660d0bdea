"""pytest entry point of pytest-vram (registered under the ``pytest11`` entry point ``vram``).

The options (:mod:`~pytest_vram.pytest_plugin.options`), the ``vram``, ``vram_backend`` and
``vram_figures`` fixtures, and ``pytest_configure``, which creates the run's
:class:`~pytest_vram.pytest_plugin.session.VramSession` and registers every hook class
once, as pytest's cacheprovider registers its plugins: each class acts on what the run
holds (a measured test, a declared claim, a report file) and does nothing where there is
none. Importing this module does not import torch: the backend is created before the
first test of a run that holds vram tests.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from pytest_vram.backends import Backend
from pytest_vram.core.marks import MARKER_HELP, VramMark
from pytest_vram.core.records import Figures
from pytest_vram.measure.vram import Vram
from pytest_vram.pytest_plugin import keys, options, world, xdist
from pytest_vram.pytest_plugin.aggregation import AggregateHooks, ReportHooks, WorkerHooks
from pytest_vram.pytest_plugin.benchmarking import BenchmarkHooks
from pytest_vram.pytest_plugin.claim_judging import ClaimHooks
from pytest_vram.pytest_plugin.collection import CollectionHooks, valid_mark
from pytest_vram.pytest_plugin.measurement import GarbageHooks, MeasureHooks
from pytest_vram.pytest_plugin.options import Settings
from pytest_vram.pytest_plugin.scoping import ScopeHooks
from pytest_vram.pytest_plugin.session import VramSession

__all__ = ["vram", "vram_backend", "vram_figures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True)  # before pytest-xdist's own tryfirst hook reads -n
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, Any, Any]:
    options.apply_numprocesses(config)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    options.check_rootdir(config)
    options.narrow_collection(config)
    settings = Settings.from_config(config)
    worker = xdist.is_worker(config)
    session = VramSession(
        settings,
        config.rootpath,
        worker=worker,
        secondary_rank=world.is_secondary_rank(),
        profile_source=options.source(config, "vram_profile"),
    )
    config.stash[keys.SESSION] = session
    if settings.emulate == "session" and not xdist.is_controller(config):
        # Test modules are imported during collection: the card must answer before it.
        session.prepare_backend()
    claim_hooks = ClaimHooks(
        config,
        worker=worker,
        strict=settings.strict,
        owner=session.owner,
        produced_nowhere=session.produced_nowhere,
        results=session.outcome.claims,
    )
    config.stash[keys.CLAIMS] = claim_hooks
    register = config.pluginmanager.register
    register(CollectionHooks(config, session, claim_hooks), "vram-collection")
    register(session, "vram-session")  # no hooks of its own: found by name
    register(ScopeHooks(session), "vram-scope")
    register(MeasureHooks(session), "vram-measure")
    register(GarbageHooks(), "vram-garbage")
    if config.pluginmanager.hasplugin("benchmark"):  # pytest-benchmark is active
        register(BenchmarkHooks(), "vram-benchmark")
    # Only the controller (or the single process) and a launched world's rank 0 aggregate,
    # report and write; a worker sends its collection to the controller.
    if worker:
        register(WorkerHooks(config, session), "vram-worker")
    elif not session.secondary_rank:
        register(AggregateHooks(config, session), "vram-aggregate")
    if not worker:
        register(xdist.ControllerHooks(session.receive), "vram-controller")
    register(claim_hooks, "vram-claims")
    aggregate = not worker and not session.secondary_rank
    register(ReportHooks(session, claim_hooks, aggregate), "vram-reports")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def vram(request: pytest.FixtureRequest) -> Iterator[Vram]:
    """Measure the GPU memory of a model build and of workloads in this test.

    The whole test, its function-scoped fixtures included, runs on the measuring device
    (on the estimator: one emulated GPU). Counting starts when the test's first
    function-scoped fixture is set up. ``vram.build(fn, *args, **kw)`` runs a setup step
    (e.g. building the model on ``vram.device``); ``vram.run(fn, *args, name=None, **kw)``
    runs a workload and records its peak: what is allocated when it starts (made by
    fixtures, ``vram.build`` or the body) is the model's memory. One ``run`` per test is
    keyed by the test's node id, several by ``f"{nodeid}::{name}"``. What is still
    allocated after the fixtures are torn down is reported as leaked. After the test the
    measurements are compared with ``baselines/<profile>.yaml``; a regression or a budget
    overrun fails the test. A test that uses this fixture is treated as marked
    ``@pytest.mark.vram`` (options on the marker: tolerance=, budget=, key=, card=).
    ``vram.largest(fn, high=..., low=1, step=1)``: the largest ``n`` for which ``fn(n)``
    runs on the test's card without running out of memory, recorded and gated like a figure.
    Also: ``vram.measurements``, ``vram.device`` (e.g. ``"cuda:0"``), ``vram.backend``.
    """
    session = request.config.stash[keys.SESSION]
    item = request.node
    test = session.open_test(item.nodeid)
    if test is not None:  # the whole test runs in the backend's scope (pytest_plugin.scoping)
        probe = test.open(session.largest_hint)
        item.stash[keys.VRAM] = probe
        yield probe
        return  # the leak is measured once every fixture of the test is torn down
    # Requested at run time (request.getfixturevalue): counting starts now.
    mark = valid_mark(item)
    with session.world(mark, item.nodeid):
        probe = session.open(mark or VramMark(), item.nodeid)
        item.stash[keys.VRAM] = probe
        yield probe
    # After the world (process group) ends: it keeps the tensors of its last collectives.
    probe.finish()


@pytest.fixture(scope="session")
def vram_backend(pytestconfig: pytest.Config) -> Backend:
    """The measuring backend of this run (``--vram-backend``), created and warmed up on
    first use; the same object ``vram.backend`` returns. For session-wide helpers that
    need the device or the profile outside a measured test.
    """
    return pytestconfig.stash[keys.SESSION].backend()


@pytest.fixture(scope="session")
def vram_figures(pytestconfig: pytest.Config) -> Figures:
    """The figures measured so far in this process, by baseline key:
    ``vram_figures[key].peak_bytes``. For comparisons across tests, declare a claim
    (``vram_claims``), which sees every test's figures whatever the order and worker."""
    return pytestconfig.stash[keys.CLAIMS].figures
