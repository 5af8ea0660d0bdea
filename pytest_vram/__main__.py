"""``python -m pytest_vram COMMAND``: the plugin's command-line tools."""

from __future__ import annotations

import sys

from pytest_vram import record_json

COMMANDS = {"record-json": record_json.main}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m pytest_vram {{{','.join(COMMANDS)}}} ...")
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
