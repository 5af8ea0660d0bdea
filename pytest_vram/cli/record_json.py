"""``python -m pytest_vram record-json RUN.json``: turn a run's ``--vram-json`` into baselines.

A CI job on a GPU writes ``--vram-json``; anyone can then record its figures into
``baselines/<profile>.yaml`` without that GPU. Each measurement goes to the file of its own
profile, exactly as ``--vram-update`` would have written it on that machine (same merge:
other entries and per-entry tolerances kept, a file whose entries do not change stays
byte-identical). ``--new-only`` records only keys the file lacks.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pytest_vram.cli import runs
from pytest_vram.cli.runs import RunError
from pytest_vram.store import baselines, yaml_dialect
from pytest_vram.store.baselines import BaselineError, BaselineFile, Entry

#: What a measurement must hold to become a baseline entry.
REQUIRED = ("key", "profile", "model_bytes", "peak_bytes", "context")


class RecordError(Exception):
    """The JSON file cannot be turned into baseline entries; the message says why."""


class PartlyRecorded(RecordError):
    """A later profile's file failed after earlier ones were written (they stay written)."""


def measurements(path: Path) -> list[dict[str, Any]]:
    """The measurements of a ``--vram-json`` file, checked for the fields a baseline needs."""
    try:
        return runs.load_measurements(str(path), REQUIRED)
    except RunError as exc:
        raise RecordError(str(exc)) from None


def entries(path: Path, found: list[dict[str, Any]]) -> dict[str, dict[str, Entry]]:
    """The baseline entries of ``found`` by profile, each validated as the baseline loader
    would validate it (RecordError naming the measurement otherwise)."""
    by_profile: dict[str, dict[str, Entry]] = {}
    for index, m in enumerate(found):
        where = f"{path}: measurements[{index}] ({runs.show(m['key'])})"
        try:
            baselines.check_profile_name(m["profile"])
        except BaselineError as exc:
            raise RecordError(f"{where}: {exc}") from None
        if m.get("off_device"):
            raise RecordError(
                f"{where}: its figures were not counted on the device (the test failed as "
                f"'not on device'), and --vram-update does not record such a figure either: "
                f"fix the test (its failure names the cause), run it again and record that run"
            )
        if m["peak_bytes"] < m["model_bytes"]:
            raise RecordError(
                f"{where}: peak_bytes ({m['peak_bytes']}) is below model_bytes "
                f"({m['model_bytes']}); the peak includes the model, so these figures were not "
                f"measured by pytest-vram: record the file it wrote"
            )
        for text in (m["key"], *m["context"], *m["context"].values()):
            if not _round_trips(text):
                raise RecordError(
                    f"{where}: {runs.show(text)} cannot be written to a baseline file and read "
                    f"back (it is not plain text: a lone surrogate or a control character); "
                    f"record the file pytest wrote"
                )
        largest, card = _largest(m.get("largest"), where)
        entry = Entry(
            m["model_bytes"], m["peak_bytes"], params=m.get("params"), largest=largest, card=card
        )
        by_profile.setdefault(m["profile"], {})[m["key"]] = entry
    return by_profile


def _largest(found: Any, where: str) -> tuple[int | None, str | None]:
    """The answer of a ``vram.largest`` measurement and its card, or (None, None)."""
    if found is None:
        return None, None
    value = found.get("value") if isinstance(found, dict) else None
    card = found.get("card") if isinstance(found, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 0
        or not isinstance(card, str)
    ):
        raise RecordError(
            f"{where}: largest must hold a non-negative int 'value' and a 'card' string, got "
            f"{runs.show(repr(found))}; record the file pytest wrote"
        )
    return value, card


def _round_trips(text: str) -> bool:
    """Whether ``text`` comes back unchanged from a baseline file (the bounded loader)."""
    try:
        dumped = yaml_dialect.canonical({text: text})
        dumped.encode("utf-8")
        loader = yaml_dialect.StrictLoader(dumped)
        try:
            return loader.get_single_data() == {text: text}
        finally:
            loader.dispose()
    except Exception:  # any error of the dumper or the loader: it does not round-trip
        return False


