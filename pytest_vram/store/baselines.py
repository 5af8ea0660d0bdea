"""The YAML baseline store: load and validate, dump, atomic write, update, stale entries.

One file per measurement profile (``baselines/<profile>.yaml``). A file is strict on load
(every error names the file, the entry, the field and the fix) and canonical on dump
(fixed key order, sorted entries, integers in bytes, block style, no aliases), so that a
baseline change reads as a clean diff in review. See ``docs/baselines.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pytest_vram.core.figures import MemoryFigures
from pytest_vram.core.names import unstorable
from pytest_vram.core.units import Tolerance, UnitError, parse_size, parse_tolerance
from pytest_vram.store import files, yaml_dialect

#: Keys of the file's top-level mapping, in the order they are written.
HEADER_KEYS = ("profile", "recorded_with", "tolerance", "entries")
#: Keys of one entry, in the order they are written.
ENTRY_KEYS = (
    "params",
    "model_bytes",
    "peak_bytes",
    "activation_bytes",
    "largest",
    "card",
    "tolerance",
)
#: The longest card name an entry may hold (a card's key or a declared capacity).
MAX_CARD_CHARS = 100

# A profile is a file stem: no separators, no leading dot (hidden file), no "..".
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


#: Setup fields that belong to one test, not to a file's figures: the card a test ran on
#: (``card=``) decides where it runs out of memory, never its figures, and is recorded in
#: the entries whose ``largest`` depends on it.
PER_TEST_SETUP = ("card",)


def file_setup(setup: Mapping[str, str]) -> dict[str, str]:
    """A measurement's setup as a file's ``recorded_with``: without the per-test fields."""
    return {k: v for k, v in setup.items() if k not in PER_TEST_SETUP}


class BaselineError(Exception):
    """A baseline file (or profile name) is invalid; the message names file, entry, field, fix."""


@dataclasses.dataclass(frozen=True)
class Entry(MemoryFigures):
    """The recorded figures of one measurement (``model_bytes``, ``peak_bytes``, ``params``),
    with the entry's own tolerance. Sizes in bytes."""

    #: Per-entry tolerance override, kept across ``--vram-update``.
    tolerance: Tolerance | None = None
    #: The answer of ``vram.largest`` (0: not even its first value fits), with ``card``.
    largest: int | None = None
    #: The card ``largest`` was found on: its key or the declared capacity.
    card: str | None = None

    @classmethod
    def of(
        cls, figures: MemoryFigures, largest: int | None = None, card: str | None = None
    ) -> Entry:
        """The entry recording ``figures`` (no tolerance of its own), and where given the
        answer of ``vram.largest`` on ``card``."""
        return cls(
            figures.model_bytes,
            figures.peak_bytes,
            params=figures.params,
            largest=largest,
            card=card,
        )


@dataclasses.dataclass(frozen=True)
class BaselineFile:
    """One profile's baseline file, as loaded or about to be written."""

    path: Path
    profile: str
    entries: dict[str, Entry]
    #: what the figures were measured on: the file's ``recorded_with`` (see load and dump)
    setup: dict[str, str]
    #: File-wide default tolerance (entries and markers may override it).
    tolerance: Tolerance | None = None
    #: The text it was parsed from (None if built in memory): lets an update under the lock
    #: see that the file did not change since and skip parsing it again.
    source: str | None = dataclasses.field(default=None, compare=False, repr=False)
    #: The comments people wrote in the file, kept across ``--vram-update``.
    comments: Comments | None = dataclasses.field(default=None, compare=False, repr=False)


#: Where a comment sits: the keys leading to the line it belongs to, e.g.
#: ``("entries", "tests/a.py::test_x", "peak_bytes")``.
KeyPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Comments:
    """Comments of a baseline file, attached to keys so that they move with their entry.

    A comment line belongs to the key on the next line (``before``), a comment at the end
    of a line to that line's key (``inline``); comments after the last key are ``trailing``.
    Blank lines are not kept: the file is rewritten in its canonical form.
    """

    before: dict[KeyPath, list[str]]
    inline: dict[KeyPath, str]
    trailing: list[str]

    def __bool__(self) -> bool:
        return bool(self.before or self.inline or self.trailing)


