"""The interface every measurement backend implements.

A backend knows how to read allocated bytes on one device and how to make a test's code
run there. The measuring logic (start point, model bytes, peak, leak) lives in
``pytest_vram.measure.meter`` and is the same for every backend; a backend only supplies the
counters and the scope in which the test's build step and workload run.

Contract (see docs/architecture.md):

* ``warmup()`` runs once per process before the first measurement and allocates whatever
  persistent state the device creates lazily (cuBLAS workspaces and the like), so that
  it never lands in a test's figures.
* ``scope()`` is entered around every build step and workload of a test. The CUDA backend
  needs nothing there; the estimator enters its fake-tensor mode. The same backend
  instance may enter and leave the scope several times within one test; objects made in
  one scope are usable in the next scope of the same test.
* ``begin_test()`` / ``end_test()`` bracket one test: begin releases cached, unused memory
  so that allocation history of earlier tests cannot change this test's rounding; end
  drops per-test state (the estimator's fake mode).
* ``test_scope()`` is entered around a whole vram test: before its function-scoped
  fixtures are set up, exited after they are torn down (so ``begin_test`` / ``end_test``
  and every ``scope()`` run inside it). The CUDA backend needs nothing there; the
  estimator runs the whole test on one emulated card (tensors, modules, optimizers,
  GradScalers, autocast, streams made anywhere in the test count as inside ``scope()``),
  makes ``scope()`` a no-op inside it, and its ``begin_test`` then releases the cache and
  restarts the peaks as the CUDA backend's does, keeping what the fixtures made.
* ``test_scope(card=...)`` (a backend with ``supports_cards``): the test runs on a declared
  card (``backends.cards``): an allocation the card could not serve raises torch's
  ``OutOfMemoryError`` (the estimator enforces the card's usable capacity; the CUDA
  backend caps a larger GPU with the allocator's per-process limit). The allocated figures
  do not depend on the card; ``card_in_force()`` says which card decides now.
* ``empty_cache()`` releases cached, unused memory between the probes of one question
  (``vram.largest``), so that each starts from the same cache.
* ``session_scope()`` is entered once the backend is created and exited at the session's
  end: the estimator makes CUDA work outside every vram test fail with the user's line
  and the fix (instead of torch's "Torch not compiled with CUDA enabled").
* ``visible_device_scope()`` (``--vram-emulate=session``): entered after ``session_scope``
  for the rest of the session; ``torch.cuda``'s identity queries (``is_available()``...)
  answer as the backend's device outside its tests too. A real GPU answers anyway; the
  estimator answers as its emulated card.
* ``wider_fixture_scope()`` is entered, inside ``test_scope()``, around the setup of a
  fixture of a wider scope than the test (module, class, package, session): what such a
  fixture makes on the host outlives the test. The estimator makes its CPU tensors real
  there (inside a test they are fake, without values), so a session-scoped dataset or a
  checkpoint saved with ``save_pretrained`` holds what the program computed.
* ``device_per_test``: CUDA tensors belong to one test's device (the estimator's emulated
  card, made for each ``test_scope()``), so none may outlive the test; the plugin refuses a
  wider-scoped fixture that keeps one.
* ``allocated()`` is the bytes allocated now, as the CUDA caching allocator counts them
  (``torch.cuda.memory_allocated``: block sizes after the allocator's rounding).
* ``reset_peak()`` makes ``peak()`` start again from ``allocated()``.
* ``peak()`` is the highest ``allocated()`` seen since the last ``reset_peak()``.
* ``reserved()`` / ``peak_reserved()`` (optional, None where unknown): the bytes the
  allocator holds from the driver now, and the highest since ``reset_peak()``;
  informational (fragmentation and page granularity included), gated only by a budget
  that asks for it.
* cuDNN convolution workspaces (optional; docs/estimator.md, "cuDNN convolution
  workspaces"): ``workspace_setup()`` names the GPU architecture and cuDNN version whose
  workspaces a backend measures or models (None: it has none). When the run updates
  baselines the session calls ``record_workspaces()``; a backend that can measure them
  (``cuda``) answers True and returns what it measured from ``recorded_workspaces()`` at
  the session's end, which the session merges into the project's file of that setup
  (``baselines/cudnn-workspaces/``). Otherwise, for a backend whose ``reads_workspaces``
  is True (the estimator), the session reads that file and hands its entries to
  ``use_workspaces()``: the estimator looks a convolution up there before its shipped
  table. A backend reads no file itself: the files are the store's (``pytest_vram.store``).

The gated figure: ``allocated()`` must count what the CUDA caching allocator counts with
``expandable_segments:True`` (every block split, so each live request counts exactly its
512-byte-rounded size), unless the backend was created with ``allocator="default"``.

All counters are absolute; ``measure`` subtracts the value at the start of the test.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import gc
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from pytest_vram.backends.patching import install_for_process, uninstall_for_process

if TYPE_CHECKING:
    from pytest_vram.backends.cards import Card

#: ``recorded_with: metric`` of each allocator mode: one definition for every backend.
METRICS = {
    "expandable": "peak allocated, expandable segments (sum of 512-B-rounded live requests)",
    "default": "peak allocated, default allocator settings (depends on allocation history)",
}


def metric_name(allocator: str) -> str:
    """The gated figure's name under ``allocator`` (``"expandable"`` or ``"default"``)."""
    return METRICS[allocator]


