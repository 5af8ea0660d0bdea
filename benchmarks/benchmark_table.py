"""Print the Markdown table of a ``pytest benchmarks/ --benchmark-json=FILE`` run.

pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
python benchmarks/benchmark_table.py bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_vram.render.terminal import format_seconds  # noqa: E402


def table(document: dict) -> list[str]:
    machine = document.get("machine_info", {})
    lines = [
        f"Machine: {machine.get('processor') or machine.get('machine', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} CPUs, Python "
        f"{machine.get('python_version', '?')}; {document.get('datetime', '')}",
        "",
        "| group | benchmark | median | min | rounds |",
        "| --- | --- | --: | --: | --: |",
    ]
    for b in sorted(document["benchmarks"], key=lambda b: (b.get("group") or "", b["name"])):
        stats = b["stats"]
        lines.append(
            f"| {b.get('group') or ''} | `{b['name']}` | {format_seconds(stats['median'])} | "
            f"{format_seconds(stats['min'])} | {stats['rounds']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(table(json.loads(args.json.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
