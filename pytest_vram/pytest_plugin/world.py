"""The process group of a test marked ``@pytest.mark.vram(world_size=N)``.

One rank of a sharded run (FSDP2 ``fully_shard``, DDP) is measured; where its world comes
from depends on the backend and on how pytest was started:

* **simulated** (a backend with ``simulates_ranks``, i.e. ``estimate``): a fake process
  group of ``N`` ranks in this one process (torch's ``fake`` backend: collectives move no
  data), created before the test's counting starts and destroyed after it; this process
  is rank 0.
* **launched** (``torchrun --nproc-per-node=N -m pytest ...``, which sets ``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; all but ``LOCAL_RANK`` are
  what the ``env://`` rendezvous needs, so a launch is recognised only with all of them
  consistent): every rank runs the same session on its own GPU
  (``LOCAL_RANK``); the default process group (NCCL on CUDA, gloo otherwise) is created at
  the first such test, kept for the session and destroyed at its end (a rank that exits
  with a live gloo group can abort in the interpreter's shutdown). Tests whose
  ``world_size`` differs from the launched world are skipped with the command that runs
  them.
* **in-process world of one** (not launched, ``N == 1``): a real one-rank process group
  (NCCL on CUDA, gloo otherwise) over a file store, created and destroyed around the test.
  ``N > 1`` without a launcher is skipped with the torchrun command.

torch is imported only when such a test runs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

#: NVLink multicast (NVLS) stays off: its buffers are allocated outside the caching
#: allocator, and not every machine supports multicast objects.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}


class WorldError(Exception):
    """The test's world cannot be set up as declared (the message says why and the fix)."""


#: What a launcher sets and the ``env://`` rendezvous reads (``LOCAL_RANK`` defaults to 0).
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world() -> tuple[int, int, int] | None:
    """(world size, rank, local rank) when a launcher (torchrun) started this process.

    Variables left in the environment (``WORLD_SIZE``/``RANK`` exported in a shell, a CI
    job's matrix) are no launch: without ``MASTER_ADDR``/``MASTER_PORT`` the rendezvous
    cannot happen, and inconsistent numbers are no world either; :func:`stray_launch`
    names them where it matters.
    """
    return _launch()[0]


def stray_launch() -> str | None:
    """Why the launch variables in the environment, if any, were not taken as a launch."""
    return _launch()[1]


def _launch() -> tuple[tuple[int, int, int] | None, str | None]:
    present = [v for v in (*LAUNCH_VARIABLES, "LOCAL_RANK") if v in os.environ]
    if not present:
        return None, None
    shown = ", ".join(f"{v}={os.environ[v]!r}" for v in present)
    missing = [v for v in LAUNCH_VARIABLES if not os.environ.get(v)]
    if missing:
        return None, f"{shown} are set but not {', '.join(missing)}: not a launched run"
    try:
        size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return None, f"{shown} are not whole numbers: not a launched run"
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        return None, f"{shown} are no consistent world: not a launched run"
    return (size, rank, local), None


def is_secondary_rank() -> bool:
    """Whether this is a launched rank other than 0 (it measures; rank 0 writes)."""
    launched = launched_world()
    return launched is not None and launched[0] > 1 and launched[1] != 0


def select_local_device() -> None:
    """Under a launcher, make ``LOCAL_RANK``'s GPU the current one before the backend starts."""
    launched = launched_world()
    if launched is None or launched[0] == 1:
        return
    for name, value in NCCL_ENV.items():
        os.environ.setdefault(name, value)
    import torch  # torch on use

    if torch.cuda.is_available():
        torch.cuda.set_device(launched[2] % torch.cuda.device_count())


def _describe(dist: Any) -> str:
    group = dist.distributed_c10d._get_default_group()
    return f"backend {dist.get_backend(group)!r}, world size {dist.get_world_size(group)}"