class Backend(abc.ABC):
    """A place where memory is measured: a real CUDA device or the estimator."""

    #: Short name used on the command line (``--vram-backend=NAME``) and in profiles.
    name: str = ""
    #: CUDA tensors made in a ``test_scope()`` belong to that test's device and cannot
    #: outlive it (the estimator); False: one device for the whole process (a GPU).
    device_per_test: bool = False
    #: ``test_scope(card=...)`` runs a test on a declared card (the estimator enforces its
    #: capacity, the cuda backend caps the GPU to it); False: a card cannot be declared.
    supports_cards: bool = False
    #: Whether the session hands this backend the project's recorded convolution
    #: workspaces (:meth:`use_workspaces`).
    reads_workspaces: bool = False

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The torch device string tests should build on, e.g. ``"cuda:0"``."""

    @abc.abstractmethod
    def profile(self) -> str:
        """Baseline profile name: numbers are only compared within one profile."""

    @abc.abstractmethod
    def context(self) -> dict[str, str]:
        """What makes a figure comparable: backend, device name, torch version, allocator."""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Allocate lazily created persistent state once per process."""

    def collect_garbage(self) -> None:
        """Free unreachable objects before the counters are read (start and end of a test).

        Tensors caught in reference cycles stay allocated until the cycle collector runs, so
        the default runs ``gc.collect()``: exact figures on a real device need it. A backend
        whose memory is never held by such cycles may skip it. See :func:`collect_garbage`
        for why a collection costs milliseconds, not a quarter of a second.
        """
        collect_garbage()

    def begin_test(self) -> None:  # noqa: B027 - optional hook
        """Prepare for a new test (release cached memory, fresh per-test state)."""

    def end_test(self) -> None:  # noqa: B027 - optional hook
        """Drop per-test state."""

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Context in which the test's build step and workload run."""
        yield

    def test_scope(
        self, card: Card | str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """Context around one whole vram test, fixtures included (default: nothing).

        ``card`` (only where ``supports_cards``): the test runs on that card, whose capacity
        decides where an allocation fails; the figures do not depend on it."""
        if card is not None:
            raise BackendUnavailable(f"vram backend {self.name!r} cannot run a declared card")
        return contextlib.nullcontext()

    def wider_fixture_scope(self) -> contextlib.AbstractContextManager[object]:
        """Context, inside ``test_scope()``, around the setup of a fixture of a wider scope
        than the test (default: nothing)."""
        return contextlib.nullcontext()

    def card_in_force(self) -> Card | None:
        """The card whose capacity decides where an allocation fails now, or None."""
        return None

    def empty_cache(self) -> None:  # noqa: B027 - optional hook
        """Release cached, unused device memory (``torch.cuda.empty_cache()``), so that the
        next step starts from the same cache whatever ran before it in the test."""

    def session_scope(self) -> contextlib.AbstractContextManager[object]:
        """Context from the backend's creation to the session's end (default: nothing)."""
        return contextlib.nullcontext()

    def visible_device_scope(self) -> contextlib.AbstractContextManager[object]:
        """Context in which ``torch.cuda``'s identity queries (``is_available()``,
        ``device_count()``, ``get_device_properties()``...) answer as this backend's device
        outside its tests too (default: nothing; a real GPU answers anyway)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait until queued device work is done, so counters are final."""

    @abc.abstractmethod
    def allocated(self) -> int:
        """Bytes allocated now (allocator-rounded)."""

    @abc.abstractmethod
    def reset_peak(self) -> None:
        """Restart peak tracking from the current allocation."""

    @abc.abstractmethod
    def peak(self) -> int:
        """Highest allocation since the last ``reset_peak``."""

    def reserved(self) -> int | None:
        """Bytes reserved from the device now, or None if this backend cannot tell."""
        return None

    def peak_reserved(self) -> int | None:
        """Highest ``reserved()`` since the last ``reset_peak``, or None."""
        return None

    def workspace_setup(self) -> dict[str, str] | None:
        """The cuDNN setup whose convolution workspaces this backend measures or models:
        ``{"arch": "sm90", "cudnn": "91900", ...}`` (more keys describe it: device,
        torch), or None (the default) where it has none."""
        return None

    def use_workspaces(self, entries: Mapping[str, int], source: str) -> None:  # noqa: B027
        """The convolution workspaces the project recorded for :meth:`workspace_setup`
        (call key -> transient bytes; empty where nothing was recorded) and the file that
        holds them, for messages. Default: ignored."""

    def record_workspaces(self) -> bool:
        """Measure the workspace of every convolution from now on (the run updates its
        baselines); False (the default) where this backend cannot."""
        return False

    def recorded_workspaces(self) -> dict[str, int]:
        """Call key -> transient bytes of the convolutions measured since
        :meth:`record_workspaces` (the largest where a call ran more than once)."""
        return {}


def collect_garbage() -> None:
    """A full collection, then everything that survives it frozen (``gc.freeze``).

    A full collection visits every object the process holds: with torch and transformers
    imported that is millions of objects, a large part of a second, and a measured test
    collects two or three times. After ``gc.freeze`` the
    collector skips the objects that were alive then, so the next collection visits only
    what was made since (the test's own objects: milliseconds). The figure does not change:
    what was alive at the freeze is alive at the next collection or was freed by reference
    counting (which freezing does not stop); only a *cycle* among frozen objects outlives
    its last reference, until a thaw (the plugin asks for one after each test module, with
    :func:`thaw_at_next_collection`, so what a module-scoped fixture drops is collected at
    the next measured test's start). Frozen garbage cannot be collected in the middle of a
    test either, so no automatic collection can free earlier tests' memory while a test is
    measured. The frozen generation stays for the process between tests
    (``patching.PROCESS_WIDE``, "gc-freeze").
    """
    global _thaw_pending
    if _thaw_pending:
        _thaw_pending = False
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    if not _exit_thaw:
        _exit_thaw.append(atexit.register(_thaw_for_nanobind))
    install_for_process("gc-freeze")


#: the exit hook, once registered
_exit_thaw: list[object] = []


def _thaw_for_nanobind() -> None:
    """At exit, where triton is loaded: thaw and collect, so that its extension finds no
    objects of its own alive when the interpreter finalizes.

    triton's bindings (nanobind) print "nanobind: leaked N instances!" and hundreds of
    lines more at exit for every object of theirs still alive then; objects in reference
    cycles that the freeze moved to the permanent generation are never collected, so
    every run that imported torch's compiler with triton installed (the ``compile``
    extra) would end with that report. A full collection at exit (about half a second
    with torch loaded) frees them; without triton nothing is done.
    """
    if "triton._C.libtriton" in sys.modules:
        gc.unfreeze()
        gc.collect()


#: a thaw asked for by :func:`thaw_at_next_collection`, done by the next collect_garbage
_thaw_pending = False


def thaw_at_next_collection() -> None:
    """Thaw at the start of the next :func:`collect_garbage`, not now.

    The next collection is then a full one, so a cycle among frozen objects that was
    dropped since is freed before the next measurement. Where no measurement follows (the
    end of the session, a run of plain tests after the last vram test) nothing is thawed:
    pytest's own collections at exit (five, in ``unraisableexception``) then visit only
    what was made after the last freeze, instead of every object of a process that
    imported torch.
    """
    global _thaw_pending
    _thaw_pending = True


def thaw_garbage() -> None:
    """Undo :func:`collect_garbage`'s freeze now: the next collection is a full one again."""
    global _thaw_pending
    _thaw_pending = False
    gc.unfreeze()
    uninstall_for_process("gc-freeze")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (e.g. ``cuda`` without a GPU)."""
