"""The object the ``vram`` fixture gives a test: its handle on the measuring :class:`Meter`."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from pytest_vram.backends.base import Backend
from pytest_vram.core.fit import Candidates, FitError
from pytest_vram.core.names import unstorable
from pytest_vram.core.verdicts import OffDevice
from pytest_vram.measure.meter import (
    LargestError,
    Measurement,
    Meter,
    OutOfMemory,
    release_frames,
)

T = TypeVar("T")

#: baseline key -> the recorded answer of ``vram.largest`` and its card (None, None: none)
Hints = Callable[[str], tuple[int | None, str | None]]


def _no_hints(key: str) -> tuple[int | None, str | None]:
    return None, None


class VramUsageError(Exception):
    """The fixture is used in a way that would give ambiguous baseline keys."""


class Vram:
    """Measure a test's build step and workloads; see the ``vram`` fixture for usage."""

    def __init__(self, meter: Meter, base_key: str, hints: Hints = _no_hints) -> None:
        self._meter = meter
        self._base_key = base_key
        self._hints = hints
        self.leaked_bytes: int | None = None
        self._failed_traceback: TracebackType | None = None
        #: set when the test also uses pytest-benchmark's ``benchmark``: a ``run`` repeated
        #: under the same name is a timing round, not a second measurement
        self.timing_rounds = False
        self._finished = False

    @property
    def backend(self) -> Backend:
        """The measuring backend (``cuda``, ``estimate`` or a custom one)."""
        return self._meter.backend

    @property
    def device(self) -> str:
        """The torch device to build on, e.g. ``"cuda:0"``."""
        return self._meter.backend.device

    @property
    def measurements(self) -> list[Measurement]:
        """The workloads measured so far in this test, in order."""
        return list(self._meter.measurements)

    def build(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` (e.g. a model constructor) on the measuring backend.

        What it leaves allocated counts as model bytes of every later ``run``; an
        ``nn.Module`` result adds its parameter count to the measurement.
        """
        self._check_open()
        return self._meter.build(fn, *args, **kwargs)

    def run(self, fn: Callable[..., T], *args: Any, name: str | None = None, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` and record its peak memory as one measurement.

        One ``run`` per test is keyed by the test's node id; several need a distinct
        ``name`` each and are keyed ``f"{nodeid}::{name}"``. In a test that also uses
        pytest-benchmark, ``benchmark(vram.run, fn, ...)`` measures the first call and
        times the others (see ``pytest_plugin.benchmarking``).
        """
        self._check_open()
        if self.timing_rounds and name in [m.name for m in self._meter.measurements]:
            return self._meter.repeat(fn, *args, **kwargs)
        self._check_name(name)
        return self._meter.run(fn, *args, name=name, **kwargs)

    def largest(
        self,
        fn: Callable[[int], Any],
        *,
        high: int,
        low: int = 1,
        step: int = 1,
        name: str | None = None,
        reset: Callable[[], Any] | None = None,
    ) -> int:
        """The largest ``n`` in ``low, low + step, ..., high`` for which ``fn(n)`` runs on
        the test's card without ``torch.OutOfMemoryError``: a batch size, a sequence length.

        Needs a card (``@pytest.mark.vram(card=...)`` or ``--vram-card``). Bisection, assuming
        that what fits at ``n`` fits at every smaller ``n``; the recorded answer (the
        baseline entry's ``largest``) and the next candidate are tried first. Every probe
        starts from the same state: the cache is released, and what the probe made must be
        freed when it returns or fails (its result is dropped; ``reset()``, if given, runs
        after each probe, e.g. ``reset=lambda: model.zero_grad(set_to_none=True)``).

        Recorded as one measurement (keyed like ``run``): the figures of the largest fitting
        run and the answer, gated like a figure: a lower answer than the baseline's fails.
        Returns the answer, 0 where not even ``low`` fits.
        """
        self._check_open()
        self._check_name(name)
        try:
            candidates = Candidates(low, high, step)
        except FitError as exc:
            given = f"low={low!r}, high={high!r}, step={step!r}"
            raise VramUsageError(f"vram.largest({given}): {exc}") from None
        key = self._base_key if name is None else f"{self._base_key}::{name}"
        try:
            answer = self._meter.largest(
                fn, candidates, name=name, hint=self._hints(key), reset=reset
            )
        except LargestError as exc:
            raise VramUsageError(str(exc)) from None
        return answer.value

    @property
    def off_device_build(self) -> OffDevice | None:
        """Set when a build step counted nothing on the device while its result holds
        parameters or tensors elsewhere (a model left on the CPU)."""
        return self._meter.off_device_build

    @property
    def out_of_memory(self) -> OutOfMemory | None:
        """Set when a build step or workload of this test ran out of memory."""
        return self._meter.out_of_memory

    def release_on_finish(self, tb: TracebackType | None) -> None:
        """Clear the frames of ``tb`` (the test's failure) when the test finishes.

        After an out-of-memory failure the test's own frame still holds its model through
        the traceback pytest keeps; clearing it at teardown (after ``--pdb`` had its look)
        frees that memory for the following tests and keeps it out of ``leaked_bytes``.
        """
        self._failed_traceback = tb

    def key(self, measurement: Measurement) -> str:
        """The baseline key of ``measurement``."""
        if measurement.name is None:
            return self._base_key
        return f"{self._base_key}::{measurement.name}"

    def finish(self) -> int:
        """End the test: what is still allocated now is reported as leaked."""
        if self._failed_traceback is not None:
            release_frames(self._failed_traceback)
            self._failed_traceback = None
        self._finished = True
        self.leaked_bytes = self._meter.finish()
        return self.leaked_bytes

    def _check_open(self) -> None:
        if self._finished:
            raise VramUsageError(
                f"this `vram` object belongs to {self._base_key}, which has finished; take "
                f"the `vram` fixture as an argument of every test that measures (do not keep "
                f"it in a global or a wider-scoped fixture)"
            )

    def _check_name(self, name: str | None) -> None:
        taken = [m.name for m in self._meter.measurements]
        if name is not None and (not isinstance(name, str) or not name or "::" in name):
            raise VramUsageError(
                f"vram.run(name={name!r}): name must be a non-empty str without '::'"
            )
        why = None if name is None else unstorable(name)
        if why is not None:
            raise VramUsageError(
                f"vram.run(name={name!r}): the name is part of the baseline key, but {why}; "
                f"use printable text (letters, digits, '-', '_', '.')"
            )
        if not taken:
            return
        if name is None or None in taken:
            raise VramUsageError(
                "vram.run() is called more than once in this test: give every call its own "
                "name, e.g. vram.run(step, model, name='train'), so each gets a baseline key"
            )
        if name in taken:
            raise VramUsageError(f"vram.run(name={name!r}): this name is measured already")