@dataclasses.dataclass(frozen=True)
class Change:
    """One entry touched by :func:`update`: ``old`` None means added, ``new`` None removed."""

    key: str
    old: Entry | None
    new: Entry | None


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What :func:`update` did to one file. Each list is sorted by key."""

    path: Path
    added: list[Change]
    changed: list[Change]
    unchanged: list[str]
    removed: list[Change]
    written: bool
    #: measured entries another run changed after this one read the file: ``old`` is that
    #: run's figures, ``new`` this run's, which replaced them (last writer wins)
    conflicts: list[Change] = dataclasses.field(default_factory=list)


def profile_path(directory: Path, profile: str) -> Path:
    """The file that holds ``profile``'s baselines: ``directory / f"{profile}.yaml"``."""
    check_profile_name(profile)
    return Path(directory) / f"{profile}.yaml"


def check_profile_name(profile: str) -> None:
    """Raise BaselineError unless ``profile`` is usable as a file stem on every platform."""
    if not isinstance(profile, str) or not _PROFILE_RE.match(profile) or ".." in profile:
        raise BaselineError(
            f"profile name {profile!r} is not a safe file name: use letters, digits and "
            f"'.', '_', '+', '-', starting with a letter or digit (e.g. 'cuda-nvidia-h200')"
        )


# --------------------------------------------------------------------------- loading


#: Input bound: a baseline holds a few hundred bytes per entry; a file far beyond is a
#: mistake or an attack, refused with a message instead of exhausting memory or CPU (the
#: YAML dialect bounds nesting and numbers, :mod:`pytest_vram.store.yaml_dialect`).
MAX_FILE_BYTES = 64 * 1024**2
#: Largest figure a baseline may hold (16 EiB): larger sizes are typos, not memory.
MAX_COUNT = 2**64


def load(path: Path) -> BaselineFile | None:
    """Read and validate a baseline file; None if it does not exist.

    Raises BaselineError for YAML syntax errors (with the line), duplicate keys, wrong
    types, unknown keys, a profile that does not match the file name, an
    ``activation_bytes`` that disagrees with ``peak_bytes - model_bytes``, or input beyond
    the bounds (size, depth, aliases, tags).
    """
    path = Path(path)
    text = read_text(path)
    return None if text is None else parse(text, path)


def read_text(path: Path) -> str | None:
    """The file's text, None if it does not exist; BaselineError if unreadable or too big."""
    path = Path(path)
    try:
        return files.read_text(path, MAX_FILE_BYTES)
    except files.TooLarge:
        raise BaselineError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB; a baseline file holds a few "
            f"hundred bytes per measurement: split the suite into several profiles"
        ) from None
    except files.NotText as exc:
        raise BaselineError(
            f"{path}: cannot read baseline file: {exc}; pytest-vram writes it in UTF-8: "
            f"fix the file or take it back from version control"
        ) from None
    except OSError as exc:
        raise BaselineError(
            f"{path}: cannot read baseline file: {files.describe(exc)}; give the baselines a "
            f"readable regular file there (or another --vram-baselines directory)"
        ) from None


