"""Per-operator memory log of one corpus workload, real (``cuda``) or estimated, to diff them.

Where ``benchmarks/corpus_accuracy.py`` says that an estimate is off, this says where: it
runs a workload of ``tests/vram/corpus_workloads.py`` (build, then the step) and records,
for every operator the step dispatches at the top level, its name, its outputs (shape and
dtype), the allocated bytes before and after it and the peak during it. On ``cuda`` a
``TorchDispatchMode`` does the logging (the GPU runs under ``expandable_segments:True``,
the gated figure's setting); on ``estimate`` the estimator's fake mode is wrapped, so the
two logs describe the same stream of operators.

    # on the GPU machine
    python benchmarks/diagnose_corpus.py --backend cuda --only t5-train-adafactor --out "$OUT"
    # here
    python benchmarks/diagnose_corpus.py --backend estimate --only t5-train-adafactor --out d
    python benchmarks/diagnose_corpus.py --compare d/A.json.gz "$OUT"/B.json.gz

``--compare`` prints the operators whose net allocation differs, summed per operator name,
and the first places where the two operator sequences part.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import gc
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))


def _outputs(out: Any) -> str:
    import torch

    parts = []
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor):
            parts.append(f"{str(t.dtype)[6:]}{list(t.shape)}")
    return " ".join(parts)


def _inputs(args: Any, kwargs: Any) -> str:
    """Tensor arguments as dtype[shape]/stride, other arguments as they are (short)."""
    import torch

    parts = []
    for a in [*args, *(kwargs or {}).values()]:
        items = a if isinstance(a, (list, tuple)) and len(a) <= 8 else [a]
        for t in items:
            if isinstance(t, torch.Tensor):
                parts.append(f"{str(t.dtype)[6:]}{list(t.shape)}/{list(t.stride())}")
            elif isinstance(t, (int, float, bool)) or t is None:
                parts.append(repr(t))
            else:
                parts.append(type(t).__name__)
    return " ".join(parts)[:400]


_BACKENDS: dict[str, Any] = {}


def _log(backend_name: str, name: str, size: str) -> dict[str, Any]:
    import torch
    from corpus_workloads import WORKLOADS

    from pytest_vram.backends import create

    backend = _BACKENDS.get(backend_name)
    if backend is None:
        backend = _BACKENDS[backend_name] = create(backend_name)
        backend.warmup()
    workload = WORKLOADS[name]
    _PRIM_DEVICE = torch.ops.prim.device.default
    ops: list[list[Any]] = []

    # Each log row: [operator, its outputs, allocated when it starts, peak since the row
    # before started]. A row's net allocation is the next row's start minus its own (what it
    # made, less what Python freed before the next operator), the same on both backends.
    if backend_name == "cuda":
        from torch.utils._python_dispatch import TorchDispatchMode

        class OpLog(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                if func is _PRIM_DEVICE:
                    return func(*args, **(kwargs or {}))
                _enter(str(func), torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
                out = func(*args, **(kwargs or {}))
                ops[-1][1] = _outputs(out)
                ops[-1].append(_inputs(args, kwargs))
                return out

        logging = OpLog
    else:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from pytest_vram.backends.estimate import fake_mode as estimate

        def alloc() -> Any:  # begin_test makes a fresh allocator model
            return backend._allocator  # type: ignore[attr-defined]

        # The base class's dispatch, which the estimator's mode calls (nesting depth 1 for an
        # operator the program dispatches) after its own checks of the calling frames: its
        # ``dispatch``, not ``__torch_dispatch__`` (a counter and a Dynamo wrapper around
        # it, which the estimator skips).
        original = getattr(FakeTensorMode.dispatch, "_original", None)
        original = original or FakeTensorMode.dispatch

        def dispatch(self: Any, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            top = (
                logging_on[0]
                and func is not _PRIM_DEVICE
                and isinstance(self, estimate.EstimatingFakeMode)
                and getattr(self._nesting, "depth", 0) == 1
            )
            if top:
                a = alloc()
                _enter(str(func), a.allocated, a.peak)
                a.peak = a.allocated
                row = ops[-1]
            out = original(self, func, types, args, kwargs)
            if top:
                row[1] = _outputs(out)
                row.append(_inputs(args, kwargs))
            return out

        dispatch._original = original  # type: ignore[attr-defined]
        FakeTensorMode.dispatch = dispatch  # type: ignore[method-assign]
        logging_on = [False]

        class _On:
            def __enter__(self) -> None:
                logging_on[0] = True

            def __exit__(self, *exc: Any) -> None:
                logging_on[0] = False

        logging = _On  # type: ignore[assignment]

    def _enter(name: str, allocated: int, peak_since: int) -> None:
        if ops:
            ops[-1][3] = peak_since
        ops.append([name, "", allocated, allocated])

    gc.collect()
    backend.begin_test()
    started = time.perf_counter()
    with backend.scope():
        torch.manual_seed(0)
        start = backend.allocated()
        model = workload.build(size, backend.device)
        backend.synchronize()
        model_bytes = backend.allocated() - start
        with logging():
            out = workload.work(model, size, backend.device)
        backend.synchronize()
        _enter("(end)", backend.allocated(), backend.peak())
        del model, out
    backend.end_test()
    peak = max((op[3] for op in ops), default=start) - start
    return {
        "backend": backend_name,
        "workload": name,
        "size": size,
        "torch": torch.__version__,
        "start": start,
        "model_bytes": model_bytes,
        "peak_bytes": peak,
        "seconds": round(time.perf_counter() - started, 2),
        "ops": ops,
    }


# -- comparing two logs ---------------------------------------------------------------------
def _net(ops: list[list[Any]]) -> None:
    """Make each row [operator, outputs, start, peak since, net, inputs]: net is the next
    row's start minus its own."""
    for k, op in enumerate(ops):
        inputs = op[4] if len(op) > 4 else ""
        del op[4:]
        op.extend([ops[k + 1][2] - op[2] if k + 1 < len(ops) else 0, inputs])


