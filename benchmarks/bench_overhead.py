"""What installing pytest-vram costs a test suite without vram tests: a paired benchmark.

Writes a 1,000-test suite (plain asserts, no torch) into a temporary directory and runs it in
fresh ``pytest`` processes, with the plugin and with ``-p no:vram``, ``--pairs`` times. Each
pair runs both configurations back to back, in an order that alternates from pair to pair,
so that a slow stretch of the machine lands on both halves of a pair alike; the figure is
the median of the per-pair differences (with the plugin minus without), with a
distribution-free 95% confidence interval of that median (order statistics of the sorted
differences, as the sign test gives them).

The noise is measured the same way: ``--pairs`` pairs of two runs of the *same*
configuration (without the plugin). Their differences should centre on 0; their spread is
what one pair of runs can tell apart on this machine.

    python benchmarks/bench_overhead.py                    # 15 pairs, 15 noise pairs
    python benchmarks/bench_overhead.py --pairs 20 --instructions --json overhead.json

Figures: docs/results/plugin-overhead.md (raw: docs/data/plugin-overhead-cpu.json).

Never used as a timed test: wall time depends on the machine (the same suite also runs as
``benchmarks/test_speed.py::test_plugin_overhead`` under pytest-benchmark).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = 1000
WITH = "with pytest-vram"
WITHOUT = "without (-p no:vram)"


def plain_tests(n: int = TESTS) -> str:
    """``n`` trivial tests: no fixture, no marker, no torch."""
    return "".join(f"def test_{i}():\n    assert {i} == {i}\n\n" for i in range(n))


def write_suite(directory: Path, n: int = TESTS) -> None:
    (directory / "test_plain.py").write_text(plain_tests(n))
    (directory / "pytest.ini").write_text("[pytest]\n")


def command(plugin: bool) -> list[str]:
    """The pytest command line of one run (xdist and the cache off: one process, no files)."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    return args if plugin else [*args, "-p", "no:vram"]