def parse(text: str, path: Path) -> BaselineFile:
    """Validate baseline ``text`` as if read from ``path`` (which names it in errors)."""
    path = Path(path)
    if len(text) > MAX_FILE_BYTES:
        raise BaselineError(f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB")
    data, node = _load_yaml(text, path)
    comments = _comments(text, node) if "#" in text else None
    return dataclasses.replace(_validate_file(data, path), source=text, comments=comments)


def _load_yaml(text: str, path: Path) -> tuple[Any, Node | None]:
    """The document's data and its node tree (which knows the line of every key)."""
    try:
        return yaml_dialect.load(text)
    except yaml_dialect.DuplicateKey as dup:
        raise BaselineError(_duplicate_message(path, dup)) from None
    except yaml_dialect.Invalid as exc:
        raise BaselineError(f"{path}{exc.where}: {exc.text}") from None


def _comments(text: str, root: Node | None) -> Comments:
    """Find the comments of ``text`` and the key each belongs to (see :class:`Comments`)."""
    lines = text.splitlines()
    keys: dict[int, KeyPath] = {}  # line -> the first key on it
    ends: dict[int, int] = {}  # line -> column where its last node ends: a comment follows
    inside: set[int] = set()  # lines within a multi-line scalar: a '#' there is text

    def walk(node: Node, where: KeyPath) -> None:
        line = node.end_mark.line
        ends[line] = max(ends.get(line, 0), node.end_mark.column)
        if isinstance(node, ScalarNode) and line > node.start_mark.line:
            inside.update(range(node.start_mark.line + 1, line + 1))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                path = (*where, str(key_node.value))
                keys.setdefault(key_node.start_mark.line, path)
                walk(key_node, where)
                walk(value_node, path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*where, str(index)))

    if root is not None:
        walk(root, ())
    before: dict[KeyPath, list[str]] = {}
    inline: dict[KeyPath, str] = {}
    pending: list[str] = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if number in inside:
            continue
        if stripped.startswith("#"):
            pending.append(stripped)
            continue
        if number in keys:
            if pending:
                before.setdefault(keys[number], []).extend(pending)
                pending = []
            rest = line[ends.get(number, len(line)) :].lstrip().lstrip(":").strip()
            if rest.startswith("#"):
                inline[keys[number]] = rest
    return Comments(before, inline, pending)


def _duplicate_message(path: Path, dup: yaml_dialect.DuplicateKey) -> str:
    lines = f"lines {dup.first_line} and {dup.line}"
    keep = "keep one of them (YAML would silently use the last)"
    if dup.where == ("entries",):
        return f"{path}: entry {dup.key!r} appears twice ({lines}); {keep}"
    if len(dup.where) == 2 and dup.where[0] == "entries":
        return f"{path}: entry {dup.where[1]!r}: {dup.key} appears twice ({lines}); {keep}"
    if not dup.where:
        return f"{path}: top-level key {dup.key!r} appears twice ({lines}); {keep}"
    inside = ".".join(dup.where)
    return f"{path}: {inside}: key {dup.key!r} appears twice ({lines}); {keep}"


def _validate_file(data: Any, path: Path) -> BaselineFile:
    expected = "a mapping with keys profile, entries (and optionally recorded_with, tolerance)"
    if data is None:
        raise BaselineError(f"{path}: file is empty; expected {expected}")
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: top level must be {expected}, got {_kind(data)}")
    unknown = [str(k) for k in data if k not in HEADER_KEYS]
    if unknown:
        raise BaselineError(
            f"{path}: unknown top-level key {unknown[0]!r}; allowed keys are "
            f"{', '.join(HEADER_KEYS)} (anything else would be lost on the next update)"
        )
    profile = _validate_profile(data, path)
    setup = _validate_setup(data.get("recorded_with"), path)  # the setup's key in the file
    tolerance = None
    if data.get("tolerance") is not None:
        tolerance = _tolerance(data["tolerance"], str(path))
    if "entries" not in data:
        raise BaselineError(f"{path}: entries is missing; write 'entries: {{}}' for none")
    raw_entries = data["entries"]
    if raw_entries is None:
        raw_entries = {}  # "entries:" with nothing under it: an empty file in progress.
    if not isinstance(raw_entries, dict):
        raise BaselineError(
            f"{path}: entries must be a mapping from test id to figures, got {_kind(raw_entries)}"
        )
    entries = {}
    for key, raw in raw_entries.items():
        if not isinstance(key, str) or not key:
            raise BaselineError(
                f"{path}: entry key {key!r} must be a non-empty test id string "
                f"(quote it if YAML reads it as another type)"
            )
        entries[key] = _validate_entry(raw, f"{path}: entry {key!r}")
    return BaselineFile(path, profile, entries, setup, tolerance)


def _validate_profile(data: dict[Any, Any], path: Path) -> str:
    if "profile" not in data:
        raise BaselineError(f"{path}: profile is missing; add 'profile: {path.stem}'")
    profile = data["profile"]
    if not isinstance(profile, str):
        raise BaselineError(
            f"{path}: profile must be a string, got {profile!r}; write 'profile: {path.stem}'"
        )
    if profile != path.stem:
        raise BaselineError(
            f"{path}: profile is {profile!r} but the file name says {path.stem!r}; "
            f"a file holds exactly its own profile: rename the file to '{profile}.yaml' "
            f"or set 'profile: {path.stem}'"
        )
    return profile


