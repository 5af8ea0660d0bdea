"""The GPUs a measurement can be made for: named cards and declared capacities.

A :class:`Card` is what ``torch.cuda.get_device_properties`` reports for one GPU (name,
``total_memory``, compute capability, multiprocessor count) plus what the card holds
besides the caching allocator's pages, where that was measured:

* ``context_bytes``: the CUDA context, kernels and libraries (cuBLAS, cuDNN handles),
  outside the caching allocator (``benchmarks/device_overhead.py``);
* ``workspace_bytes``: the allocator pages the persistent workspaces occupy once the
  ``cuda`` backend's warm-up has run (cuBLAS/cuBLASLt of the forward stream and of
  autograd's thread), which no test counts but every test shares the card with.

A figure that was not measured is None, never a guess: a card with an unknown
``context_bytes`` says so wherever its capacity is used (:meth:`Card.unknown`).

The estimator follows :data:`DEFAULT` (the H200 its kernel models were measured on);
``Card.parse`` takes a name from :data:`CARDS` or a declared capacity such as ``"8GiB"``.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import re

from pytest_vram.core.units import UnitError, parse_size


class CardError(ValueError):
    """A card that cannot be parsed; the message lists what is accepted."""


@dataclasses.dataclass(frozen=True)
class Card:
    """One GPU as torch reports it, and what it holds outside a test's allocations."""

    #: ``torch.cuda.get_device_name()``
    name: str
    #: ``torch.cuda.get_device_properties().total_memory`` in bytes (cudaDeviceProp's
    #: ``totalGlobalMem``; ``mem_get_info()``'s total)
    total_memory: int
    major: int
    minor: int
    multi_processor_count: int
    #: CUDA context, kernels and libraries outside the caching allocator; None: not measured
    context_bytes: int | None = None
    #: allocator pages of the persistent workspaces after the warm-up; None: not measured
    workspace_bytes: int | None = None
    #: where the figures come from
    source: str = ""
    #: the key in :data:`CARDS`, or the capacity as declared
    key: str = ""

    @property
    def capability(self) -> tuple[int, int]:
        """``torch.cuda.get_device_capability()``."""
        return (self.major, self.minor)

    @property
    def architecture(self) -> Architecture:
        """The per-multiprocessor limits of the card's compute capability."""
        found = ARCHITECTURES.get(self.capability)
        if found is None:
            raise CardError(
                f"{self.name}: no architecture limits for compute capability "
                f"{self.major}.{self.minor}; known: "
                + ", ".join(f"{a}.{b}" for a, b in ARCHITECTURES)
            )
        return found

    @property
    def outside_bytes(self) -> int | None:
        """What the card holds besides a test's own allocator pages (context, libraries,
        persistent workspaces), or None where either part was not measured."""
        if self.context_bytes is None or self.workspace_bytes is None:
            return None
        return self.context_bytes + self.workspace_bytes

    @property
    def usable_bytes(self) -> int:
        """The most a test's allocator pages can reach on this card: the capacity minus
        what it holds outside the test, where measured (else the whole capacity)."""
        return self.total_memory - (self.outside_bytes or 0)

    @property
    def allocator_limit(self) -> int:
        """The most the whole caching allocator (persistent workspaces included) can map:
        the capacity minus the context where measured (else the whole capacity)."""
        return self.total_memory - (self.context_bytes or 0)

    def unknown(self) -> str | None:
        """Why this card's usable capacity is an upper bound, or None where it is measured."""
        if self.outside_bytes is not None:
            return None
        return (
            f"what {self.name} holds besides PyTorch's allocations (CUDA context, libraries, "
            "persistent workspaces) is not measured, so the whole capacity counts as usable "
            "and a real card runs out of memory earlier; measure it on the card with "
            "benchmarks/device_overhead.py"
        )

    def describe(self, usable: int | None = None) -> str:
        """The card as the estimator reports it (the header, the context): name and
        capacity, then the bytes a test may use where the capacity is enforced (``usable``),
        or that it is not (None)."""
        text = f"{self.name}, {self.total_memory} B ({self.total_memory / 1024**3:.2f} GiB)"
        if usable is None:
            return f"{text}, capacity not enforced"
        text += f", usable by a test {usable} B"
        unknown = self.unknown()
        return f"{text} ({unknown})" if unknown else text

    def with_capacity(self, total_memory: int, key: str) -> Card:
        """This card's properties with another capacity (a declared one)."""
        return dataclasses.replace(
            self,
            name=f"{_format(total_memory)} card (declared)",
            total_memory=total_memory,
            context_bytes=None,
            workspace_bytes=None,
            source=f"declared capacity {key!r}; other properties of {self.name}",
            key=key,
        )

    @classmethod
    def parse(cls, text: str | Card) -> Card:
        """A named card (``"h200"``, ``"a100-40gb"``...) or a declared capacity (``"8GiB"``)."""
        if isinstance(text, Card):
            return text
        if not isinstance(text, str) or not text.strip():
            raise CardError(_expected(text))
        named = CARDS.get(_slug(text))
        if named is not None:
            return named
        try:
            total = parse_size(text, what="card")
        except UnitError:
            raise CardError(_expected(text)) from None
        if total <= 0:
            raise CardError(_expected(text))
        return DEFAULT.with_capacity(total, text.strip())


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What ``torch.cuda.get_device_properties`` reports that one compute capability fixes:
    the limits of its multiprocessors. Compilers read them: Inductor splits a reduction
    into as many partial results as the card's multiprocessors and their threads can run
    at once, so these decide the size of a compiled reduction's intermediate buffer."""

    max_threads_per_multi_processor: int
    max_threads_per_block: int
    regs_per_multiprocessor: int
    warp_size: int
    shared_memory_per_block: int
    shared_memory_per_block_optin: int
    shared_memory_per_multiprocessor: int
    #: where the figures come from
    source: str