@dataclasses.dataclass(frozen=True)
class Suite:
    """Where the suite lies, how many tests it has, which pytest-vram checkout it runs
    with, and whether Python may cache bytecode (as for an installed package, whose .pyc
    files are written at install; ``--no-bytecode`` keeps PYTHONDONTWRITEBYTECODE)."""

    directory: Path
    tests: int = TESTS
    checkout: Path = REPO
    keep_bytecode_setting: bool = False

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(self.checkout), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        if not self.keep_bytecode_setting:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(suite: Suite, plugin: bool) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh pytest process over the suite
    of ``suite``. The CPU time is what the process itself did: on a machine shared with
    other work it varies far less than the wall time."""
    cpu = _children_cpu()
    start = time.perf_counter()
    env = suite.environment()
    done = subprocess.run(
        command(plugin), cwd=suite.directory, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    if done.returncode != 0 or f"{suite.tests} passed" not in done.stdout:
        raise SystemExit(f"the suite did not pass ({command(plugin)}):\n{done.stdout[-2000:]}")
    return elapsed, cpu


def instructions(suite: Suite, plugin: bool) -> int:
    """Instructions the pytest process executes (valgrind's callgrind, PYTHONHASHSEED=0):
    unlike a time, hardly moved by other work on the machine, so a difference of 0.1% is
    visible in one run. About 50 times slower than a plain run."""
    env = {**suite.environment(), "PYTHONHASHSEED": "0"}
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    done = subprocess.run(
        [*valgrind, *command(plugin)], cwd=suite.directory, env=env, capture_output=True, text=True
    )
    if done.returncode != 0 or f"{suite.tests} passed" not in done.stdout:
        raise SystemExit(f"the suite did not pass under valgrind:\n{done.stdout[-2000:]}")
    # "==PID== Collected : N" per process; the pytest process is the one valgrind started
    # (its own children, if a plugin starts any, report under other ids).
    counts = re.findall(r"==(\d+)== Collected : (\d+)", done.stderr)
    first = min(int(pid) for pid, _ in counts)
    return next(int(n) for pid, n in counts if int(pid) == first)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the k-th smallest and k-th
    largest value, k from the binomial(n, 1/2) distribution (the sign test's interval)."""
    ordered = sorted(values)
    n = len(ordered)
    alpha = 1 - confidence
    k = 0  # the largest k with P(X < k) <= alpha/2 for X ~ Binomial(n, 1/2)
    cumulative = 0.0
    for i in range(n):
        cumulative += math.comb(n, i) / 2**n
        if cumulative > alpha / 2:
            break
        k = i + 1
    if k == 0:  # too few pairs for this confidence: the whole range
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


Pair = tuple[tuple[float, float], tuple[float, float]]


def paired(suite: Suite, pairs: int, first: bool, second: bool) -> list[Pair]:
    """``pairs`` ((wall, cpu) of first, (wall, cpu) of second), the order inside a pair
    alternating."""
    times = []
    for i in range(pairs):
        if i % 2 == 0:
            a = run_once(suite, first)
            b = run_once(suite, second)
        else:
            b = run_once(suite, second)
            a = run_once(suite, first)
        times.append((a, b))
    return times


def measures(times: list[Pair]) -> dict[str, dict[str, Any]]:
    """The summary of the wall times and of the CPU times, each with its pairs."""
    result = {}
    for index, name in ((0, "wall"), (1, "cpu")):
        pairs = [(a[index], b[index]) for a, b in times]
        result[name] = {**summary(pairs), "pairs_s": pairs}
    return result


def summary(times: list[tuple[float, float]]) -> dict[str, float]:
    differences = [a - b for a, b in times]
    low, high = median_interval(differences)
    base = statistics.median(b for _, b in times)
    return {
        "median_first_s": statistics.median(a for a, _ in times),
        "median_second_s": base,
        "median_difference_s": statistics.median(differences),
        "ci95_low_s": low,
        "ci95_high_s": high,
        "median_difference_percent": 100 * statistics.median(differences) / base,
        "ci95_low_percent": 100 * low / base,
        "ci95_high_percent": 100 * high / base,
    }


def describe(name: str, s: dict[str, float]) -> str:
    return (
        f"{name}: {s['median_first_s']:.3f} s vs {s['median_second_s']:.3f} s; median of "
        f"the per-pair differences {1000 * s['median_difference_s']:+.1f} ms "
        f"({s['median_difference_percent']:+.2f}%), 95% CI "
        f"[{1000 * s['ci95_low_s']:+.1f}, {1000 * s['ci95_high_s']:+.1f}] ms "
        f"([{s['ci95_low_percent']:+.2f}%, {s['ci95_high_percent']:+.2f}%])"
    )


def machine() -> dict[str, str]:
    import pytest

    return {
        "python": platform.python_version(),
        "pytest": pytest.__version__,
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=15, help="pairs of runs (default 15)")
    parser.add_argument("--tests", type=int, default=TESTS, help="tests in the suite")
    parser.add_argument("--no-noise", action="store_true", help="skip the same-config pairs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--checkout", type=Path, default=REPO, help="the pytest-vram checkout to measure"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the instructions of one run each under valgrind (slow)",
    )
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE if set (every run then compiles pytest-vram)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vram-overhead-") as tmp:
        suite = Suite(Path(tmp), args.tests, args.checkout.resolve(), args.no_bytecode)
        write_suite(suite.directory, suite.tests)
        run_once(suite, True)  # warm the file cache and the .pyc files
        run_once(suite, False)
        plugin = paired(suite, args.pairs, True, False)
        noise = None if args.no_noise else paired(suite, args.pairs, False, False)
        counted = {p: instructions(suite, p) for p in (True, False)} if args.instructions else {}

    result: dict[str, Any] = {
        "tests": args.tests,
        "pairs": args.pairs,
        "command": " ".join(["python", *command(True)[1:]]) + " [-p no:vram]",
        "machine": machine(),
        "checkout": str(args.checkout.resolve()),
        "bytecode_cached": "PYTHONDONTWRITEBYTECODE" not in suite.environment(),
        "plugin": measures(plugin),
    }
    if noise is not None:
        result["noise"] = measures(noise)
    print(f"{args.tests} plain tests, {args.pairs} pairs, {result['machine']}")
    for metric in ("wall", "cpu"):
        print(describe(f"{metric}: {WITH} vs {WITHOUT}", result["plugin"][metric]))
        if noise is not None:
            print(describe(f"{metric}: noise ({WITHOUT} twice)", result["noise"][metric]))
    if counted:
        extra = counted[True] - counted[False]
        result["instructions"] = {"with": counted[True], "without": counted[False]}
        print(
            f"instructions: {counted[True]:,d} vs {counted[False]:,d}: {extra:+,d} "
            f"({100 * extra / counted[False]:+.2f}%)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