def _validate_setup(raw: Any, path: Path) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BaselineError(
            f"{path}: recorded_with must be a mapping of names to version strings, got {_kind(raw)}"
        )
    result = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise BaselineError(
                f"{path}: recorded_with: {name!r} must map a name to a string, got {value!r}; "
                f"quote the value (e.g. '2.11' rather than 2.11)"
            )
        result[name] = value
    return result


def _validate_entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise BaselineError(
            f"{where}: must be a mapping with model_bytes and peak_bytes, got {_kind(raw)}"
        )
    unknown = [str(k) for k in raw if k not in ENTRY_KEYS]
    if unknown:
        raise BaselineError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(ENTRY_KEYS)} "
            f"(anything else would be lost on the next update)"
        )
    for required in ("model_bytes", "peak_bytes"):
        if required not in raw:
            raise BaselineError(f"{where}: {required} is missing; record it with --vram-update")
    model = _count(raw["model_bytes"], where, "model_bytes", _BYTES)
    peak = _count(raw["peak_bytes"], where, "peak_bytes", _BYTES)
    params = None
    if raw.get("params") is not None:
        params = _count(raw["params"], where, "params", "a non-negative integer (or null)")
    if peak < model:
        raise BaselineError(
            f"{where}: peak_bytes ({peak}) must be at least model_bytes ({model}); "
            f"the peak includes the model"
        )
    if "activation_bytes" in raw:
        activation = _count(raw["activation_bytes"], where, "activation_bytes", _BYTES)
        if activation != peak - model:
            raise BaselineError(
                f"{where}: activation_bytes is {activation} but peak_bytes - model_bytes "
                f"is {peak - model}; set activation_bytes: {peak - model} (it is derived)"
            )
    tolerance = None
    if raw.get("tolerance") is not None:
        tolerance = _tolerance(raw["tolerance"], where)
    largest, card = _largest(raw, where)
    return Entry(
        model_bytes=model,
        peak_bytes=peak,
        params=params,
        tolerance=tolerance,
        largest=largest,
        card=card,
    )


def _largest(raw: dict[str, Any], where: str) -> tuple[int | None, str | None]:
    """An entry's ``largest`` and the ``card`` it was found on: both or neither."""
    has_largest, has_card = raw.get("largest") is not None, raw.get("card") is not None
    if has_largest != has_card:
        given, other = ("largest", "card") if has_largest else ("card", "largest")
        raise BaselineError(
            f"{where}: {given} without {other}: the largest value that fits is recorded with "
            f"the card it was found on (e.g. largest: 12 and card: rtx3080-laptop); record "
            f"both with --vram-update, or delete {given}"
        )
    if not has_largest:
        return None, None
    largest = _count(raw["largest"], where, "largest", "a non-negative integer (0: none fits)")
    card = raw["card"]
    if (
        not isinstance(card, str)
        or not card.strip()
        or len(card) > MAX_CARD_CHARS
        or not card.isprintable()
    ):
        shown = repr(card) if len(repr(card)) <= 80 else repr(card)[:60] + "..."
        raise BaselineError(
            f"{where}: card must be a card's name or a capacity on one line, at most "
            f"{MAX_CARD_CHARS} characters (e.g. rtx3080-laptop or 8GiB), got {shown}"
        )
    return largest, card


_BYTES = "a non-negative integer number of bytes"


def _count(value: Any, where: str, field: str, expected: str) -> int:
    # bool is an int subclass: "peak_bytes: yes" must not read as 1 byte.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= MAX_COUNT:
        expected += " below 2**64"
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "..."
    raise BaselineError(f"{where}: {field} must be {expected}, got {shown}{_hint(value)}")


def _hint(value: Any) -> str:
    # A size string is the likeliest mistake; say what number it stands for.
    if isinstance(value, str):
        try:
            return f" (write {parse_size(value)})"
        except UnitError:
            return ""
    return ""