_GUIDE = "CUDA C++ Programming Guide, 'Technical Specifications per Compute Capability', for "

#: The limits of each compute capability a named card has, by ``(major, minor)``.
ARCHITECTURES: dict[tuple[int, int], Architecture] = {
    (9, 0): Architecture(2048, 1024, 65536, 32, 49152, 232448, 233472, _GUIDE + "9.0"),
    (8, 0): Architecture(2048, 1024, 65536, 32, 49152, 166912, 167936, _GUIDE + "8.0"),
    (8, 6): Architecture(1536, 1024, 65536, 32, 49152, 101376, 102400, _GUIDE + "8.6"),
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _format(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _expected(text: object) -> str:
    return (
        f"unknown card {text!r}: give one of {', '.join(CARDS)}, or a capacity such as "
        "'8GiB' (B, KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: powers of 1024)"
    )


_H200_DATA = "docs/data/device-overhead-h200.json (torch 2.11.0+cu130, CUDA 13.0)"

#: Named cards. ``total_memory`` is torch's figure for the card; where the project has not
#: measured a card, its figures are those published by others (the source says which) and
#: ``context_bytes``/``workspace_bytes`` are None.
CARDS: dict[str, Card] = {
    card.key: card
    for card in (
        Card(
            "NVIDIA H200",
            150_109_880_320,
            9,
            0,
            132,
            context_bytes=804_061_184,
            workspace_bytes=88_080_384,
            source=f"measured: {_H200_DATA}; 132 SMs as the reduction model's H200 logs",
            key="h200",
        ),
        Card(
            "NVIDIA H100 80GB HBM3",
            81_089 * 1024**2,
            9,
            0,
            132,
            source="not measured here: torch's repr of an H100 SXM (total_memory=81089MB, "
            "truncated to MiB; 81082 to 81090 MiB are reported, by driver)",
            key="h100-80gb",
        ),
        Card(
            "NVIDIA A100-SXM4-40GB",
            42_298_834_944,
            8,
            0,
            108,
            source="not measured here: CUDA deviceQuery of an A100-SXM4-40GB "
            "(42298834944 bytes, 108 multiprocessors)",
            key="a100-40gb",
        ),
        Card(
            "NVIDIA A100 80GB PCIe",
            81_049 * 1024**2,
            8,
            0,
            108,
            source="not measured here: cudaGetDeviceProperties of an A100 80GB PCIe "
            "(totalGlobalMem 81049 MiB, truncated)",
            key="a100-80gb",
        ),
        Card(
            "NVIDIA GeForce RTX 3080 Laptop GPU",
            8_191 * 1024**2,
            8,
            6,
            48,
            source="not measured here: torch's repr on that laptop GPU (total_memory=8191MB, "
            "truncated to MiB, so the card may hold up to 1 MiB more); the source report's "
            "'VRAM: 8.00 GB'",
            key="rtx3080-laptop",
        ),
    )
}

#: The card the estimator follows unless told otherwise: its kernel models (SDPA's choice,
#: cuDNN workspaces, reduction launches) were measured on it.
DEFAULT = CARDS["h200"]
