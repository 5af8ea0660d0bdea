"""A backend whose counters the test drives: the plugin's whole lifecycle without a GPU.

Test files written by the pytester tests run with
``--vram-backend=vram_scripted:ScriptedBackend`` and allocate through the backend:
``block = vram.backend.alloc(100 * MiB)`` holds 100 MiB until ``block`` is released,
``vram.backend.spike(50 * MiB)`` raises the peak by 50 MiB and frees it again. With
``--vram-attribution=on`` the blocks are reported to the collector, so a measurement has a
breakdown (everything in ``(no module)``, ``inputs/other``). With
``vram.backend.capacity`` set, an allocation beyond it raises :class:`ScriptedOutOfMemory`
as torch raises ``torch.OutOfMemoryError`` on a full GPU. Where ``VRAM_SCRIPTED_EVENTS``
names a file, the backend appends a line to it whenever its test scope or session scope is
entered or left, and at every ``begin_test`` (the zero point), with the bytes allocated then.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from pytest_vram.backends.base import Backend

MiB = 1024**2
#: Persistent state the warm-up allocates once; it must never show in a test's figures.
WARMUP_BYTES = 32 * MiB


class ScriptedOutOfMemory(MemoryError):
    """What an allocation beyond ``ScriptedBackend.capacity`` raises."""


class Block:
    """Scripted memory: freed when the object goes away, like a tensor's storage."""

    def __init__(self, backend: ScriptedBackend, size: int) -> None:
        self.backend, self.size = backend, 0  # __del__ runs even if allocate raises
        backend.allocate(size)
        self.size = size
        if backend.observer is not None:
            backend.observer.allocated(id(self), size, op="scripted.alloc")

    def __del__(self) -> None:
        self.backend.allocate(-self.size)
        if self.backend.observer is not None and self.size:
            self.backend.observer.freed(id(self))


class ScriptedBackend(Backend):
    """Counts what tests allocate through it; the profile comes from VRAM_SCRIPTED_PROFILE."""

    name = "scripted"

    def __init__(self) -> None:
        self._allocated = 0
        self._peak = 0
        self.warmups = 0
        #: total bytes the scripted device holds; None: unlimited
        self.capacity: int | None = None
        self.persistent: list[Block] = []
        #: whether tests hold scripted memory in reference cycles (then gc runs per test)
        self.cycles = False
        #: the attribution's collector (``--vram-attribution=on``), told of every block
        self.observer = None

    def observe(self, observer) -> bool:
        """Report blocks to ``observer`` (None: stop), as the estimator reports storages."""
        self.observer = observer
        return True

    @property
    def device(self) -> str:
        return "scripted:0"

    def profile(self) -> str:
        return os.environ.get("VRAM_SCRIPTED_PROFILE", "scripted")

    def context(self) -> dict[str, str]:
        return {"backend": self.name, "device": "scripted", "torch": "none", "allocator": "default"}

    def warmup(self) -> None:
        self.warmups += 1
        self.persistent.append(Block(self, WARMUP_BYTES))

    def _event(self, what: str) -> None:
        path = os.environ.get("VRAM_SCRIPTED_EVENTS")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{what} {self._allocated // MiB}\n")

    @contextlib.contextmanager
    def test_scope(self) -> Iterator[None]:
        self._event("test-scope-enter")
        try:
            yield
        finally:
            self._event("test-scope-exit")

    @contextlib.contextmanager
    def session_scope(self) -> Iterator[None]:
        self._event("session-scope-enter")
        try:
            yield
        finally:
            self._event("session-scope-exit")

    def begin_test(self) -> None:
        self._event("begin-test")

    def collect_garbage(self) -> None:
        # Blocks are freed by reference counting; a test that builds a cycle says so with
        # vram.backend.cycles = True.
        if self.cycles:
            super().collect_garbage()

    def synchronize(self) -> None:
        pass

    def allocated(self) -> int:
        return self._allocated

    def reset_peak(self) -> None:
        self._peak = self._allocated

    def peak(self) -> int:
        return self._peak

    # -- what the scripted tests call ---------------------------------------------

    def allocate(self, size: int) -> None:
        if self.capacity is not None and self._allocated + size > self.capacity:
            free = self.capacity - self._allocated
            raise ScriptedOutOfMemory(
                f"out of memory. Tried to allocate {size / MiB:.2f} MiB; "
                f"{free / MiB:.2f} MiB free of {self.capacity / MiB:.2f} MiB"
            )
        self._allocated += size
        self._peak = max(self._peak, self._allocated)

    def alloc(self, size: int) -> Block:
        return Block(self, size)

    def spike(self, size: int) -> None:
        Block(self, size)  # allocated and released at once: only the peak moves


class RecordingBackend(ScriptedBackend):
    """A scripted backend with cuDNN convolution workspaces (``Backend.workspace_setup``).

    ``vram.backend.convolve(key, size)`` is a convolution whose workspace is ``size``: the
    peak moves by it, and while the run records (``--vram-update``) it is recorded under
    ``key``. ``known`` and ``source`` are what the session gave ``use_workspaces``.
    """

    reads_workspaces = True

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.recorded: dict[str, int] = {}
        self.known: dict[str, int] | None = None
        self.source: str | None = None

    def workspace_setup(self) -> dict[str, str]:
        return {"arch": "sm90", "cudnn": "91900", "device": "scripted", "torch": "none"}

    def use_workspaces(self, entries: Mapping[str, int], source: str) -> None:
        self.known, self.source = dict(entries), source

    def record_workspaces(self) -> bool:
        self.recording = True
        return True

    def recorded_workspaces(self) -> dict[str, int]:
        return dict(self.recorded)

    def convolve(self, key: str, size: int) -> None:
        self.spike(size)
        if self.recording:
            self.recorded[key] = max(size, self.recorded.get(key, 0))


class MeasuringBackend(RecordingBackend):
    """Records workspaces but never reads them, as the ``cuda`` backend."""

    reads_workspaces = False
