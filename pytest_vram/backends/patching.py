"""How the backends change torch: for one scope, restored exactly, or listed here for good.

The estimator runs user code on fake tensors by replacing functions and classes of torch
(and of transformers) while its scope is active. Every such replacement goes through
:class:`Patches`, which records what it replaced and restores exactly that when the scope
exits, also when it exits by an exception.

A few changes cannot be confined to a scope. :data:`PROCESS_WIDE` lists every one of
them with the reason; each is made through :func:`install_for_process`, which refuses a
name the list does not declare, so :func:`installed_for_process` is what a process holds
after its vram tests and nothing else is left behind. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

#: marks an attribute the owner did not hold itself (inherited, or answered by a module's
#: ``__getattr__``): restoring it deletes the replacement
_ABSENT = object()


class Patches:
    """Attributes replaced for one scope, restored exactly on exit (a context manager).

    :meth:`set` records what the owner held under the name in its own ``__dict__`` (the
    raw object: a ``staticmethod`` stays one) or that it held nothing there, then installs
    the replacement. :meth:`restore` (``__exit__``) puts back each original, or deletes the
    replacement where there was none, newest first, so nested scopes unwind in order.
    :meth:`on_restore` adds an undo step that is not an attribute (a finder taken out of
    ``sys.meta_path``), run in the same order.
    """

    __slots__ = ("_undo",)

    def __init__(self) -> None:
        #: (owner, name, original) per replacement; (None, "", step) per undo step
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: object) -> None:
        """Replace ``owner.name`` by ``value`` until :meth:`restore`."""
        original = vars(owner).get(name, _ABSENT)
        setattr(owner, name, value)
        self._undo.append((owner, name, original))

    def on_restore(self, step: Callable[[], object]) -> None:
        """Run ``step`` at :meth:`restore`, in reverse order with the replacements."""
        self._undo.append((None, "", step))

    def restore(self) -> None:
        """Undo everything, newest first; every step runs even if an earlier one fails."""
        undo, self._undo = self._undo, []
        error: BaseException | None = None
        for owner, name, original in reversed(undo):
            try:
                if owner is None:
                    original()
                elif original is _ABSENT:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
            except Exception as exc:  # noqa: BLE001 - the others are restored first
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> Patches:
        return self

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


@dataclass(frozen=True)
class ProcessWide:
    """One change that stays for the rest of the process once made."""

    name: str
    #: the module that makes it
    made_by: str
    what: str
    why: str


#: Every change a backend leaves in the process. Nothing else outlives a scope.
PROCESS_WIDE = (
    ProcessWide(
        "gc-freeze",
        "backends.base.collect_garbage",
        "objects alive at a test's start and end moved to the permanent generation "
        "(gc.freeze), on every backend",
        "a full collection of a process holding torch visits millions of objects; frozen, "
        "the next one visits only the test's own. The plugin thaws after each test module "
        "(thaw_at_next_collection), so the next measured test collects what it dropped; "
        "where triton is loaded, once more at exit (its bindings report every object of "
        "theirs still alive when the interpreter finalizes).",
    ),
    ProcessWide(
        "cuda-expandable-segments",
        "backends.cuda",
        "the CUDA caching allocator switched to expandable_segments:True",
        "the setting defines the gated figure: the allocator reads it at every block "
        "split, for the whole process (docs/architecture.md, 'The gated figure').",
    ),
    ProcessWide(
        "cuda-current-device",
        "backends.cuda",
        "torch.cuda.set_device(the measured GPU)",
        "a workload that says plain 'cuda' must allocate on the GPU that is measured.",
    ),
    ProcessWide(
        "cuda-device-guard",
        "backends.estimate.autograd_engine",
        "a no-op CUDA device guard in c10's device-guard registry (CPU-only torch)",
        "the registry holds one guard per device type for the process and has no way to "
        "unregister one; autograd's device thread, started by the first backward on a fake "
        "CUDA tensor, asks it at every later backward. Without a GPU no real CUDA tensor "
        "exists, so nothing but a fake tensor ever reaches it.",
    ),
    ProcessWide(
        "sdpa-math-kernel",
        "backends.estimate.sdpa_choice",
        "a kernel for aten::_scaled_dot_product_attention_math on the AutogradCUDA key "
        "(CPU-only torch)",
        "a fake CUDA tensor made in a scope can run attention after it (a backward, a "
        "recomputed checkpoint, on autograd's own thread). Outside a scope the kernel runs "
        "the math decomposition, which is what torch runs there without it, and only CUDA "
        "tensors reach it, of which a CPU-only torch has none but fake ones.",
    ),
    ProcessWide(
        "missing-meta-kernels",
        "backends.estimate.kernels.missing_meta",
        "Meta kernels for aten operators that torch runs on CUDA but gives none "
        "(_thnn_fused_gru_cell and its backward), only where torch lacks them",
        "they act on meta tensors alone (no real computation changes) and make an "
        "operator runnable that otherwise fails on every fake tensor, also after a scope.",
    ),
    ProcessWide(
        "compiled-wrappers",
        "backends.estimate.compiled",
        "the C++ helpers of every Inductor wrapper module loaded inside an estimator scope "
        "(empty_strided_cuda, reinterpret_tensor, alloc_from_pool, ...) rebound to "
        "dispatching equivalents",
        "torch keeps a compiled program (Dynamo's cache on the code object, Inductor's "
        "loaded modules) for the process, and a later call of the same compiled code runs "
        "the same module. It was generated inside a scope with kernels that do nothing, "
        "for fake tensors: without a GPU nothing else can run it.",
    ),
    ProcessWide(
        "dynamo-skips-the-estimator",
        "backends.estimate.compiled",
        "the estimator's functions that C++ calls (its fake mode's __torch_dispatch__, the "
        "release callbacks of dying storages, the SDPA kernel) given Dynamo's 'skip this "
        "frame and every frame it calls' execution strategy",
        "where compiled code breaks its graph, Dynamo runs the rest eagerly with its frame "
        "callback set and would try to trace every Python frame C++ enters there. The "
        "strategy lives on the estimator's own code objects, cannot be taken back while "
        "Dynamo caches it, and is read only while Dynamo's callback is set: eager code pays "
        "nothing (torch's own guard, a wrapper per dispatch, costs every operator).",
    ),
    ProcessWide(
        "dtensor-rng-redirect",
        "backends.estimate.distributed",
        "DTensor's random-init operator (run_dtensor_rng_op) routed to the estimator's "
        "fake-mode class, as torch routes it to FakeTensorMode",
        "a higher-order operator's rules are registered per mode class with no way to "
        "remove one; the rule is keyed by the estimator's own class, so it acts in no other "
        "mode.",
    ),
)
_DECLARED = {entry.name: entry for entry in PROCESS_WIDE}
_installed: set[str] = set()


def install_for_process(name: str) -> None:
    """Record that the change ``name`` of :data:`PROCESS_WIDE` is now made."""
    if name not in _DECLARED:
        raise ValueError(
            f"{name!r} is not declared in pytest_vram.backends.patching.PROCESS_WIDE: "
            "declare it there with the reason, or make the change through Patches"
        )
    _installed.add(name)


def uninstall_for_process(name: str) -> None:
    """Record that the change ``name`` was undone (a thawed ``gc.freeze``)."""
    _installed.discard(name)


def installed_for_process() -> frozenset[str]:
    """The changes of :data:`PROCESS_WIDE` this process holds now."""
    return frozenset(_installed)
