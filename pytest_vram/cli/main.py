"""``python -m pytest_vram``: compare runs, write a PR comment, export, chart.

::

    python -m pytest_vram compare OLD NEW [--markdown OUT.md]
    python -m pytest_vram comment RUN.json [--breakdowns STORE.yaml ...] [-o OUT.md]
    python -m pytest_vram benchmark RUN.json [-o OUT.json]    # github-action-benchmark
    python -m pytest_vram chart RUN.json [RUN2.json ...] -o chart.png [--baseline OLD]
                                [--max-tests N]
    python -m pytest_vram record-json RUN.json [--new-only] [--baselines DIR]

A run is a ``--vram-json`` file, a baseline file, or ``git:REF:PATH`` (a baseline file as
committed on a branch, e.g. ``git:main:baselines/estimate.yaml``). Every input and
output path is checked before any work (:mod:`pytest_vram.cli.runs`,
:mod:`pytest_vram.cli.outputs`): a problem exits 2 with one line naming it and the fix.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_vram.cli import outputs, record_json
from pytest_vram.cli.runs import RunError, load_breakdowns, load_records, load_run
from pytest_vram.core.runs import compare
from pytest_vram.render import json_report, markdown, terminal
from pytest_vram.render.plots import MAX_TESTS, PlotError, chart, image_formats


def _compare(args: argparse.Namespace) -> int:
    outputs.check(args.markdown, "--markdown")
    old, new = load_run(args.old), load_run(args.new)
    changes = compare(old, new)
    width = shutil.get_terminal_size((80, 24)).columns
    print("\n".join(terminal.comparison_lines(changes, width)))
    if args.markdown:
        outputs.write(args.markdown, markdown.comparison(changes, old, new))
        print(f"written: {args.markdown}")
    grew = any(c.status == "grew" for c in changes)
    return 1 if grew and args.fail_on_growth else 0


def _comment(args: argparse.Namespace) -> int:
    outputs.check(args.output)
    records = load_records(args.run)
    stores: dict[str, dict[str, dict[str, int]]] = {}
    for path in args.breakdowns or []:
        loaded = load_breakdowns(path)
        name = Path(path).name  # breakdowns/estimate.yaml explains estimate.yaml
        for record in records:
            if Path(record.baseline_path).name == name:
                stores[record.baseline_path] = loaded
    outputs.write(args.output, markdown.comment(records, stores))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    outputs.check(args.output)
    outputs.write(args.output, json_report.benchmark(load_run(args.run)))
    return 0


def _chart(args: argparse.Namespace) -> int:
    outputs.check(args.output)
    fmt = _image_format(args.output)
    runs = [load_run(r) for r in args.runs]
    baseline = load_run(args.baseline) if args.baseline else None
    try:
        image = chart(runs, fmt, baseline, args.max_tests)
    except PlotError:
        raise
    except Exception as exc:  # matplotlib's own errors, with text it could not lay out
        raise PlotError(f"{args.output}: the chart could not be drawn ({exc})") from None
    outputs.write(args.output, image)
    print(f"written: {args.output}")
    return 0


def _image_format(path: str) -> str:
    formats = image_formats()
    if formats is None:
        raise PlotError("the chart needs matplotlib: pip install 'pytest-vram[plot]'")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        said = f"unknown image format '.{suffix}'" if suffix else "no image format suffix"
        raise PlotError(f"{path}: {said}; name the file with one of {known} (e.g. chart.png)")
    return suffix


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:  # a taller chart is neither readable nor drawable in time
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="image to write (.png, .svg, ...)"
    )
    p.add_argument("--baseline", metavar="RUN", help="draw this run as the baseline")
    p.add_argument(
        "--max-tests",
        type=_positive,
        default=MAX_TESTS,
        metavar="N",
        help=f"draw at most N tests, those whose peak changed most (default {MAX_TESTS})",
    )
    p.set_defaults(func=_chart)
    p = sub.add_parser(
        "record-json", add_help=False, help="record a --vram-json run into the baseline files"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see record-json --help")
    p.set_defaults(func=lambda args: record_json.main(args.rest))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (RunError, PlotError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has gone, nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
