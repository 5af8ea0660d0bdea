"""Known values of fake tensors (see :mod:`.values`): what a program's reads of them
answer exactly, where the values follow from the program alone."""

from pytest_vram.backends.estimate.known.values import KnownValues

__all__ = ["KnownValues"]