@contextlib.contextmanager
def simulated(world_size: int, nodeid: str) -> Iterator[None]:
    """A fake process group of ``world_size`` ranks, this process being rank 0."""
    import torch.distributed as dist  # torch on use
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise WorldError(
            f"{nodeid}: @pytest.mark.vram(world_size={world_size}) simulates its own world, "
            f"but a default process group exists already ({_describe(dist)}); let the "
            "marker create it (remove the test's init_process_group), or destroy the "
            "other one first"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        _destroy(dist)


def _destroy(dist: Any) -> None:
    # The test's sharded modules are garbage in reference cycles (FSDP's hooks); collected
    # after the group is destroyed, their tensors outlive them and would count as leaked.
    gc.collect()
    if dist.is_initialized():  # the test may have destroyed it itself
        dist.destroy_process_group()


def _real_backend() -> str:
    import torch  # torch on use

    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def launched(world_size: int, nodeid: str, session_end: contextlib.ExitStack) -> Iterator[None]:
    """This rank of the launched world; the default group is kept for the session and
    destroyed when ``session_end`` closes."""
    import torch.distributed as dist  # torch on use

    size, rank, _local = launched_world()  # type: ignore[misc]
    if world_size != size:
        pytest.skip(
            f"world_size={world_size}: this session runs a launched world of {size} ranks; "
            f"run it with `torchrun --nproc-per-node={world_size} -m pytest {nodeid}`"
        )
    if not dist.is_initialized():
        for name, value in NCCL_ENV.items():
            os.environ.setdefault(name, value)
        dist.init_process_group(_real_backend(), init_method="env://")
        session_end.callback(_destroy, dist)
    elif dist.get_world_size() != size:
        raise WorldError(
            f"{nodeid}: a default process group of another size exists ({_describe(dist)}); "
            f"the launched world has {size} ranks"
        )
    yield


@contextlib.contextmanager
def world_of_one(nodeid: str) -> Iterator[None]:
    """A real one-rank process group over a file store, around one test."""
    import torch.distributed as dist  # torch on use

    if dist.is_initialized():
        raise WorldError(
            f"{nodeid}: @pytest.mark.vram(world_size=1) creates its own one-rank process "
            f"group, but a default process group exists already ({_describe(dist)}); let the "
            "marker create it (remove the test's init_process_group)"
        )
    for name, value in NCCL_ENV.items():
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="pytest-vram-world-") as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group(_real_backend(), store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            _destroy(dist)


def open_world(
    world_size: int, simulates_ranks: bool, nodeid: str, session_end: contextlib.ExitStack
) -> Any:
    """The context manager that provides the test's process group (see the module doc);
    what must outlive the test (a launched world's group) is ended by ``session_end``."""
    if simulates_ranks:
        return simulated(world_size, nodeid)
    if launched_world() is not None:
        return launched(world_size, nodeid, session_end)
    if world_size == 1:
        return world_of_one(nodeid)
    stray = stray_launch()
    pytest.skip(
        f"world_size={world_size} runs one process per GPU; run it with "
        f"`torchrun --nproc-per-node={world_size} -m pytest {nodeid}` "
        "(or estimate it with --vram-backend=estimate)"
        + (f" ({stray}, so they are ignored)" if stray else "")
    )


def launched_ranks(world_size: int | None) -> int | None:
    """The launched world's size when a test of ``world_size`` ranks runs in it, else None."""
    launched = launched_world()
    if world_size is None or launched is None or launched[0] != world_size or world_size == 1:
        return None
    return world_size


def gather_figures(
    passed: bool, figures: list[tuple[int, int]]
) -> list[tuple[bool, list[tuple[int, int]]]]:
    """Every rank's (passed, [(model_bytes, peak_bytes) per measurement]), in rank order.

    Called by every rank after every call of a launched world test, passed or not, so
    that no rank waits for one that failed.
    """
    import torch.distributed as dist  # torch on use

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (passed, figures))
    return [(bool(p), [(int(a), int(b)) for a, b in f]) for p, f in gathered]


def worst_rank(
    gathered: list[tuple[bool, list[tuple[int, int]]]], index: int
) -> tuple[int, int, list[int]]:
    """(model_bytes, peak_bytes, peaks per rank) of measurement ``index``: the largest over
    the ranks, since the rank with the most memory is the one that must fit."""
    rows = [figures[index] for _passed, figures in gathered]
    return max(r[0] for r in rows), max(r[1] for r in rows), [r[1] for r in rows]