def compare(a_path: str, b_path: str, limit: int = 25) -> str:
    logs = []
    for p in (a_path, b_path):
        with gzip.open(p, "rt") as f:
            logs.append(json.load(f))
    a, b = logs
    lines = [
        f"A {a['backend']} {a['workload']} model {a['model_bytes']:,} peak {a['peak_bytes']:,} "
        f"ops {len(a['ops'])}",
        f"B {b['backend']} {b['workload']} model {b['model_bytes']:,} peak {b['peak_bytes']:,} "
        f"ops {len(b['ops'])}",
        f"peak B-A {b['peak_bytes'] - a['peak_bytes']:+,}",
        "",
        "net allocation per operator name (B - A), largest first:",
    ]
    net: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for i, log in enumerate((a, b)):
        _net(log["ops"])
        for op in log["ops"]:
            net[op[0]][i] += op[4]
            net[op[0]][2 + i] += 1
    rows = sorted(net.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))
    for name, (na, nb, ca, cb) in rows[:limit]:
        if na != nb or ca != cb:
            lines.append(f"  {name:60} A {na:>16,} ({ca}x)  B {nb:>16,} ({cb}x)  {nb - na:+,}")
    # Where each run peaks.
    for tag, log in (("A", a), ("B", b)):
        ops = log["ops"]
        if ops:
            i = max(range(len(ops)), key=lambda k: ops[k][3])
            lines.append(f"{tag} peaks at op {i}: {ops[i][0]} {ops[i][1]}")
    # Where the sequences part.
    sm = difflib.SequenceMatcher(
        a=[o[0] for o in a["ops"]], b=[o[0] for o in b["ops"]], autojunk=False
    )
    shown = 0
    lines.append("")
    lines.append("where the operator sequences part (first blocks):")
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        lines.append(f"  {tag} A[{i1}:{i2}] B[{j1}:{j2}]")
        for op in a["ops"][i1 : min(i2, i1 + 4)]:
            lines.append(f"    A {op[0]} {op[1]} {op[4]:+,}")
        for op in b["ops"][j1 : min(j2, j1 + 4)]:
            lines.append(f"    B {op[0]} {op[1]} {op[4]:+,}")
        shown += 1
        if shown >= 12:
            break
    # Matched operators whose net allocation differs (the first ones).
    lines.append("")
    lines.append("matched operators with a different net allocation (first 30):")
    shown = 0
    for tag, i1, i2, j1, _j2 in sm.get_opcodes():
        if tag != "equal":
            continue
        for k in range(i2 - i1):
            oa, ob = a["ops"][i1 + k], b["ops"][j1 + k]
            da, db = oa[4], ob[4]
            ta, tb = oa[3] - oa[2] - max(da, 0), ob[3] - ob[2] - max(db, 0)
            if da != db or ta != tb:
                lines.append(
                    f"  A[{i1 + k}] {oa[0]} {oa[1]} | net A {da:+,} B {db:+,} | "
                    f"transient A {ta:+,} B {tb:+,}"
                )
                shown += 1
                if shown >= 30:
                    break
        if shown >= 30:
            break
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("cuda", "estimate"), default="cuda")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--size", default="realistic", choices=("small", "realistic"))
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        print(compare(*args.compare))
        return 0
    if args.backend == "cuda":
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [n for n in args.only.split(",") if n]:
        data = _log(args.backend, name, args.size)
        path = out / f"ops-{name}-{args.size}-{args.backend}.json.gz"
        with gzip.open(path, "wt") as f:
            json.dump(data, f, separators=(",", ":"))
        print(
            f"{name} {args.backend}: model {data['model_bytes']:,} peak {data['peak_bytes']:,} "
            f"ops {len(data['ops'])} ({data['seconds']} s)",
            flush=True,
        )
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
