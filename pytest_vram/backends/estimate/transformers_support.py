"""What the estimator does for transformers, which treats fake tensors as "tracing".

transformers asks ``is_tracing(t)`` before reading a tensor's values (is an attention mask
all ones?), and counts a fake tensor as tracing (``is_fake_tensor``): it then takes the
path an export needs, which is not the path the GPU run takes (it builds a mask the GPU
run drops). Inside the estimator's scope, :func:`install` makes ``is_fake_tensor``
answer False for fake tensors whose value the estimator knows (:mod:`.known`), so
transformers reads exactly the values that can be answered, and lets ``from_pretrained``
load a checkpoint onto the emulated card (:func:`install_loading`).
:func:`value_dependent_hint` adds the fix to the estimator's error where transformers'
generation loop reads generated tokens. Generic: nothing here knows a model.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.abc
import importlib.machinery
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from pytest_vram.backends.estimate.known import KnownValues
from pytest_vram.backends.patching import Patches


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Calls ``patch(module)`` right after the module ``name`` is first imported."""

    def __init__(self, name: str, patch: Callable[[Any], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, self.patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)


_TRANSFORMERS_IMPORT_UTILS = "transformers.utils.import_utils"


def install(patches: Patches, known: KnownValues, module: str = _TRANSFORMERS_IMPORT_UTILS) -> None:
    """Let transformers read a fake tensor's values where they are known, for one scope.

    transformers' ``is_tracing(t)`` counts a fake tensor as tracing (``is_fake_tensor``)
    and then never asks whether, e.g., an all-ones attention mask is all ones, so it builds
    a mask that the GPU run drops. Here ``is_fake_tensor`` answers False for a fake tensor
    whose value is known: transformers then reads only values :mod:`.known` answers
    exactly; for every other tensor it keeps its tracing path. Installed when transformers
    is imported, now or later inside the scope (a finder on ``sys.meta_path`` for the
    scope); ``patches`` restores both. A transformers without ``is_fake_tensor`` is left
    alone. ``module``: the module to patch (tests). Why this is sound for every
    ``is_tracing`` call of transformers 5.17: docs/estimator.md, "Known values".
    """
    patched: set[Any] = set()  # the modules patched (once each)

    def patch(target: Any) -> None:
        original = getattr(target, "is_fake_tensor", None)
        if original is None or target in patched:
            return

        def is_fake_tensor(x: object) -> bool:
            return bool(original(x)) and not known.is_known(x)

        patched.add(target)
        patches.set(target, "is_fake_tensor", is_fake_tensor)

    _when_imported(patches, module, patch)


_TRANSFORMERS_LOADING = "transformers.core_model_loading"


class _CallingThreadExecutor(concurrent.futures.Executor):
    """A ``ThreadPoolExecutor`` that runs each job at ``submit``, on the calling thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - re-raised by future.result()
            future.set_exception(exc)
        return future


def install_loading(patches: Patches, module: str = _TRANSFORMERS_LOADING) -> None:
    """Let ``from_pretrained`` load a checkpoint onto the emulated card, for one scope.

    transformers 5 materialises the checkpoint's tensors in a thread pool
    (``core_model_loading``: ``tensor[...]`` of a safetensors slice, then
    ``.to(device, dtype)``). The fake mode is a thread-local dispatch mode, so in the
    pool's threads ``.to("cuda")`` would be real CUDA work; the jobs run on the calling
    thread instead, in the order they are submitted (what the GPU's threads leave
    allocated is the same: one tensor per parameter). A safetensors slice builds its tensor
    on a storage of the file's bytes, which a fake tensor cannot take: it is read on the
    host for real (the checkpoint's bytes, as the GPU run reads them), and its move to the
    device is fake and counted. ``module``: the module to patch (tests); installed when it
    is imported, now or later inside the scope; a transformers without these functions is
    left alone.
    """

    def patch(target: Any) -> None:
        original = getattr(target, "_materialize_copy", None)
        if original is None or not hasattr(target, "ThreadPoolExecutor"):
            return

        def _materialize_copy(tensor: Any, device: Any = None, dtype: Any = None) -> Any:
            if not isinstance(tensor, torch.Tensor):  # a slice of the checkpoint file
                with unset_fake_temporarily():
                    tensor = tensor[...]
            return original(tensor, device, dtype)

        patches.set(target, "ThreadPoolExecutor", _CallingThreadExecutor)
        patches.set(target, "_materialize_copy", _materialize_copy)

    _when_imported(patches, module, patch)


def _when_imported(patches: Patches, module: str, patch: Callable[[Any], None]) -> None:
    """``patch(module)`` now if it is imported, else when it is, while the scope lasts."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        patch(loaded)
        return
    finder = _PatchOnImport(module, patch)
    sys.meta_path.insert(0, finder)
    patches.on_restore(functools.partial(_remove_finder, finder))


def _remove_finder(finder: _PatchOnImport) -> None:
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


_GENERATION_DIR = os.path.join("transformers", "generation", "")
_TRANSFORMERS_DIR = os.path.join("transformers", "")


def value_dependent_hint(frames: list[traceback.FrameSummary]) -> str | None:
    """The fix for a value-dependent read inside transformers' generation loop, if it is.

    ``generate`` stops when every sequence has produced ``eos_token_id``: whether it does
    depends on the generated tokens, which fake tensors do not have. Without an EOS token
    the loop runs exactly ``max_new_tokens`` steps, and every stopping check it makes is
    answered by the known values (docs/estimator.md, "Known values"). Only a read in
    generation's own code gets this fix: a read in the model or its mask builders that
    ``generate`` called is about something else.
    """
    inner = next((f for f in frames if _TRANSFORMERS_DIR in f.filename), None)
    if inner is None or _GENERATION_DIR not in inner.filename:
        return None
    return (
        "transformers' generation reads the generated tokens here (its stopping check: has "
        "every sequence produced eos_token_id?). Pass eos_token_id=None to generate (or a "
        "GenerationConfig without one): it then runs exactly max_new_tokens steps, the "
        "most memory the call can use, and the estimate backend can follow it"
    )
