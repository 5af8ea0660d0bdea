"""``python -m pytest_vram``: compare runs, write a PR comment, export, chart.

::

    python -m pytest_vram compare OLD NEW [--markdown OUT.md]
    python -m pytest_vram comment RUN.json [--breakdowns STORE.yaml ...] [-o OUT.md]
    python -m pytest_vram benchmark RUN.json [-o OUT.json]    # github-action-benchmark
    python -m pytest_vram chart RUN.json [RUN2.json ...] -o chart.png [--baseline OLD]
    python -m pytest_vram record-json RUN.json [--new-only] [--baselines DIR]

A run is a ``--vram-json`` file, a baseline file, or ``git:REF:PATH`` (a baseline file as
committed on a branch, e.g. ``git:main:baselines/estimate.yaml``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_vram.cli import record_json
from pytest_vram.cli.runs import RunError, load_run
from pytest_vram.core.records import Record
from pytest_vram.core.runs import compare
from pytest_vram.render import json_report, markdown, terminal
from pytest_vram.render.plots import PlotError, chart
from pytest_vram.store import breakdowns


def _write(path: str | None, text: str) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


def _compare(args: argparse.Namespace) -> int:
    old, new = load_run(args.old), load_run(args.new)
    changes = compare(old, new)
    width = shutil.get_terminal_size((80, 24)).columns
    print("\n".join(terminal.comparison_lines(changes, width)))
    if args.markdown:
        _write(args.markdown, markdown.comparison(changes, old, new))
        print(f"written: {args.markdown}")
    grew = any(c.status == "grew" for c in changes)
    return 1 if grew and args.fail_on_growth else 0


def _comment(args: argparse.Namespace) -> int:
    try:
        document = json.loads(Path(args.run).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{args.run}: not a readable --vram-json file ({exc})") from None
    measurements = document.get("measurements", [])
    stores: dict[str, dict[str, dict[str, int]]] = {}
    for path in args.breakdowns or []:
        baseline = Path(path).name  # breakdowns/estimate.yaml explains estimate.yaml
        loaded = breakdowns.load(Path(path))
        for m in measurements:
            if Path(m.get("baseline_path", "")).name == baseline:
                stores[m["baseline_path"]] = loaded
    records = [Record.from_dict(m) for m in measurements]
    _write(args.output, markdown.comment(records, stores))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    _write(args.output, json_report.benchmark(load_run(args.run)))
    return 0


def _chart(args: argparse.Namespace) -> int:
    runs = [load_run(r) for r in args.runs]
    baseline = load_run(args.baseline) if args.baseline else None
    chart(runs, Path(args.output), baseline)
    print(f"written: {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_vram", description=__doc__.split("::")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="peak changes between two runs")
    p.add_argument("old", help="--vram-json file, baseline file, or git:REF:PATH")
    p.add_argument("new", help="--vram-json file, baseline file, or git:REF:PATH")
    p.add_argument("--markdown", metavar="PATH", help="also write the comparison as Markdown")
    p.add_argument("--fail-on-growth", action="store_true", help="exit 1 if any peak grew")
    p.set_defaults(func=_compare)
    p = sub.add_parser("comment", help="a PR comment (Markdown) from a --vram-json file")
    p.add_argument("run", help="--vram-json file")
    p.add_argument(
        "--breakdowns", nargs="*", metavar="PATH", help="stored breakdowns to say what grew"
    )
    p.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    p.set_defaults(func=_comment)
    p = sub.add_parser("benchmark", help="github-action-benchmark customSmallerIsBetter JSON")
    p.add_argument("run", help="--vram-json file, baseline file, or git:REF:PATH")
    p.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    p.set_defaults(func=_benchmark)
    p = sub.add_parser("chart", help="peak per test, baseline against one or several runs")
    p.add_argument("runs", nargs="+", help="--vram-json files (or baseline files)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="PNG or SVG to write")
    p.add_argument("--baseline", metavar="RUN", help="draw this run as the baseline")
    p.set_defaults(func=_chart)
    p = sub.add_parser(
        "record-json", add_help=False, help="record a --vram-json run into the baseline files"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see record-json --help")
    p.set_defaults(func=lambda args: record_json.main(args.rest))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (RunError, PlotError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
