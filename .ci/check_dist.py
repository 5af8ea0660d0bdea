"""Check what the built wheel and sdist hold: the plugin and its data, nothing of the suite.

python .ci/check_dist.py DIST_DIR
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

#: top-level names an sdist may carry besides the package
SDIST_EXTRA = {"PKG-INFO", "README.md", "pyproject.toml", "setup.cfg", "pytest_vram.egg-info"}


def check(names: list[str], what: str, allowed_top: set[str]) -> list[str]:
    problems = [
        f"{what}: {n} is not part of the plugin"
        for n in names
        if n.split("/")[0] not in allowed_top
    ]
    missing = sorted(set(tracked_package_files()) - set(names))
    problems += [f"{what}: {n} is missing" for n in missing]
    return problems


def tracked_package_files() -> list[str]:
    """The files of the package in the source tree (git's view: no caches, no builds)."""
    out = subprocess.run(
        ["git", "ls-files", "pytest_vram"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line]


def main(dist: Path) -> int:
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"{dist}: expected one wheel and one sdist, found {wheels + sdists}")
        return 1
    with zipfile.ZipFile(wheels[0]) as z:
        wheel = z.namelist()
    dist_info = {n.split("/")[0] for n in wheel if n.split("/")[0].endswith(".dist-info")}
    problems = check(wheel, wheels[0].name, {"pytest_vram", *dist_info})
    with tarfile.open(sdists[0]) as t:
        sdist = [m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name]
    problems += check(sdist, sdists[0].name, {"pytest_vram", *SDIST_EXTRA})
    for line in problems:
        print(line)
    if not problems:
        print(f"{wheels[0].name}: {len(wheel)} files; {sdists[0].name}: {len(sdist)} entries")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
