"""What reading baselines safely and collecting garbage per test cost.

1. Parsing a baseline file of ``--entries`` entries with the bounded loader (libyaml parser
   and pure Python parser) against plain ``yaml.safe_load``. A session parses each baseline
   file once; the update re-parses it only if another process changed it meanwhile.
2. ``Meter.start`` + ``finish`` per test in a process holding ``--objects`` Python objects
   (a large test session), with ``gc.collect()`` (the default: the cuda and estimate backends
   need it for exact figures) and without (a backend whose memory is never held by cycles).

    python benchmarks/bench_reliability.py --out OUT_DIR   # writes bench_reliability.json/.md

Wall time depends on the machine: these are figures for the docs, never a timed test.
Figures: docs/results/reliability-cost.md (raw: docs/data/reliability-cost-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugin"))

from vram_scripted import ScriptedBackend  # noqa: E402

from pytest_vram.measure.meter import Meter  # noqa: E402
from pytest_vram.store import baselines  # noqa: E402
from pytest_vram.store import yaml_dialect as strict_yaml  # noqa: E402


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_parse(entries: int, repeats: int) -> dict[str, float]:
    path = Path("scripted.yaml")
    baseline = baselines.BaselineFile(
        path=path,
        profile="scripted",
        entries={
            f"tests/test_zoo.py::test_inference[preset{i}-phase7]": baselines.Entry(
                512 * i, 1024 * i, params=i
            )
            for i in range(entries)
        },
        setup={"backend": "scripted"},
    )
    text = baselines.dump(baseline)
    result = {"entries": entries, "megabytes": len(text) / 1e6}
    result["yaml.safe_load_s"] = _median(lambda: yaml.safe_load(text), repeats)
    result["bounded_libyaml_s"] = _median(lambda: baselines.parse(text, path), repeats)
    original = strict_yaml.StrictLoader
    strict_yaml.StrictLoader = strict_yaml.PyLoader
    try:
        result["bounded_python_s"] = _median(lambda: baselines.parse(text, path), repeats)
    finally:
        strict_yaml.StrictLoader = original
    return result


class _NoCollect(ScriptedBackend):
    def collect_garbage(self) -> None:
        pass


class _Collect(ScriptedBackend):
    def collect_garbage(self) -> None:
        import gc

        gc.collect()


def bench_gc(objects: int, tests: int) -> dict[str, float]:
    heap = [{"i": i} for i in range(objects)]  # what a large session keeps alive
    result: dict[str, float] = {"objects": objects, "tests": tests}
    for name, cls in (("with_gc_s_per_test", _Collect), ("without_gc_s_per_test", _NoCollect)):
        backend = cls()

        def one_test(backend: ScriptedBackend = backend) -> None:
            meter = Meter(backend)
            meter.start()
            meter.run(backend.spike, 1024)
            meter.finish()

        start = time.perf_counter()
        for _ in range(tests):
            one_test()
        result[name] = (time.perf_counter() - start) / tests
    del heap
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objects", type=int, default=2_000_000)
    parser.add_argument("--tests", type=int, default=200)
    args = parser.parse_args()
    results = {
        "parse": bench_parse(args.entries, args.repeats),
        "gc": bench_gc(args.objects, args.tests),
        "python": sys.version.split()[0],
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_reliability.json").write_text(json.dumps(results, indent=2) + "\n")
    p, g = results["parse"], results["gc"]
    lines = [
        f"Python {results['python']}, libyaml {results['libyaml']}; median of {args.repeats}.",
        "",
        f"Parsing a baseline of {p['entries']} entries ({p['megabytes']:.1f} MB):",
        "",
        "| loader | seconds |",
        "|---|---:|",
        f"| yaml.safe_load (unbounded) | {p['yaml.safe_load_s']:.3f} |",
        f"| bounded, libyaml parser | {p['bounded_libyaml_s']:.3f} |",
        f"| bounded, pure Python parser | {p['bounded_python_s']:.3f} |",
        "",
        f"Per test (start + run + finish), {g['objects']:,} live objects, {g['tests']} tests:",
        "",
        "| garbage collection | ms per test |",
        "|---|---:|",
        f"| gc.collect() twice (default) | {g['with_gc_s_per_test'] * 1e3:.2f} |",
        f"| none (backend opts out) | {g['without_gc_s_per_test'] * 1e3:.3f} |",
    ]
    (args.out / "bench_reliability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
