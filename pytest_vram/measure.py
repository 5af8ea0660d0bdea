"""The Measurement record and the generic measuring logic shared by every backend.

``Meter`` counts everything from the start of a test: ``model_bytes`` is what is held
when a workload starts (the model and its inputs), ``peak_bytes`` the highest allocation
during the workload, ``leaked_bytes`` what is still held after the test's objects are
released. The backend only supplies counters and a scope (see ``backends.base``).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any, TypeVar

from pytest_vram.backends.base import Backend

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measured workload. All sizes are bytes counted from the start of the test."""

    name: str | None
    params: int | None
    model_bytes: int
    peak_bytes: int
    context: dict[str, str]
    leaked_bytes: int | None = None

    @property
    def activation_bytes(self) -> int:
        return self.peak_bytes - self.model_bytes


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

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.params: int | None = None
        self.measurements: list[Measurement] = []
        self._start: int | None = None

    def start(self) -> None:
        gc.collect()
        self.backend.begin_test()
        self.backend.synchronize()
        self._start = self.backend.allocated()

    def _held(self) -> int:
        if self._start is None:
            raise RuntimeError("Meter.start() was not called")
        self.backend.synchronize()
        return self.backend.allocated() - self._start

    def build(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a setup step (a model build) in the backend's scope; count its parameters."""
        with self.backend.scope():
            result = fn(*args, **kwargs)
        params = count_params(result)
        if params is not None:
            self.params = params if self.params is None else self.params + params
        return result

    def run(self, fn: Callable[..., T], *args: Any, name: str | None = None, **kwargs: Any) -> T:
        """Run a workload in the backend's scope and record its peak."""
        model_bytes = self._held()
        self.backend.reset_peak()
        with self.backend.scope():
            result = fn(*args, **kwargs)
        self.backend.synchronize()
        peak = self.backend.peak() - self._start  # type: ignore[operator]
        record = Measurement(
            name=name,
            params=self.params,
            model_bytes=model_bytes,
            peak_bytes=max(peak, model_bytes),
            context=self.backend.context(),
        )
        self.measurements.append(record)
        return result

    def finish(self) -> int:
        """Release what the test left, report what is still held, and end the test."""
        gc.collect()
        leaked = self._held()
        self.backend.end_test()
        self.measurements = [dataclasses.replace(m, leaked_bytes=leaked) for m in self.measurements]
        return leaked
