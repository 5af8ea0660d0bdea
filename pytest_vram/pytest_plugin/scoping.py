"""The whole vram test on the measuring backend's device: :class:`ScopeHooks`.

A vram test (one that uses the ``vram`` fixture) runs in the backend's ``test_scope()``
from before its fixtures are set up to after they are torn down, so that everything the
test does, in its body and in the function-scoped fixtures it uses, runs on the device
that is measured (on the estimator: one emulated card). Counting starts when the first
function-scoped fixture is set up (the zero point); ``vram.build`` and ``vram.run`` only
mark the phases. The backend is created before the first test, once the run's vram tests
are known, and its ``session_scope()`` lasts until the session ends.

A fixture of a wider scope (module, class, package, session) outlives the test, while on
the estimator every CUDA tensor belongs to one test's emulated card
(``Backend.device_per_test``): one that makes or keeps CUDA tensors in a vram test is
refused, naming the fixture and the fix, and torn down so that no tensor of a finished
test's card reaches the next one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
from collections.abc import Generator
from typing import Any

import pytest

from pytest_vram.core.marks import VramMark
from pytest_vram.core.units import format_size
from pytest_vram.pytest_plugin.collection import valid_mark
from pytest_vram.pytest_plugin.session import VramSession, WholeTest


def uses_vram(item: pytest.Item) -> bool:
    """Whether ``item`` is a vram test that runs in a whole-test scope: it uses the
    ``vram`` fixture (a test that only carries the marker is reported at setup; one that
    requests the fixture at run time is measured from then on)."""
    return "vram" in getattr(item, "fixturenames", ())


class ScopeHooks:
    """Creates the backend before the first test, enters and leaves each vram test's scope
    around its fixtures, takes the zero point, and refuses wider-scoped fixtures that make
    or keep CUDA tensors where a test's device ends with the test."""

    def __init__(self, session: VramSession) -> None:
        self.session = session
        #: the whole test being set up, run or torn down now
        self._active: WholeTest | None = None
        #: wider-scoped fixtures set up inside a whole test, by name: fixturedef -> the
        #: request that set it up last
        self._wider: dict[str, dict[Any, pytest.FixtureRequest]] = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        # After collection and deselection, before the first test: a vram test's fixtures
        # are set up on the backend's device, so it must exist by then.
        config = session.config
        if not config.option.collectonly and any(uses_vram(i) for i in session.items):
            self.session.prepare_backend()
        return (yield)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # A plain implementation: it runs after the tryfirst ones (skip and xfail conditions
        # are evaluated against the machine, as decorator conditions are at import; the
        # marker checks) and before pytest's own, which sets the fixtures up.
        if not uses_vram(item):
            return
        self._active = None
        mark = valid_mark(item) or VramMark()
        self._active = self.session.enter_test(mark, item.nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        test = self._active
        if test is None:
            return (yield)
        if fixturedef.scope == "function":
            if not test.meter.started:
                self._start(test, request.node)
            return (yield)
        backend = test.meter.backend
        if not backend.device_per_test:
            return (yield)
        before = backend.allocated()
        with backend.wider_fixture_scope():
            result = yield
        self._wider.setdefault(fixturedef.argname, {})[fixturedef] = request
        made = backend.allocated() - before
        if made > 0:
            _tear_down(fixturedef, request)
            pytest.fail(_made_message(fixturedef, test.nodeid, made), pytrace=False)
        return result

    def _start(self, test: WholeTest, node: Any) -> None:
        """The zero point, and the test's end right after its function-scoped fixtures are
        torn down: a finalizer of the test itself, registered before any of theirs, runs
        after all of them and before pytest tears down the module's (or wider) fixtures
        that the next test does not use, which are in no figure of this one."""
        test.start()
        if isinstance(node, pytest.Item) and node.nodeid == test.nodeid:
            node.addfinalizer(functools.partial(self._leave, node, check=True))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        # The test's finalizer left its scope (see _start); where it never got one (its
        # setup ended before the first function-scoped fixture), it is left here.
        try:
            return (yield)
        finally:
            self._leave(item, check=False)

    def _leave(self, item: pytest.Item, *, check: bool) -> None:
        """Leave the test's scope; with ``check``, first refuse (and tear down) the
        wider-scoped fixtures it used that still hold CUDA tensors of its device."""
        test = self.session.open_test(item.nodeid)
        self._active = None
        if test is None:
            return
        kept = self._kept_cuda_tensors(item) if check else []
        try:
            for fixturedef, request in kept:
                _tear_down(fixturedef, request)
        finally:
            # The fixtures are torn down, but pytest still holds their values until the
            # test's teardown is reported (then it drops them all): released now, they are
            # not counted as the test's leak.
            funcargs = getattr(item, "funcargs", None)
            if isinstance(funcargs, dict):
                funcargs.clear()
            self.session.leave_test(item.nodeid)
        if kept:
            pytest.fail("\n".join(_kept_message(fd, item.nodeid) for fd, _ in kept), pytrace=False)

    def _kept_cuda_tensors(self, item: pytest.Item) -> list[tuple[Any, pytest.FixtureRequest]]:
        """The wider-scoped fixtures of ``item`` still set up whose value holds CUDA tensors
        (``model.to(vram.device)`` in the test body, on a module-scoped model)."""
        test = self.session.open_test(item.nodeid)
        if test is None or not test.meter.backend.device_per_test:
            return []
        kept = []
        for name in getattr(item, "fixturenames", ()):
            for fixturedef, request in self._wider.get(name, {}).items():
                cached = fixturedef.cached_result
                if cached is not None and cached[2] is None and _holds_cuda(cached[0]):
                    kept.append((fixturedef, request))
        return kept

    @pytest.hookimpl(trylast=True)  # after pytest's own, which tears the last fixtures down
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.session.close()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.session.close()  # where the session did not finish (an internal error)


def _tear_down(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    """Finish the fixture now (its teardown runs on the test's device) so that the next
    test sets it up anew instead of getting what this test's device made."""
    fixturedef.finish(request)


def _holds_cuda(value: object, depth: int = 0) -> bool:
    """Whether ``value`` (a tensor, a module, an optimizer, or a list, tuple or dict of
    them, two levels deep) holds a CUDA tensor. torch is looked up, never imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(value, torch.Tensor):
        return value.device.type == "cuda"
    if isinstance(value, torch.nn.Module):
        tensors = itertools.chain(value.parameters(), value.buffers())
        return any(t.device.type == "cuda" for t in tensors)
    if isinstance(value, torch.optim.Optimizer):
        return any(_holds_cuda(s, depth + 1) for s in value.state.values()) or any(
            _holds_cuda(g["params"], depth + 1) for g in value.param_groups
        )
    if depth >= 2:
        return False
    if isinstance(value, dict):
        return any(_holds_cuda(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_cuda(v, depth + 1) for v in value)
    return False


def _where(fixturedef: Any) -> str:
    """``path:line`` of the fixture's function, relative to the working directory."""
    code = getattr(fixturedef.func, "__code__", None)
    if code is None:
        return "?"
    path = code.co_filename
    with contextlib.suppress(ValueError):  # another drive
        path = os.path.relpath(path)
    return f"{path}:{code.co_firstlineno}"


def _fix(fixturedef: Any) -> str:
    return (
        f"Make '{fixturedef.argname}' function-scoped (@pytest.fixture without scope=), so that "
        "each test builds it on its own device, or build the model in the test with "
        "vram.build(...). On a GPU (--vram-backend=cuda) what a wider-scoped fixture holds "
        "is held before counting starts and is in no figure of the test."
    )


def _made_message(fixturedef: Any, nodeid: str, made: int) -> str:
    return (
        f"fixture '{fixturedef.argname}' (scope {fixturedef.scope}, {_where(fixturedef)}) "
        f"made {format_size(made)} of CUDA tensors while {nodeid} was set up on the estimate "
        "backend, where every vram test has its own emulated GPU, from its fixtures' setup "
        f"to their teardown: a {fixturedef.scope}-scoped fixture would keep them for tests "
        f"that run on another. {_fix(fixturedef)}"
    )


def _kept_message(fixturedef: Any, nodeid: str) -> str:
    return (
        f"fixture '{fixturedef.argname}' (scope {fixturedef.scope}, {_where(fixturedef)}) "
        f"holds CUDA tensors made by {nodeid} on its emulated GPU (e.g. a module moved with "
        ".to(vram.device) in the test), which ends with the test on the estimate backend; "
        "the fixture was torn down so that the next test sets it up anew. "
        f"{_fix(fixturedef)}"
    )
