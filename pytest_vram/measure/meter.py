"""The Measurement record and the one measuring logic shared by every backend.

``Meter`` counts everything from the start of a test: ``model_bytes`` is what is held
when a workload starts (the model and its inputs), ``peak_bytes`` the highest allocation
during the workload, ``leaked_bytes`` what is still held after the test's objects are
released. The backend only supplies counters and a scope (see ``backends.base``); torch
is looked up only where the backend already imported it.

A step that runs out of device memory is recorded as :class:`OutOfMemory` (what was held,
how far the allocations got) and its frames are cleared, so that the tensors it made are
freed at once rather than kept alive by the traceback for the rest of the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from pytest_vram.backends.base import Backend
from pytest_vram.core.figures import CarriesFigures
from pytest_vram.core.fit import Candidates, Largest, Probe, search
from pytest_vram.core.verdicts import OffDevice
from pytest_vram.measure import placement
from pytest_vram.measure.attribution import Attribution

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Measurement(CarriesFigures):
    """One measured workload. All sizes are bytes counted from the start of the test."""

    name: str | None
    params: int | None
    model_bytes: int
    peak_bytes: int
    #: what the figures were measured on (backend, device, torch, ...): the *setup*
    setup: dict[str, str]
    leaked_bytes: int | None = None
    #: the most the allocator held from the device during the workload (fragmentation and
    #: page granularity included), from the same start; None where the backend cannot tell
    reserved_bytes: int | None = None
    #: what was live at the peak by module and category (``pytest_vram.core.breakdown``),
    #: when attribution is on
    breakdown: dict[str, Any] | None = None
    #: set when the figures counted none of the test's device memory (a model built on the
    #: CPU, a workload that used no device memory): they must not pass or be recorded
    off_device: OffDevice | None = None
    #: the declared card whose capacity was enforced (its key), None where none was
    card: str | None = None
    #: why that card's usable capacity is only an upper bound (what it holds besides
    #: PyTorch's allocations is not measured), None where it is measured
    card_note: str | None = None
    #: the answer of ``vram.largest`` (the figures are those of its largest fitting value)
    largest: Largest | None = None


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """A build step or workload that failed to allocate, with the figures known at that point.

    Sizes are bytes counted from the start of the test, like a Measurement's.
    """

    step: str
    #: allocated when the step started (for a workload: the model bytes)
    held_bytes: int
    #: the highest allocation the step reached before the allocation that failed
    peak_bytes: int
    #: the exception's own text (torch's names the failed request and the free memory)
    error: str
    #: what was live at the highest allocation the step reached, when attribution is on
    breakdown: dict[str, Any] | None = None
    #: the declared card the step ran on, as the backend describes it, None where none
    card: str | None = None


class LargestError(Exception):
    """``vram.largest`` cannot answer: no card is declared, or a probe left memory behind."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's ``OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``) and for any
    ``MemoryError``. torch is looked up only if already imported: measuring never loads it.
    """
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(
        getattr(torch, "cuda", None), "OutOfMemoryError", None
    )
    return isinstance(oom, type) and isinstance(exc, oom)


def release_frames(tb: TracebackType | None) -> None:
    """Drop the local variables of the finished frames in ``tb``, so that what they hold
    (tensors) is freed although the traceback itself lives on."""
    for frame, _ in traceback.walk_tb(tb):
        try:
            frame.clear()
        except RuntimeError:  # still executing: the caller's own frame
            continue
        # Before Python 3.13 a snapshot of f_locals taken earlier (pytest takes one to look
        # for __tracebackhide__) survives clear(); reading f_locals again re-syncs it.
        frame.f_locals  # noqa: B018


def count_params(obj: Any) -> int | None:
    """Parameters of an ``nn.Module`` (shared ones once), or None for anything else."""
    parameters = getattr(obj, "parameters", None)
    if not callable(parameters):
        return None
    seen: set[int] = set()
    total = 0
    for p in parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


class Meter:
    """Measures build steps and workloads of one test on one backend."""

    def __init__(self, backend: Backend, attribution: bool = False) -> None:
        self.backend = backend
        #: collects what is live by module when ``attribution`` is on; attached now, so that
        #: a backend whose test state is made before ``start`` (``test_scope``) reports to it
        self.attribution = Attribution(backend) if attribution else None
        self.params: int | None = None
        self.measurements: list[Measurement] = []
        #: set when a build step or workload ran out of memory
        self.out_of_memory: OutOfMemory | None = None
        self._start: int | None = None
        self._reserved_start: int | None = None
        # One slot per workload running now (nested vram.run): the highest peak it saw before
        # an inner step reset the backend's peak counter, which would otherwise lose it.
        self._carried: list[int] = []
        #: the first build step that counted nothing while its result is elsewhere (the CPU):
        #: every later measurement is wrong, and an error the test then hits likely follows
        self.off_device_build: OffDevice | None = None
        #: a build step that counted nothing returned tensors on the device (made earlier)
        self._built_on_device = False

    @property
    def started(self) -> bool:
        """Whether :meth:`start` took the zero point."""
        return self._start is not None

    def start(self) -> None:
        """The zero point: what is allocated now is in no figure of this test."""
        self.backend.collect_garbage()
        self.backend.begin_test()
        self.backend.synchronize()
        self._start = self.backend.allocated()
        self._reserved_start = self.backend.reserved()

    def _held(self) -> int:
        if self._start is None:
            raise RuntimeError("Meter.start() was not called")
        self.backend.synchronize()
        return self.backend.allocated() - self._start

    def build(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a setup step (a model build) in the backend's scope; count its parameters."""
        held = self._held()
        self._reset_peak()  # so that running out of memory reports this step's peak
        step = f"vram.build({_name(fn)})"
        result = self._call(step, held, fn, args, kwargs)
        if self._held() <= held:  # counted nothing: is the result on the device at all?
            self._check_build(step, result, fn, args, kwargs)
        if self.attribution is not None:
            self.attribution.collector.add_model(result)
        params = count_params(result)
        if params is not None:
            self.params = params if self.params is None else self.params + params
        return result

    def run(self, fn: Callable[..., T], *args: Any, name: str | None = None, **kwargs: Any) -> T:
        """Run a workload in the backend's scope and record its peak."""
        result, record = self._measure(fn, args, kwargs, name)
        self.measurements.append(record)
        return result

    def _measure(
        self, fn: Callable[..., T], args: Any, kwargs: Any, name: str | None, step: str = ""
    ) -> tuple[T, Measurement]:
        """Run a workload in the backend's scope: its result and its measurement."""
        model_bytes = self._held()
        self._reset_peak()
        mark = self.attribution.collector.mark() if self.attribution else 0
        if not step:
            step = f"vram.run({_name(fn)}" + ("" if name is None else f", name={name!r}") + ")"
        self._carried.append(0)
        try:
            result = self._call(step, model_bytes, fn, args, kwargs)
        finally:
            carried = self._carried.pop()
            if self._carried:  # an enclosing workload saw everything this one saw
                self._carried[-1] = max(self._carried[-1], carried)
        self.backend.synchronize()
        peak = max(self.backend.peak(), carried) - self._start  # type: ignore[operator]
        off_device = self.off_device_build
        if off_device is None and max(peak, model_bytes) <= 0:
            off_device = self._check_run(step, result, fn, args, kwargs)
        card = self.backend.card_in_force()
        record = Measurement(
            name=name,
            params=self.params,
            model_bytes=model_bytes,
            peak_bytes=max(peak, model_bytes),
            off_device=off_device,
            setup=self.backend.context(),  # Backend.context(): the backends' public name
            reserved_bytes=self._reserved_peak(),
            breakdown=self.attribution.collector.breakdown(mark) if self.attribution else None,
            card=None if card is None else card.key,
            card_note=None if card is None else card.unknown(),
        )
        return result, record

    def largest(
        self,
        fn: Callable[[int], Any],
        candidates: Candidates,
        *,
        name: str | None = None,
        hint: tuple[int | None, str | None] = (None, None),
        reset: Callable[[], Any] | None = None,
    ) -> Largest:
        """The largest candidate ``n`` for which ``fn(n)`` runs on the card in force without
        running out of memory (see :mod:`pytest_vram.core.fit`), recorded as one
        measurement: the figures of the largest fitting run, and the answer.

        Every probe starts from the same state: the cache is released before it; after it
        its result is dropped, ``reset()`` runs, and what the test held before the first
        probe must be all that is held again (:class:`LargestError` otherwise). ``hint``:
        the recorded answer and its card, checked first.
        """
        card = self.backend.card_in_force()
        if card is None:
            raise LargestError(
                "vram.largest needs a card whose capacity decides what fits: declare one with "
                "@pytest.mark.vram(card='rtx3080-laptop') or card='8GiB', or run with "
                "--vram-card=NAME"
            )
        base = self._held()
        label = _name(fn)
        fitted: dict[int, Measurement] = {}
        failed: dict[int, OutOfMemory] = {}
        probes: list[Probe] = []

        def fits(value: int) -> bool:
            step = f"vram.largest({label}) at {value}"
            measurement, oom = self._probe(fn, value, name, step)
            if reset is not None:
                with self.backend.scope():
                    reset()
            self.backend.collect_garbage()
            left = self._held() - base
            if left:
                raise LargestError(
                    f"{step} left {left} B allocated that the test did not hold before the "
                    "first probe (gradients, optimizer state, a cache or a result kept "
                    "somewhere), so the next probe would start from another state: free it "
                    "in the function, or pass reset=, e.g. reset=lambda: "
                    "model.zero_grad(set_to_none=True)"
                )
            if measurement is not None:
                fitted[value] = measurement
                probes.append(Probe(value, True, measurement.peak_bytes))
                return True
            assert oom is not None
            failed[value] = oom
            probes.append(Probe(value, False, oom.peak_bytes))
            return False

        recorded, recorded_card = hint
        value = search(candidates, fits, recorded if recorded_card == card.key else None)
        lost = None
        if recorded_card == card.key and recorded is not None and recorded in failed:
            oom = failed[recorded]
            lost = {"value": recorded, "peak_bytes": oom.peak_bytes, "breakdown": oom.breakdown}
        answer = Largest(
            value,
            candidates.low,
            candidates.high,
            candidates.step,
            card.key,
            tuple(probes),
            lost,
        )
        if value:
            record = fitted[value]
        else:  # not even the first candidate fits: its figures are where it failed
            oom = failed[candidates.low]
            record = Measurement(
                name=name,
                params=self.params,
                model_bytes=base,
                peak_bytes=max(oom.peak_bytes, base),
                setup=self.backend.context(),
                breakdown=oom.breakdown,
                card=card.key,
                card_note=card.unknown(),
            )
        record = dataclasses.replace(record, largest=answer)
        self.measurements.append(record)
        return answer

    def _probe(
        self, fn: Callable[[int], Any], value: int, name: str | None, step: str
    ) -> tuple[Measurement | None, OutOfMemory | None]:
        """``fn(value)`` measured from an empty cache: its measurement, or what ran out."""
        self.backend.empty_cache()
        before = self.out_of_memory
        try:
            _result, measurement = self._measure(fn, (value,), {}, name, step)
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
            oom, self.out_of_memory = self.out_of_memory, before  # caught: not the test's
        else:
            return measurement, None
        self._settle_autograd()
        return None, oom

    def _settle_autograd(self) -> None:
        """After a step that ran out of memory: one tiny backward on the device.

        A backward that fails leaves the rest of its graph's pending work (and the
        gradients buffered for it) in the autograd engine's device queue, which drops it
        only when it runs its next task: without this the next probe would start with
        those tensors still allocated."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        with self.backend.scope():
            x = torch.zeros(1, device=self.backend.device, requires_grad=True)
            x.sum().backward()

    def _check_build(
        self, step: str, result: Any, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        """A build step that counted no device bytes: if its result holds parameters or
        tensors elsewhere (the CPU), every later measurement of the test is wrong."""
        device = self.backend.device
        held = placement.survey([result], device)
        if held.on_device:
            self._built_on_device = True
        elif held.off_device and self.off_device_build is None:
            self.off_device_build = self._off_device(step, held, fn, [*args, *kwargs.values()])

    def _check_run(
        self, step: str, result: Any, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> OffDevice | None:
        """A workload that counted nothing on the device, with a model that holds nothing
        there: unless what it used lives on the device (in-place work on a model made
        before counting started), the figure is not the test's device memory."""
        if self._built_on_device:
            return None
        values = [*args, *kwargs.values()]
        held = placement.survey([*values, *placement.reachable(fn), result], self.backend.device)
        if held.on_device:
            return None
        return self._off_device(step, held, fn, values)

    def _off_device(
        self, step: str, held: placement.Held, fn: Callable[..., Any], values: list[Any]
    ) -> OffDevice:
        device = self.backend.device
        return OffDevice(
            step=step,
            device=device,
            backend=self.backend.name,
            params=held.params,
            tensors=held.tensors,
            elsewhere=tuple(sorted(held.elsewhere)),
            causes=placement.causes([fn], device, step, values),
        )

    def _reserved_peak(self) -> int | None:
        # Nothing is unmapped within a test (only empty_cache does that), so reserved memory
        # never falls and a nested step's reset cannot hide an earlier reserved peak.
        peak = self.backend.peak_reserved()
        if peak is None or self._reserved_start is None:
            return None
        return peak - self._reserved_start

    def repeat(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a workload again in the backend's scope without recording it: a timing round
        of pytest-benchmark. It waits for the device, so a round's time includes its work."""
        with self.backend.scope():
            result = fn(*args, **kwargs)
        self.backend.synchronize()
        return result

    def _reset_peak(self) -> None:
        if self._carried:  # inside a workload: keep the peak it reached so far
            self._carried[-1] = max(self._carried[-1], self.backend.peak())
        self.backend.reset_peak()

    def _call(self, step: str, held: int, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the backend's scope; running out of memory is recorded."""
        following = (
            self.attribution.following("build" if step.startswith("vram.build") else "run")
            if self.attribution
            else contextlib.nullcontext()
        )
        mark = self.attribution.collector.mark() if self.attribution else 0
        try:
            with self.backend.scope(), following:
                return fn(*args, **kwargs)
        except BaseException as exc:
            if is_out_of_memory(exc):
                peak = self.backend.peak() - self._start  # type: ignore[operator]
                card = self.backend.card_in_force()
                self.out_of_memory = OutOfMemory(
                    step,
                    held,
                    max(peak, held),
                    f"{type(exc).__name__}: {exc}".strip(),
                    self.attribution.collector.breakdown(mark) if self.attribution else None,
                    card=None
                    if card is None
                    else f"{card.key} ({card.name}, {card.total_memory} B)",
                )
                # The step's frames hold every tensor it made for as long as the traceback
                # lives, and pytest keeps it (sys.last_traceback): free them now.
                release_frames(exc.__traceback__)
            raise

    def close(self) -> None:
        """Detach attribution from the backend (:meth:`finish` does it for a started test)."""
        if self.attribution is not None:
            self.attribution.close()

    def finish(self) -> int:
        """Release what the test left, report what is still held, and end the test."""
        self.backend.collect_garbage()
        leaked = self._held()
        self.backend.end_test()
        if self.attribution is not None:
            self.attribution.close()
        self.measurements = [dataclasses.replace(m, leaked_bytes=leaked) for m in self.measurements]
        return leaked


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__
