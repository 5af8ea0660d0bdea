"""Measurement backends, chosen by name and imported lazily (torch loads only here)."""

from __future__ import annotations

import importlib

from pytest_vram.backends.base import Backend, BackendUnavailable

#: name -> "module:Class"; imported only when chosen, so unused backends cost nothing.
BUILTIN = {
    "cuda": "pytest_vram.backends.cuda:CudaBackend",
    "estimate": "pytest_vram.backends.estimate:EstimateBackend",
}
CHOICES = ("auto", *BUILTIN)

__all__ = ["Backend", "BackendUnavailable", "BUILTIN", "CHOICES", "create", "resolve_name"]


def resolve_name(name: str) -> str:
    """Map ``auto`` to ``cuda`` where a GPU is visible, else to ``estimate``."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "estimate"


def create(name: str) -> Backend:
    """Instantiate the backend called ``name`` (``auto``, a built-in, or ``module:Class``)."""
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
        return cls()
    except Exception as exc:
        raise ValueError(
            f"vram backend {target!r} cannot be created without arguments: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
