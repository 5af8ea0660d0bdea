"""A pytest plugin that times where a memory-suite run goes (loaded by phase_profile.py).

Per session: interpreter start to pytest's configure (Python, pytest and plugin imports),
``import torch``, collection, backend creation and warm-up (on ``cuda``: the CUDA context
and cuBLAS/cuDNN handles), the sum of the tests, the session's end. Per test, from the
reports and from wrappers around :class:`pytest_vram.measure.Meter`: setup (the ``vram``
fixture's start: garbage collection, emptying the cache), each ``vram.build`` (model
construction and weight initialisation), each ``vram.run`` (the workload, synchronised),
the rest of the call (the test's own code, pytest-benchmark rounds), teardown (the
fixture's finish: garbage collection, the leak check). Writes JSON to
``$VRAM_PHASES_OUT``.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any

import pytest

_T0 = time.perf_counter()
_EPOCH0 = time.time()  # to line worker processes up on one clock
_STATE: dict[str, Any] = {
    "session": collections.OrderedDict(),
    "tests": collections.defaultdict(lambda: collections.defaultdict(float)),
    "current": None,
}


def _session(name: str, seconds: float) -> None:
    _STATE["session"][name] = _STATE["session"].get(name, 0.0) + seconds


def _timed(owner: Any, attr: str, into: Any) -> None:
    original = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into(time.perf_counter() - started)

    setattr(owner, attr, wrapper)


def _per_test(phase: str) -> Any:
    def add(seconds: float) -> None:
        nodeid = _STATE["current"]
        if nodeid is not None:
            _STATE["tests"][nodeid][phase] += seconds

    return add


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _session("start to configure (interpreter, pytest, plugins)", time.perf_counter() - _T0)
    started = time.perf_counter()
    import torch  # noqa: F401 - what collection would import anyway, timed here

    _session("import torch", time.perf_counter() - started)
    from pytest_vram import backends
    from pytest_vram.backends import base
    from pytest_vram.measure.meter import Meter

    original_create = backends.create

    def create(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        backend = original_create(*args, **kwargs)
        _session("backend creation (CUDA context on cuda)", time.perf_counter() - started)
        _timed(backend, "warmup", lambda s: _session("backend warm-up", s))
        return backend

    backends.create = create  # type: ignore[assignment]
    for module in list(__import__("sys").modules.values()):
        if getattr(module, "create", None) is original_create and module is not backends:
            module.create = create  # type: ignore[attr-defined]
    _timed(Meter, "start", _per_test("setup: vram start (gc, empty cache)"))
    _timed(Meter, "build", _per_test("build"))
    _timed(Meter, "run", _per_test("run"))
    _timed(Meter, "repeat", _per_test("benchmark rounds"))
    _timed(Meter, "finish", _per_test("teardown: vram finish (gc, leak check)"))
    _timed(base, "collect_garbage", _per_test("gc (inside the above)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session: pytest.Session) -> Any:
    started = time.perf_counter()
    yield
    _session("collection", time.perf_counter() - started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    _STATE["current"] = item.nodeid
    started = time.perf_counter()
    yield
    _STATE["tests"][item.nodeid]["total"] += time.perf_counter() - started
    _STATE["current"] = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _STATE["tests"][report.nodeid][f"pytest {report.when}"] += report.duration


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get("VRAM_PHASES_OUT")
    if not path:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # under xdist: one file per worker (the controller runs no tests)
        path = f"{path}.{worker}"
    tests = {k: dict(v) for k, v in _STATE["tests"].items()}
    _session("tests (sum of run protocols)", sum(t.get("total", 0.0) for t in tests.values()))
    _session("start to unconfigure", time.perf_counter() - _T0)
    with open(path, "w") as f:
        document = {"session": dict(_STATE["session"]), "tests": tests, "epoch_at_start": _EPOCH0}
        json.dump(document, f, indent=1)
