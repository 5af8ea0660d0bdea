"""A device given by its index (``.to(rank)``, ``device=0``) inside the estimator's scope.

torch resolves an integer device in C++, as that index of the accelerator this torch was
built for (``at::getAccelerator``); a CPU-only torch has none ("Cannot access accelerator
device when none is available"), whatever the emulated card answers in Python. Ordinary
code passes indices: DDP scripts move models and batches with ``.to(rank)``, accelerate's
``get_max_memory`` (behind ``device_map="auto"``) touches every device with
``torch.tensor([0], device=i)``, and transformers builds ``torch.device(i)`` from the
device map. Where the CUDA runtime is emulated, :func:`install` turns an index into
``cuda:<index>`` before torch parses it, for one scope:

* ``torch.device(<index>)``: inside the scope ``torch.device`` is a class whose call makes
  ``torch.device("cuda", <index>)`` for an index and every other device as torch does, and
  of which every real ``torch.device`` is an instance (``isinstance``, ``issubclass``);
  ``type(d) is torch.device`` is False there, and a device cannot be pickled by name;
* ``device=<index>`` of torch's factories (``torch.tensor``, ``zeros``, ``randn``...,
  looked up on ``torch`` when called) and of ``Tensor.new_*``;
* ``Tensor.to(<index>)``, ``Tensor.cuda(<index>)``, ``nn.Module.to(<index>)`` (its
  parsing, ``torch._C._nn._parse_to``) and so ``nn.Module.cuda(<index>)``.

A wrapper per entry point, not a ``TorchFunctionMode``: a mode would see every torch call
of the test (a fifth more time for a training step), where only these take a device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._device

from pytest_vram.backends.patching import Patches

_DEVICE = torch.device
#: torch's functions that take ``device=``, called as ``torch.<name>``
FACTORIES = (
    "tensor",
    "as_tensor",
    "asarray",
    "scalar_tensor",
    "empty",
    "empty_strided",
    "zeros",
    "ones",
    "full",
    "eye",
    "arange",
    "range",
    "linspace",
    "logspace",
    "rand",
    "randn",
    "randint",
    "randperm",
    "normal",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "randint_like",
    "tril_indices",
    "triu_indices",
)
#: ``Tensor`` methods that take ``device=``
NEW_METHODS = ("new_tensor", "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full")


def _cuda(index: object) -> object:
    """``cuda:<index>`` for an integer (not a bool), else ``index`` as it is."""
    if type(index) is int:
        return _DEVICE("cuda", index)
    return index


class _DeviceType(type):
    """The metaclass of the scope's ``torch.device``: calling it makes a real device (an
    index: of CUDA), and a real device is an instance of it."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs:
            return _DEVICE(_cuda(args[0]))
        return _DEVICE(*args, **kwargs)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _DEVICE)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _DEVICE)


class device(metaclass=_DeviceType):  # noqa: N801 - it stands for torch.device
    """``torch.device`` inside the scope (see the module docstring)."""


def _device_keyword(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def indexed(*args: Any, **kwargs: Any) -> Any:
        if type(kwargs.get("device")) is int:
            kwargs["device"] = _DEVICE("cuda", kwargs["device"])
        return fn(*args, **kwargs)

    return indexed


def _first_or_keyword(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(self, device, ...)`` or ``fn(self, device=...)`` with an index as CUDA's."""

    @functools.wraps(fn)
    def indexed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args and type(args[0]) is int:
            args = (_DEVICE("cuda", args[0]), *args[1:])
        if type(kwargs.get("device")) is int:
            kwargs["device"] = _DEVICE("cuda", kwargs["device"])
        return fn(self, *args, **kwargs)

    return indexed


def install(patches: Patches) -> None:
    """Integer devices as CUDA's, for one scope (see the module docstring)."""
    # ``with torch.device("cuda"):`` fills in the device of the factories it finds in a
    # set that torch computes once and caches: computed here, it holds torch's own
    # factories, which the wrappers below call, not the wrappers themselves.
    torch.utils._device._device_constructors()
    patches.set(torch, "device", device)
    for name in FACTORIES:
        original = getattr(torch, name, None)
        if original is not None:
            patches.set(torch, name, _device_keyword(original))
    for name in NEW_METHODS:
        patches.set(torch.Tensor, name, _device_keyword(getattr(torch.Tensor, name)))
    for name in ("to", "cuda"):
        patches.set(torch.Tensor, name, _first_or_keyword(getattr(torch.Tensor, name)))
    nn_module = torch._C._nn
    parse_to = nn_module._parse_to

    def _parse_to(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (_cuda(args[0]), *args[1:])
        if "device" in kwargs:
            kwargs["device"] = _cuda(kwargs["device"])
        return parse_to(*args, **kwargs)

    patches.set(nn_module, "_parse_to", _parse_to)
