"""Run the memory suite in several orders, each in a fresh pytest process, and compare.

Shared by the GPU proof (tests/cuda/test_order_independence.py) and its estimator twin
(tests/estimate/test_estimate_order.py). Each run is strict (``CI=true``) against the
committed baselines and writes ``--vram-json``; the gated figures of every run must equal
those of the collected order to the byte.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITE = "tests/vram/test_zoo.py"
#: the gated figures, which must agree to the byte in every order
GATED = ("model_bytes", "peak_bytes")


def pytest_run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` in the repository, strict (CI=true), in a fresh process."""
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def collect(*select: str) -> list[str]:
    """The node ids of the suite's measuring tests (optionally narrowed by ``-k``)."""
    proc = pytest_run("--collect-only", "-m", "vram", SUITE, *select)
    ids = [line for line in proc.stdout.splitlines() if line.startswith(SUITE + "::")]
    if not ids:
        raise AssertionError(f"nothing collected:\n{proc.stdout}\n{proc.stderr}")
    return ids


def orders(ids: list[str], seeds: tuple[int, ...], subset: str) -> dict[str, list[str]]:
    """Named argument lists: the ids as collected, reversed, shuffled per seed, a ``-k``
    subset and ``-n 2``."""
    runs: dict[str, list[str]] = {"collected": list(ids), "reversed": ids[::-1]}
    for seed in seeds:
        shuffled = list(ids)
        random.Random(seed).shuffle(shuffled)
        runs[f"shuffled-{seed}"] = shuffled
    runs["subset"] = [*ids, "-k", subset]
    runs["xdist"] = [*ids, "-n", "2"]
    return runs


def figures(path: Path) -> dict[str, tuple[int, ...]]:
    document: dict[str, Any] = json.loads(path.read_text())
    return {m["key"]: tuple(m[f] for f in GATED) for m in document["measurements"]}


def run_orders(
    out: Path, ids: list[str], backend: str, seeds: tuple[int, ...], subset: str
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every order's figures by key; fails naming the order whose strict run failed."""
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, args in orders(ids, seeds, subset).items():
        json_path = out / f"order-{backend}-{name}.json"
        proc = pytest_run(
            "-m", "vram", f"--vram-backend={backend}", f"--vram-json={json_path}", *args
        )
        (out / f"order-{backend}-{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise AssertionError(f"{name}: strict run failed:\n{proc.stdout[-4000:]}")
        results[name] = figures(json_path)
    return results


def differences(
    results: dict[str, dict[str, tuple[int, ...]]],
) -> dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Per order, the keys whose figures differ from the collected order's."""
    reference = results["collected"]
    return {
        name: {k: (v, reference[k]) for k, v in figs.items() if v != reference[k]}
        for name, figs in results.items()
        if any(v != reference[k] for k, v in figs.items())
    }
