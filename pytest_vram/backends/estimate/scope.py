"""The estimator's scope: what is in force while a test's build step or workload runs.

:class:`Scope` enters, in order, the emulated CUDA runtime (where no GPU is usable:
:mod:`.cuda_runtime`), the changes below, the fake mode (:mod:`.fake_mode`), transformers'
reads of known values (:mod:`.transformers_support`) and sharded training on a fake
process group (:mod:`.distributed`). Every attribute any of them replaces is set through
one :class:`~pytest_vram.backends.patching.Patches`, restored exactly when the scope exits
(also by an exception); what stays for the process is listed in
``patching.PROCESS_WIDE``.

The changes made here, for fake tensors to behave as CUDA tensors do:

* ``copy.copy``/``copy.deepcopy`` of a fake tensor share or copy its storage;
* ``torch.utils.swap_tensors`` accepts a fake constant (``Module._apply``);
* ``torch.optim`` picks its foreach implementation for fake tensors, as for CUDA ones;
* a ``DataLoader`` draws its seed, and its order where the order decides no memory, on
  the host, and loads in the process (:mod:`.data_loading`);
* an RNN over CUDA tensors warns that cuDNN's RNN is not modelled (:class:`RNNNotModelled`).

``torch.compile``'d code compiled in the scope runs Inductor's program for the emulated
card on fake tensors (:mod:`.compiled`); a compile the estimate cannot follow is refused
with the user's line and the fix (``compiled.refusal_in``, ``refusals.compile_message``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorConverter
from torch.optim import optimizer as torch_optimizer

from pytest_vram.backends.cards import Card
from pytest_vram.backends.estimate import (
    compiled,
    cuda_runtime,
    data_loading,
    device_index,
    distributed,
    transformers_support,
)
from pytest_vram.backends.estimate.autograd_engine import settle_engine_threads
from pytest_vram.backends.estimate.fake_mode import EstimatingFakeMode
from pytest_vram.backends.estimate.kernels import convolution
from pytest_vram.backends.estimate.refusals import EstimateUnsupported, compile_message
from pytest_vram.backends.estimate.torch_compat import is_compile_failure
from pytest_vram.backends.estimate.tracker import StorageTracker
from pytest_vram.backends.patching import Patches


class RNNNotModelled(UserWarning):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on CUDA tensors: cuDNN's RNN is not modelled,
    so the estimate may be off in either direction."""