def record(
    path: Path, directory: Path, *, new_only: bool = False
) -> dict[str, baselines.UpdateResult]:
    """Merge the measurements of ``path`` into ``directory``; return the result per profile.

    Everything is checked before any file is written: the measurements, each profile's
    baseline file as it is, and the file each update would write, read back with the
    bounded loader. A RecordError or BaselineError leaves every file untouched.
    """
    if directory.exists() and not directory.is_dir():
        raise RecordError(f"--baselines {directory}: is a file, not a directory")
    found = measurements(path)
    planned = []
    for profile, measured in sorted(entries(path, found).items()):
        target = baselines.profile_path(directory, profile)
        existing = baselines.load(target)
        recorded = existing.entries if existing else {}
        if new_only:
            measured = {k: e for k, e in measured.items() if k not in recorded}
        if new_only and existing is not None:
            setup = existing.setup
        else:  # "context": the setup's key in --vram-json
            first = next(m for m in found if m["profile"] == profile)
            setup = baselines.file_setup(first["context"])
        _check_writable(target)
        _check_loads_back(target, profile, existing, measured, setup)
        planned.append((profile, target, measured, setup))
    results: dict[str, baselines.UpdateResult] = {}
    for profile, target, measured, setup in planned:
        try:
            results[profile] = baselines.update(target, profile, measured, setup=setup)
        except BaselineError as exc:
            written = [str(r.path) for r in results.values() if r.written]
            if written:
                raise PartlyRecorded(f"{exc} (already written: {', '.join(written)})") from None
            raise
    return results


def _check_writable(target: Path) -> None:
    # The store refuses a read-only baseline file when it writes; refused here first, so
    # that no other profile's file is written before.
    try:
        mode = target.stat().st_mode
    except OSError:
        return
    if not mode & 0o222:
        raise RecordError(
            f"{target}: the baseline file is read-only (mode {mode & 0o777:04o}); make it "
            f"writable (chmod u+w {target}) to record into it"
        )


def _check_loads_back(
    target: Path,
    profile: str,
    existing: BaselineFile | None,
    measured: dict[str, Entry],
    setup: dict[str, str],
) -> None:
    """Raise RecordError unless the file an update would write loads back as written."""
    merged = dict(existing.entries) if existing else {}
    for key, entry in measured.items():
        old = merged.get(key)
        merged[key] = entry if old is None or old.tolerance is None else Entry(
            entry.model_bytes, entry.peak_bytes, entry.params, old.tolerance
        )  # fmt: skip
    planned = BaselineFile(
        target,
        profile,
        merged,
        setup,
        existing.tolerance if existing else None,
        comments=existing.comments if existing else None,
    )
    try:
        loaded = baselines.parse(baselines.dump(planned), target)
    except (BaselineError, UnicodeError) as exc:
        raise RecordError(
            f"{target}: the file this would write does not load back ({exc}); record the file "
            f"pytest wrote"
        ) from None
    if loaded.entries != merged or loaded.setup != setup:
        raise RecordError(
            f"{target}: the file this would write reads back differently; record the file "
            f"pytest wrote"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_vram record-json",
        description="Record the measurements of a --vram-json file as baseline entries.",
    )
    parser.add_argument("json", type=Path, help="a file written by `pytest --vram-json=PATH`")
    parser.add_argument(
        "--baselines", type=Path, default=Path("baselines"), help="baseline directory"
    )
    parser.add_argument(
        "--new-only", action="store_true", help="record only keys the baseline file lacks"
    )
    args = parser.parse_args(argv)
    try:
        results = record(args.json, args.baselines, new_only=args.new_only)
    except (RecordError, BaselineError, RunError) as exc:
        unchanged = "" if isinstance(exc, PartlyRecorded) else " (no baseline file was changed)"
        print(f"error: {_one_line(str(exc))}{unchanged}")
        return 2
    if not results:
        print(f"{args.json}: no measurements; nothing recorded")
    for profile, result in results.items():
        changes = len(result.added), len(result.changed), len(result.unchanged)
        state = "written" if result.written else "unchanged"
        print(
            f"{result.path} ({profile}): {state}; {changes[0]} added, {changes[1]} changed, "
            f"{changes[2]} unchanged"
        )
    return 0


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
