"""Measurement backends, chosen by name and imported lazily (torch loads only here)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_vram.backends.base import Backend, BackendUnavailable
    from pytest_vram.backends.cards import Card

#: name -> "module:Class"; imported only when chosen, so unused backends cost nothing.
BUILTIN = {
    "cuda": "pytest_vram.backends.cuda:CudaBackend",
    "estimate": "pytest_vram.backends.estimate:EstimateBackend",
}
CHOICES = ("auto", *BUILTIN)
#: ``--vram-allocator`` values: which allocator figure the built-in backends measure.
#: "expandable" (default) is history-independent; "default" is the raw default-settings
#: figure, which depends on what ran before in the process (docs/architecture.md).
ALLOCATOR_MODES = ("expandable", "default")

__all__ = [
    "ALLOCATOR_MODES",
    "BUILTIN",
    "CHOICES",
    "Backend",
    "BackendUnavailable",
    "create",
    "resolve_name",
]


def __getattr__(name: str) -> Any:
    # Backend and BackendUnavailable on first use: the plugin reads the names above at
    # configure, and a run without vram tests never needs the base class.
    if name in ("Backend", "BackendUnavailable"):
        from pytest_vram.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_name(name: str) -> str:
    """Map ``auto`` to ``cuda`` where a GPU is visible, else to ``estimate``."""
    if name != "auto":
        return name
    import torch

    # the estimator's emulated card may be answering (--vram-emulate=session): it says so
    emulated = getattr(torch.cuda.is_available, "pytest_vram_emulated", False)
    return "cuda" if torch.cuda.is_available() and not emulated else "estimate"


def create(name: str, allocator: str = "expandable", card: Card | str | None = None) -> Backend:
    """Instantiate the backend called ``name`` (``auto``, a built-in, or ``module:Class``).

    ``allocator`` (one of ``ALLOCATOR_MODES``) and ``card`` (``backends.cards``: a name or a
    capacity such as ``"8GiB"``; None: the estimator answers as the H200 and nothing is
    capped) are passed to the built-in backends; a custom backend defines its own figure.
    """
    if allocator not in ALLOCATOR_MODES:
        raise ValueError(
            f"unknown allocator mode {allocator!r}: choose one of {', '.join(ALLOCATOR_MODES)}"
        )
    from pytest_vram.backends.base import Backend, BackendUnavailable

    name = resolve_name(name)
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown vram backend {name!r}: choose one of {', '.join(CHOICES)}, "
            "or give a custom backend as 'package.module:ClassName'"
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # ImportError, AttributeError, but also a SyntaxError in it
        raise ValueError(
            f"vram backend {name!r}: cannot import {target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(f"vram backend {target!r} is not a pytest_vram Backend subclass")
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise ValueError(
            f"vram backend {target!r} is abstract: implement {', '.join(abstract)} in a subclass"
        )
    try:
        if name not in BUILTIN:
            return cls()
        return cls(allocator=allocator) if card is None else cls(allocator=allocator, card=card)
    except BackendUnavailable:
        raise  # its own message says why and what to use instead
    except TypeError as exc:
        raise ValueError(
            f"vram backend {target!r} cannot be created without arguments: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"vram backend {target!r} failed when created: {type(exc).__name__}: {exc}"
        ) from exc