#: the sequence RNNs of ``torch._VF`` that a GPU runs as one cuDNN call
_RNN_FUNCTIONS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _report_rnns(patches: Patches, tracker: StorageTracker) -> None:
    """Inside the scope, an RNN over CUDA tensors warns (:class:`RNNNotModelled`).

    ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` call ``torch._VF.<mode>``, which on a GPU runs
    cuDNN's fused RNN (its weight buffer, workspace and training reserve space are sized by
    cuDNN). The estimate runs what this torch runs on fake tensors: without cuDNN (a
    CPU-only torch) the native cell-by-cell path; with it, cuDNN's weight flattening,
    which has no fake kernel (refused). The cells (``nn.LSTMCell``...) are the same fused
    CUDA kernels on both sides and are not reported.
    """
    vf = torch._VF

    def reporting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def rnn(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cuda":
                tracker.warn_once(
                    RNNNotModelled,
                    f"the estimate does not model cuDNN's RNN (torch._VF.{name}, which "
                    "nn.LSTM, nn.GRU and nn.RNN call): a GPU runs one cuDNN kernel with "
                    "its own workspace and training reserve space, which the estimate does "
                    "not count (it runs the cell-by-cell path, or fails where cuDNN's ops have "
                    "no fake kernel), so this test's figure may be off in either direction. "
                    "Fix: measure this "
                    "test with --vram-backend=cuda. Further RNN calls of this test are "
                    "not reported again.",
                )
            return original(*args, **kwargs)

        return rnn

    for name in _RNN_FUNCTIONS:
        patches.set(vf, name, reporting(name, getattr(vf.vf, name)))


def _shallow_copy(self: FakeTensor) -> torch.Tensor:
    """``copy.copy`` of a fake tensor: a new tensor on the same storage, as for a CUDA one.

    A real tensor pickles its storage, so ``copy.copy`` shares it; a fake tensor pickles as
    a storage-less wrapper subclass, which no allocation would ever account for.
    """
    out = self.detach()
    if self.requires_grad:
        out.requires_grad_(True)
    for key, value in self.__dict__.items():
        out.__dict__.setdefault(key, value)
    return out


def _deep_copy(self: FakeTensor, memo: dict[int, Any]) -> torch.Tensor:
    """``copy.deepcopy`` of a fake tensor: torch's own, without its data-pointer warning.

    ``Tensor.__deepcopy__`` asks a subclass for ``data_ptr()`` (0 for a fake tensor: it then
    clones), which warns; under ``-W error`` a plain ``copy.deepcopy(model)`` would fail.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        return torch.Tensor.__deepcopy__(self, memo)


def _copyable_fake_tensors(patches: Patches) -> None:
    """``copy.copy`` and ``copy.deepcopy`` of fake tensors as for CUDA tensors."""
    patches.set(FakeTensor, "__copy__", _shallow_copy)
    patches.set(FakeTensor, "__deepcopy__", _deep_copy)


def _swappable_constants(patches: Patches, converter: FakeTensorConverter) -> None:
    """``module.to()`` of a parameter made from ``torch.tensor(value)`` (CLIP's
    ``logit_scale``): the fake mode keeps such small real values as the fake tensor's
    ``constant`` and tracks its aliases through weak references, and
    ``torch.utils.swap_tensors`` (``Module._apply``) refuses a tensor with weak references
    ("Couldn't swap CLIPModel.logit_scale"). Inside the scope a fake tensor about to be
    swapped stops being a constant first (for every alias, as an in-place write would
    make it), which also drops the converter's memo entry of its value.
    """
    original = torch.utils.swap_tensors
    memo = converter.meta_converter

    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        for t in (t1, t2):
            constant = getattr(t, "constant", None) if isinstance(t, FakeTensor) else None
            if constant is not None:
                converter.invalidate_constant_aliases(constant)
                tid = memo.describer.lookup_tensor.get(constant)
                if tid is not None:
                    memo.tensor_memo.pop(tid, None)
        original(t1, t2)

    patches.set(torch.utils, "swap_tensors", swap_tensors)


def _optimizers_take_fake_tensors(patches: Patches) -> None:
    """Let ``torch.optim`` pick its default implementation for fake tensors as for CUDA ones.

    An optimizer built without ``foreach=`` asks ``_default_to_fused_or_foreach`` whether
    every tensor's exact type is ``Tensor`` or ``Parameter``; a fake tensor's is not, so on
    the estimator every default optimizer would run its for-loop implementation, which
    allocates one parameter's temporaries at a time, where CUDA runs the foreach one, which
    allocates them for all parameters at once (Adam's ``_foreach_sqrt`` of the second
    moments: one more copy of the parameters at the peak of a step).
    """
    supported = [*torch_optimizer._foreach_supported_types, FakeTensor]
    patches.set(torch_optimizer, "_foreach_supported_types", supported)


class Scope:
    """The estimator's scope: the CUDA emulation (if any), the changes, the fake mode.

    A class rather than a generator so that an :class:`EstimateUnsupported` reaches the
    test from a frame pytest hides, with its message (which names the user's line) and
    without torch's and the estimator's frames.
    """

    def __init__(
        self, mode: EstimatingFakeMode, emulate: bool, tracker: StorageTracker, card: Card
    ) -> None:
        self._mode = mode
        self._emulate = emulate
        self._tracker = tracker
        self._card = card
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        global _active
        with contextlib.ExitStack() as stack:
            compiled.dynamo_maps_torch_itself()
            patches = stack.enter_context(Patches())  # restored last, after the mode exits
            if self._emulate:
                cuda_runtime.install(patches)
                device_index.install(patches)
                # Every backward on the calling thread: the engine's device thread (which
                # the emulated CUDA guard makes it start) then never holds a task's state,
                # whose Python objects it would release while the interpreter finalizes.
                stack.enter_context(torch.autograd.set_multithreading_enabled(False))
            if self._tracker.workspaces is not None:
                patches.set(convolution, "project", self._tracker.workspaces)
            _copyable_fake_tensors(patches)
            _swappable_constants(patches, self._mode.fake_tensor_converter)
            _optimizers_take_fake_tensors(patches)
            data_loading.install(patches)
            stack.enter_context(self._mode)
            transformers_support.install(patches, self._mode.known)
            transformers_support.install_loading(patches)
            distributed.install(patches, self._tracker, self._emulate)
            _report_rnns(patches, self._tracker)
            if self._emulate:
                cuda_runtime.install_device(patches, self._card, self._tracker.allocator)
            compiled.install(patches, self._mode, self._card, self._tracker, self._emulate)
            cuda_runtime.enter_scope()
            stack.callback(cuda_runtime.leave_scope)
            self._stack = stack.pop_all()

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        self._stack.__exit__(typ, exc, tb)
        if self._emulate:
            settle_engine_threads()
        return _reraise(exc)


class Reentered:
    """A build step or workload inside a test that already runs in the estimator's scope
    (``EstimateBackend.test_scope``): nothing to enter; what the scope does with an
    exception on its way to the test is done here, at the step."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        return _reraise(exc)


def _reraise(exc: BaseException | None) -> bool:
    """Refusals reach the test with their own message, without torch's frames; so does a
    refusal made while compiling, which torch.compile wraps in its own errors."""
    __tracebackhide__ = True
    if exc is None:
        return False
    if isinstance(exc, EstimateUnsupported):
        raise EstimateUnsupported(str(exc)) from None
    refusal = compiled.refusal_in(exc)
    if refusal is not None:
        raise EstimateUnsupported(str(refusal)) from None
    if is_compile_failure(exc):
        raise EstimateUnsupported(compile_message(exc)) from None
    return False