def _tolerance(value: Any, where: str) -> Tolerance:
    try:
        return parse_tolerance(value, what="tolerance")
    except UnitError as exc:
        raise BaselineError(f"{where}: {exc}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"[:120]


# --------------------------------------------------------------------------- dumping


def dump(baseline: BaselineFile) -> str:
    """Canonical YAML text of ``baseline``: same content, same bytes, always."""
    document: dict[str, Any] = {"profile": baseline.profile}
    if baseline.setup:  # the setup's key in the file
        document["recorded_with"] = dict(sorted(baseline.setup.items()))
    if baseline.tolerance is not None:
        document["tolerance"] = str(baseline.tolerance)
    document["entries"] = {
        key: _entry_document(baseline.entries[key]) for key in sorted(baseline.entries)
    }
    text = yaml_dialect.canonical(document)
    return _with_comments(text, document, baseline.comments) if baseline.comments else text


def _with_comments(text: str, document: dict[str, Any], comments: Comments) -> str:
    """``text`` (the canonical dump of ``document``) with ``comments`` put back at their keys.

    Comments whose key is gone (a pruned entry) go with it.
    """
    lines = text.splitlines()
    paths = list(_key_paths(document, ()))
    out: list[str] = []
    if len(paths) != len(lines):  # a key PyYAML wrote on two lines: keep the notes at the end
        flat = [c for group in comments.before.values() for c in group]
        flat += list(comments.inline.values()) + comments.trailing
        return text + "".join(f"{c}\n" for c in flat)
    for line, path in zip(lines, paths, strict=True):
        indent = line[: len(line) - len(line.lstrip(" "))]
        out.extend(f"{indent}{c}" for c in comments.before.get(path, ()))
        note = comments.inline.get(path)
        out.append(f"{line}  {note}" if note else line)
    out.extend(comments.trailing)
    return "\n".join(out) + "\n"


def _key_paths(mapping: dict[str, Any], where: KeyPath) -> Iterator[KeyPath]:
    # One line per key in the canonical block style; a non-empty mapping's keys follow it.
    for key, value in mapping.items():
        yield (*where, key)
        if isinstance(value, dict) and value:
            yield from _key_paths(value, (*where, key))


def _entry_document(entry: Entry) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if entry.params is not None:
        document["params"] = entry.params
    document["model_bytes"] = entry.model_bytes
    document["peak_bytes"] = entry.peak_bytes
    document["activation_bytes"] = entry.activation_bytes
    if entry.largest is not None:
        document["largest"] = entry.largest
        document["card"] = entry.card
    if entry.tolerance is not None:
        document["tolerance"] = str(entry.tolerance)
    return document


def write(baseline: BaselineFile) -> None:
    """Write ``baseline`` atomically: readers see the old file or the new one, never half
    (:func:`pytest_vram.store.files.write_atomic`). A symlinked baseline is written through
    to its target (the link stays); a read-only one is refused. Any file-system error
    raises BaselineError naming the file; the old file stays intact.
    """
    data = dump(baseline).encode("utf-8")
    _check_writable(files.real_path(baseline.path))
    try:
        files.write_atomic(baseline.path, data)
    except OSError as exc:
        raise BaselineError(_write_error(baseline.path, exc)) from None


def _check_writable(path: Path) -> None:
    # Checked on the mode bits, not with os.access: as root every file is writable, and a
    # baseline someone made read-only (chmod 0444) is meant to stay as it is.
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & 0o222:
        raise BaselineError(
            f"{path}: the baseline file is read-only (mode {mode & 0o777:04o}); make it "
            f"writable (chmod u+w {path}) to update it, or run without --vram-update"
        )


def _write_error(path: Path, exc: OSError) -> str:
    if isinstance(exc, (files.NotRegular, files.InTheWay)):
        return (
            f"{path}: cannot write the baseline file ({files.describe(exc)}); make it a "
            f"regular file (or give another --vram-baselines directory), then rerun with "
            f"--vram-update"
        )
    reason = exc.strerror or str(exc)
    where = exc.filename or path
    return (
        f"{path}: cannot write the baseline file ({reason}: {where}); make its directory "
        f"writable and free some space, then rerun with --vram-update"
    )


# --------------------------------------------------------------------------- updating


def locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the per-file lock of baseline ``path`` (other processes updating it wait)."""
    return files.locked(path, BaselineError, _write_error)


def update(
    path: Path,
    profile: str,
    measured: Mapping[str, Entry],
    *,
    setup: dict[str, str],
    prune: Iterable[str] = (),
    seen: BaselineFile | None = None,
    read_before: bool = False,
) -> UpdateResult:
    """Merge ``measured`` into the baseline file at ``path``, creating it if missing.

    Measured keys are replaced (an existing per-entry ``tolerance`` override is kept unless
    the measured entry brings its own), keys in ``prune`` that were not measured are
    removed, every other entry is kept. The file is rewritten only when an entry was added,
    changed or removed; otherwise its bytes stay as they are. A malformed existing file
    raises BaselineError and is left untouched.

    The file is re-read and merged under a per-file lock, so that concurrent updates of
    different entries all survive. With ``read_before``, ``seen`` is the file as this run
    read it earlier (None: it did not exist): an entry that another run changed since is
    still replaced (last writer wins) and listed in ``UpdateResult.conflicts``. If the file
    is unchanged since ``seen``, it is not parsed again.
    """
    path = Path(path)
    check_profile_name(profile)
    if path.stem != profile:
        raise BaselineError(f"{path}: cannot hold profile {profile!r}; use {profile}.yaml")
    for key in measured:
        why = unstorable(key) if isinstance(key, str) and key else "it is not a non-empty string"
        if why is not None:  # written, the next run could not read the file back
            raise BaselineError(
                f"{path}: entry {key!r} cannot be stored: {why}; give the test a key of "
                f"printable text (nothing was written)"
            )
    with locked(path):
        text = read_text(path)
        if text is None:
            existing = None
        elif seen is not None and seen.source == text:
            existing = seen
        else:
            existing = parse(text, path)
        result = _merge(path, profile, existing, measured, setup, prune)
    if read_before:
        before = seen.entries if seen is not None else {}
        now = existing.entries if existing is not None else {}
        result.conflicts.extend(
            Change(key, now[key], measured[key])
            for key in sorted(measured)
            if key in now and now[key] != before.get(key)
        )
    return result


def _merge(
    path: Path,
    profile: str,
    existing: BaselineFile | None,
    measured: Mapping[str, Entry],
    setup: dict[str, str],
    prune: Iterable[str],
) -> UpdateResult:
    entries = dict(existing.entries) if existing else {}
    added: list[Change] = []
    changed: list[Change] = []
    unchanged: list[str] = []
    for key in sorted(measured):
        old = entries.get(key)
        new = measured[key]
        if old is not None and old.tolerance is not None and new.tolerance is None:
            new = dataclasses.replace(new, tolerance=old.tolerance)
        if old is None:
            added.append(Change(key, None, new))
        elif old != new:
            changed.append(Change(key, old, new))
        else:
            unchanged.append(key)
        entries[key] = new
    removed = [
        Change(key, entries.pop(key), None)
        for key in sorted(set(prune))
        if key in entries and key not in measured
    ]
    written = bool(added or changed or removed)
    if written:
        write(
            BaselineFile(
                path=path,
                profile=profile,
                entries=entries,
                # the setup is that of the run that last wrote the figures; a run that
                # changes nothing leaves the file (and its provenance) alone.
                setup=dict(setup),
                tolerance=existing.tolerance if existing else None,
                comments=existing.comments if existing else None,
            )
        )
    return UpdateResult(path, added, changed, unchanged, removed, written)


def stale_keys(
    baseline: BaselineFile, produced: Iterable[str], collected_files: Iterable[str]
) -> list[str]:
    """Entries of test files that ran in this session but that no test produced, sorted.

    A key is ``"<nodeid>"`` or ``"<nodeid>::<name>"``; its test file is the part before the
    first ``"::"``. Entries of files that were not collected are never stale: a partial run
    says nothing about them.
    """
    produced_set = set(produced)
    files = set(collected_files)
    return sorted(
        key
        for key in baseline.entries
        if key.split("::", 1)[0] in files and key not in produced_set
    )
