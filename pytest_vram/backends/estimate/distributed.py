"""Sharded training (FSDP2 ``fully_shard``, DDP) on fake CUDA tensors, one simulated rank.

A test simulates a world of N ranks with torch's fake process group (one process, no
GPU, collectives that move no data) and measures rank 0. What the estimator adds while its
scope is active (:func:`install`; :class:`~pytest_vram.backends.patching.Patches` restores
each replaced attribute on exit):

1. **Storage resizes are allocations.** FSDP2 keeps every unsharded parameter and its
   all-gather output as tensors whose storage it frees with ``storage.resize_(0)`` after
   use and re-allocates with ``storage.resize_(nbytes)`` before the next all-gather; a
   storage resize is no operator, so no dispatcher-level tracker sees it.
   ``alloc_storage``/``free_storage`` of ``_fsdp_param`` (and the name imported into
   ``_fsdp_param_group``) are wrapped to tell the allocator model. Every other FSDP2
   buffer (all-gather input and output, reduce-scatter input and output, the gradient
   shards) is an ordinary ``torch.empty`` that the fake mode already counts, so the
   figures carry the collectives' buffers exactly as FSDP2 allocates them.
2. **The device mesh is host data.** ``init_device_mesh`` builds its rank map with
   ``torch.arange`` on the CPU and reads it back with ``tolist()``, which a fake tensor
   cannot answer (``DataDependentOutputException: aten._local_scalar_dense``).
   ``DeviceMesh.__init__`` runs with the fake mode suspended; a rank tensor that
   ``init_device_mesh`` made under the fake mode (``torch.arange``) is rebuilt on the host.
3. **CUDA availability** (only where no GPU is usable). FSDP2 and DeviceMesh ask the
   device module (``torch.cuda``) for the current device, the device count, streams and
   events; a CPU-only torch asserts "Torch not compiled with CUDA enabled". Inside the
   scope ``_get_device_handle("cuda")`` returns :class:`_EmulatedCudaHandle` (one device,
   streams and events that order nothing: fake kernels run synchronously), and
   ``torch._C._get_accelerator`` answers CUDA, so the default mesh of ``fully_shard()`` is
   a CUDA mesh as on a GPU machine (``torch.accelerator.current_stream`` answers the
   emulated stream too).

Collectives on the fake process group allocate nothing themselves, as NCCL's do not
from the caching allocator's point of view (NCCL's own buffers live outside it).

One change stays for the process: DTensor's random-init operator is routed to the
estimator's fake-mode class (:func:`_route_dtensor_rng`; ``patching.PROCESS_WIDE``,
"dtensor-rng-redirect").
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._python_dispatch import _get_current_dispatch_mode

from pytest_vram.backends.base import BackendUnavailable
from pytest_vram.backends.estimate import torch_compat
from pytest_vram.backends.patching import Patches, install_for_process

#: The modules that bound ``_get_device_handle`` by name (FSDP2 and DeviceMesh).
_HANDLE_USERS = (
    "torch.distributed.device_mesh",
    "torch.distributed.fsdp._fully_shard._fsdp_collectives",
    "torch.distributed.fsdp._fully_shard._fsdp_init",
    "torch.distributed.fsdp._fully_shard._fsdp_param_group",
    "torch.distributed.fsdp._fully_shard._fsdp_state",
    "torch.distributed.tensor._random",
)


class _EmulatedStream:
    """A CUDA stream that orders nothing: fake kernels run synchronously."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.device = torch.device("cuda", 0)

    def wait_stream(self, stream: object) -> None:
        return None

    def wait_event(self, event: object) -> None:
        return None

    def record_event(self, event: object = None) -> _EmulatedEvent:
        return event if isinstance(event, _EmulatedEvent) else _EmulatedEvent()

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def is_capturing(self) -> bool:
        return False  # no CUDA graph is captured on the emulated device (optimizers ask)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EmulatedStream)

    def __hash__(self) -> int:
        return hash(_EmulatedStream)


class _EmulatedEvent:
    """A CUDA event that is always complete."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def record(self, stream: object = None) -> None:
        return None

    def wait(self, stream: object = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


_CURRENT_STREAM = _EmulatedStream()


def current_stream(device: object = None) -> _EmulatedStream:
    """``torch.accelerator.current_stream`` where no GPU is usable (``cuda_runtime``)."""
    return _CURRENT_STREAM


class _EmulatedCudaHandle:
    """What FSDP2 and DeviceMesh use of ``torch.cuda``, for one emulated GPU.

    Anything else is looked up on ``torch.cuda`` itself, so a use this handle does not
    cover fails as it would without the emulation.
    """

    Stream = _EmulatedStream
    Event = _EmulatedEvent

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def set_device(device: object) -> None:
        return None

    @staticmethod
    def current_stream(device: object = None) -> _EmulatedStream:
        return _CURRENT_STREAM

    @staticmethod
    def default_stream(device: object = None) -> _EmulatedStream:
        return _CURRENT_STREAM

    @staticmethod
    def synchronize(device: object = None) -> None:
        return None

    @staticmethod
    @contextlib.contextmanager
    def stream(stream: object) -> Iterator[None]:
        yield

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


_HANDLE = _EmulatedCudaHandle()


def _handle_for(original: Callable[..., Any]) -> Callable[..., Any]:
    def _get_device_handle(device_type: str = "cuda") -> Any:
        if device_type == "cuda":
            return _HANDLE
        return original(device_type)

    return _get_device_handle


def _cuda_accelerator() -> torch.device:
    return torch.device("cuda")


def _on_cuda(tensor: torch.Tensor) -> bool:
    return getattr(tensor, "fake_device", tensor.device).type == "cuda"


def _count_resizes(patches: Patches, tracker: Any) -> None:
    """Wrap FSDP2's storage alloc/free so the allocator model sees each resize."""
    # (here: torch.distributed's modules load only where a test starts a world)
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    original_alloc = _fsdp_param.alloc_storage
    original_free = _fsdp_param.free_storage

    def counted(original: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
        def resize(tensor: torch.Tensor) -> None:
            before = tensor.untyped_storage().nbytes()
            original(tensor)
            storage = tensor.untyped_storage()
            if storage.nbytes() != before and _on_cuda(tensor):
                tracker.resized(storage)

        return resize

    alloc_storage, free_storage = counted(original_alloc), counted(original_free)

    patches.set(_fsdp_param, "alloc_storage", alloc_storage)
    patches.set(_fsdp_param, "free_storage", free_storage)
    if getattr(_fsdp_param_group, "alloc_storage", None) is original_alloc:
        patches.set(_fsdp_param_group, "alloc_storage", alloc_storage)


def _mesh_on_host(patches: Patches) -> None:
    """Run ``DeviceMesh.__init__`` on real (host) tensors, see point 2."""
    from torch.distributed import device_mesh  # (as above)

    mesh_class = device_mesh.DeviceMesh
    original_init = mesh_class.__init__
    factory_code = device_mesh.init_device_mesh.__code__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # The rank tensor is ``_rank_map`` (torch >= 2.10) or ``mesh`` (earlier; also the
        # second positional argument).
        from_factory = sys._getframe(1).f_code is factory_code
        args = list(args)
        for name in ("_rank_map", "mesh"):
            if isinstance(kwargs.get(name), FakeTensor):
                kwargs[name] = _host_ranks(kwargs[name], from_factory)
        if len(args) > 1 and isinstance(args[1], FakeTensor):
            args[1] = _host_ranks(args[1], from_factory)
        with unset_fake_temporarily():
            original_init(self, *args, **kwargs)

    def _host_ranks(ranks: Any, from_factory: bool) -> torch.Tensor:
        if not from_factory:
            raise RuntimeError(
                "a DeviceMesh built from a tensor made inside vram.build/vram.run has "
                "unknown ranks under the estimator (fake tensors hold no values); use "
                "init_device_mesh(...), pass the ranks as a list, or build the mesh before "
                "the measured step"
            )
        # init_device_mesh's rank tensor is torch.arange(...) by construction.
        with unset_fake_temporarily():
            return torch.arange(ranks.numel(), dtype=ranks.dtype).view(tuple(ranks.shape))

    patches.set(mesh_class, "__init__", __init__)


def _rng_tracker_without_sync(patches: Patches) -> None:
    """DTensor's RNG tracker without its start-up state sync.

    ``OffsetBasedRNGTracker(mesh)`` broadcasts rank 0's RNG state and compares it with its
    own (``all(my_state == state)``), a value read that fake tensors cannot answer (on
    torch 2.11 with a GPU: "cannot run aten.is_nonzero"). In a simulated world the only
    rank is rank 0, the fake group's broadcast moves nothing, and the state is no CUDA
    memory: the sync is skipped (``run_state_sync=False``), nothing else changes.
    """
    try:  # (as above; a torch build without DTensor needs nothing here)
        from torch.distributed.tensor import _random
    except ImportError:
        return
    cls = getattr(_random, "OffsetBasedRNGTracker", None)
    if cls is None:
        return
    original = cls.__init__

    def init(self: Any, device_mesh: Any, run_state_sync: bool = True) -> None:
        original(self, device_mesh, run_state_sync=False)

    patches.set(cls, "__init__", init)


def _ddp_without_checks(patches: Patches) -> None:
    """DDP's start-up checks that read tensor data, which fake tensors have none of.

    ``DistributedDataParallel.__init__`` all-gathers every parameter's shape (C++ reads the
    values) and broadcasts rank 0's parameters. In a simulated world every rank is this
    process, so shapes agree and the broadcast copies nothing; the broadcast into the
    existing parameters allocates nothing on a GPU either (NCCL's own buffers are outside
    the caching allocator).
    """
    from torch.nn.parallel import distributed  # (as above)

    def _verify_param_shape_across_processes(*args: object, **kwargs: object) -> None:
        return None

    def _sync_module_states(*args: object, **kwargs: object) -> None:
        return None

    ddp = distributed.DistributedDataParallel
    original_init = ddp.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if torch.distributed.get_backend(self.process_group) == "fake":
            self.register_comm_hook(None, _fake_all_reduce)

    patches.set(
        distributed, "_verify_param_shape_across_processes", _verify_param_shape_across_processes
    )
    patches.set(distributed, "_sync_module_states", _sync_module_states)
    patches.set(ddp, "__init__", __init__)


def _fake_all_reduce(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's default all-reduce of one gradient bucket, on the fake process group.

    The fake group's work completes with no value, which DDP's built-in C++ hook rejects
    ("expected the hook result is either a Tensor or a TensorList found None"). NCCL
    all-reduces the bucket in place and the default hook divides it in place, so the
    bucket itself is the result and nothing is allocated. (No annotations: DDP checks
    them against the real classes, and this module's are strings.)
    """
    buffer = bucket.buffer()
    torch.distributed.all_reduce(buffer, group=state)
    buffer.div_(torch.distributed.get_world_size(state))
    future = torch.futures.Future()  # type: ignore[var-annotated]
    future.set_result(buffer)
    return future


def _emulated_cuda(patches: Patches) -> None:
    """Point 3: a CUDA device module for FSDP2 and DeviceMesh on a CPU-only torch."""
    for name in _HANDLE_USERS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "_get_device_handle"):
            original = module._get_device_handle
            patches.set(module, "_get_device_handle", _handle_for(original))
    patches.set(torch._C, "_get_accelerator", _cuda_accelerator)
    # torch.accelerator.current_stream: the emulated card's (cuda_runtime.install_device)


_REDIRECTED: set[type] = set()


def _route_dtensor_rng(mode_class: type) -> None:
    """Let DTensor's random-init operator reach the estimator's fake mode (a subclass).

    ``run_dtensor_rng_op`` (``nn.init`` on a sharded CUDA parameter) has a fake-tensor
    rule registered for ``FakeTensorMode`` itself; a higher-order operator finds rules by
    the mode's exact class, so without this it raises ``NotImplementedError`` for the
    estimator's subclass. Registering the same redirect for that class changes nothing else.
    """
    if mode_class in _REDIRECTED:
        return
    try:  # (here: a torch without the operator needs no routing)
        from torch._higher_order_ops.utils import redirect_to_mode
        from torch._prims.rng_prims import run_dtensor_rng_op
    except ImportError:  # a torch without the operator: DTensor init needs no routing
        _REDIRECTED.add(mode_class)
        return

    if mode_class not in run_dtensor_rng_op.python_key_table:
        redirect_to_mode(run_dtensor_rng_op, mode_class)
        install_for_process("dtensor-rng-redirect")
    _REDIRECTED.add(mode_class)


_internals_checked = False


def _check_internals() -> None:
    """The torch internals patched here, checked when a world first starts (their modules
    take about a second to import, which every estimator run would pay at creation)."""
    global _internals_checked
    problem = torch_compat.check_distributed()
    if problem is not None:
        raise BackendUnavailable(problem)
    _internals_checked = True


def world_initialized() -> bool:
    """Whether a default process group exists (the hooks have nothing to do otherwise)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def install(patches: Patches, tracker: Any, emulate: bool) -> None:
    """The changes above for one scope, where a default process group exists.

    ``tracker`` is the estimator's storage tracker (its ``resized(storage)`` re-counts a
    storage whose size changed); ``emulate`` adds the CUDA emulation of point 3. Called
    with the estimator's fake mode active (its class is the one DTensor's RNG operator is
    routed to).
    """
    if not world_initialized():
        return
    if not _internals_checked:
        _check_internals()
    mode = _get_current_dispatch_mode()
    if mode is not None:
        _route_dtensor_rng(type(mode))
    # (here: torch.distributed's modules load only where a test starts a world; the
    # handle users of point 3 must be imported before they are patched)
    import torch.distributed.device_mesh  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401

    _count_resizes(patches, tracker)
    _mesh_on_host(patches)
    _rng_tracker_without_sync(patches)
    _ddp_without_checks(patches)
    if emulate:
        _emulated_cuda(patches)
