"""Reading the command line's inputs, each validated before any work is done.

* :func:`load_run`: a run from a ``--vram-json`` file, a baseline file
  (``baselines/estimate.yaml``, read with the bounded loader of the baseline store) or a
  baseline file as committed on a branch (``git:main:baselines/estimate.yaml``, read with
  ``git show``);
* :func:`load_measurements`: the validated measurements of a ``--vram-json`` file;
* :func:`load_records`: its measurements as Records, every field checked (the PR comment);
* :func:`load_breakdowns`: a stored breakdowns file (``baselines/breakdowns/<profile>.yaml``).

Every problem is a :class:`RunError` whose message is one line: the input, what is wrong
and the fix. Nothing else escapes: an error that the checks did not foresee is still
reported against the input it came from.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_vram.core.records import Record
from pytest_vram.core.runs import Run
from pytest_vram.core.units import UnitError, parse_tolerance
from pytest_vram.core.verdicts import COMPARED, RESERVED, Kind
from pytest_vram.render.json_report import JSON_VERSION
from pytest_vram.store import baselines, breakdowns, files
from pytest_vram.store.baselines import BaselineError

#: Input bounds: a ``--vram-json`` file holds a few KiB per measurement (its breakdown
#: included); a larger one is a mistake, refused before it is read into memory. A baseline
#: file keeps the store's own bound.
MAX_JSON_BYTES = 256 * 1024**2
MAX_BREAKDOWN_BYTES = baselines.MAX_FILE_BYTES
#: Figures are byte counts below 16 EiB, as in the baseline files.
MAX_COUNT = baselines.MAX_COUNT

_WRITE_IT = "write it with `pytest --vram-json=PATH`"
_BREAKDOWNS_FIX = "it is written by pytest --vram-update (baselines/breakdowns/<profile>.yaml)"


class RunError(ValueError):
    """An input of the command line that cannot be used; the message names it and the fix."""


# --------------------------------------------------------------------------- reading


def read_input(spec: str, limit: int) -> tuple[str, bool]:
    """The text of ``spec`` (a file or ``git:REF:PATH``) and whether it is named ``*.json``."""
    if spec.startswith("git:"):
        text, path = _read_git(spec, limit)
    else:
        text, path = _read_file(spec, limit), spec
    return text, path.endswith(".json")


def _read_file(spec: str, limit: int) -> str:
    path = Path(spec)
    if path.is_dir():
        raise RunError(f"{spec}: is a directory; give the file itself")
    try:
        data = files.read_bounded(path, limit)
    except files.TooLarge:
        raise RunError(
            f"{spec}: larger than {limit // 1024**2} MiB; not a file pytest-vram wrote"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise RunError(f"{spec}: cannot read it ({_reason(exc)})") from None
    if data is None:
        raise RunError(f"{spec}: no such file; check the path")
    return _decode(spec, data)


def _read_git(spec: str, limit: int) -> tuple[str, str]:
    ref, _, path = spec[4:].partition(":")
    example = "e.g. git:main:baselines/estimate.yaml"
    if not ref or not path:
        raise RunError(f"{spec}: expected git:REF:PATH, {example}")
    if ref.startswith("-"):  # would be read by git as an option
        raise RunError(f"{spec}: a git ref cannot start with '-'; {example}")
    try:
        done = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, check=False)
    except (OSError, ValueError) as exc:
        raise RunError(f"{spec}: cannot run git show ({_reason(exc)}); is git installed?") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RunError(
            f"{spec}: git show {ref}:{path} failed: {detail[0] if detail else done.returncode}"
        )
    if len(done.stdout) > limit:
        raise RunError(f"{spec}: larger than {limit // 1024**2} MiB; not a file pytest-vram wrote")
    return _decode(spec, done.stdout), path


def _decode(label: str, data: bytes) -> str:
    try:
        return files.decode(data)
    except files.NotText as exc:
        raise RunError(
            f"{label}: {exc}; pytest-vram writes its files in UTF-8: give the file it wrote"
        ) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- JSON


class _Duplicate(Exception):
    pass


class _NotANumber(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # the rare case: find the key for the message
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise _NotANumber(name)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(label: str, text: str) -> Any:
    """The JSON document of ``text``: duplicate keys, NaN and Infinity refused."""
    try:
        data = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except _NotANumber as nan:
        raise RunError(
            f"{label}: holds {nan} (not a JSON number); figures are integers: {_WRITE_IT}"
        ) from None
    except _Duplicate as dup:
        raise RunError(
            f"{label}: key {show(dup.args[0])} appears twice in one JSON object; keep one "
            f"(a JSON reader would silently use the last)"
        ) from None
    except json.JSONDecodeError as exc:
        raise RunError(
            f"{label}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"{_WRITE_IT}"
        ) from None
    except RecursionError:
        raise RunError(
            f"{label}: nested too deeply to be a --vram-json file; {_WRITE_IT}"
        ) from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        raise RunError(f"{label}: not valid JSON ({_short(str(exc))}); {_WRITE_IT}") from None
    if _SURROGATE_ESCAPE.search(text):
        found = _surrogate(data, "")
        if found is not None:
            where, value = found
            raise RunError(
                f"{label}: {where or 'the document'} holds an unpaired surrogate escape "
                f"({value!r}), which is not text; {_WRITE_IT}"
            )
    return data


def _surrogate(data: Any, where: str) -> tuple[str, str] | None:
    """(where, the string) of the first string holding a lone surrogate, or None."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            return where, data[exc.start : exc.end]
        return None
    if not isinstance(data, (list, dict)):
        return None
    items = enumerate(data) if isinstance(data, list) else data.items()
    for key, value in items:
        inner = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip(".")
        found = _surrogate(key, f"{inner} (its name)") if isinstance(key, str) else None
        found = found or _surrogate(value, inner)
        if found:
            return found
    return None


# --------------------------------------------------------------------------- values


def show(value: Any) -> str:
    """``repr(value)``, shortened for a message."""
    return _short(repr(value))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return f"{names.get(type(value), type(value).__name__)} {show(value)}"


class _Bad(Exception):
    """A field's value is wrong: ``what`` it must be."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _count(value: Any) -> int:
    # bool is an int subclass: true must not read as 1 byte.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    raise _Bad("a non-negative integer number of bytes below 2**64")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _signed(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_COUNT:
        return value
    raise _Bad("an integer number of bytes")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Bad("a string")


def _key(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Bad("a non-empty string (the test's node id, or nodeid::name)")


def _strings(value: Any) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    raise _Bad("an object of names to strings")


def _tolerance(value: Any) -> str:
    if not isinstance(value, str) or not _is_tolerance(value):
        raise _Bad("a tolerance such as '0B', '0.5%' or '0.5% + 4MiB'")
    return value


@functools.lru_cache(maxsize=256)  # a run holds a handful of distinct tolerances
def _is_tolerance(text: str) -> bool:
    try:
        parse_tolerance(text)
    except UnitError:
        return False
    return True


_KINDS = {k.value for k in Kind}
_VERDICT_FIELDS = {*COMPARED, RESERVED}


def _verdicts(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad("a list of verdicts")
    for verdict in value:
        if not (
            isinstance(verdict, dict)
            and verdict.get("kind") in _KINDS
            and isinstance(verdict.get("fails"), bool)
            and isinstance(verdict.get("updating", False), bool)
            and isinstance(verdict.get("fields", []), list)
            and all(f in _VERDICT_FIELDS for f in verdict.get("fields", []))
        ):
            raise _Bad(
                f"a list of verdicts, each with 'kind' (one of {', '.join(sorted(_KINDS))}) "
                f"and 'fails' (true or false)"
            )
    return value


def _rows(value: Any, types: tuple[Callable[[Any], Any], ...]) -> None:
    if not isinstance(value, list):
        raise _Bad("a list")
    for row in value:
        if not isinstance(row, list) or len(row) != len(types):
            raise _Bad(f"a list of {len(types)}-item lists")
        for item, check in zip(row, types, strict=True):
            check(item)


def _breakdown(value: Any) -> dict[str, Any]:
    what = (
        "an object of what was live at the peak: 'groups' and 'patterns' as [module, "
        "category, bytes] rows, 'grown' as [group, old bytes, new bytes] rows"
    )
    if not isinstance(value, dict):
        raise _Bad(what)
    try:
        for name in ("groups", "patterns"):
            if value.get(name) is not None:
                _rows(value[name], (_text, _text, _count))
        if value.get("grown") is not None:
            _rows(value["grown"], (_text, _count, _count))
    except _Bad:
        raise _Bad(what) from None
    return value


def _time(value: Any) -> dict[str, Any]:
    """The timed rounds of pytest-benchmark, as ``benchmarking.timing`` writes them."""
    what = (
        "an object of the timed rounds: 'rounds' (a positive integer), 'min_s', 'median_s' "
        "and 'mean_s' (seconds), 'backend' (a string or null) and 'gpu' (true or false)"
    )
    if not isinstance(value, dict):
        raise _Bad(what)
    rounds = value.get("rounds")
    backend = value.get("backend")
    if not (
        isinstance(value.get("gpu"), bool)
        and (backend is None or isinstance(backend, str))
        and isinstance(rounds, int)
        and not isinstance(rounds, bool)
        and rounds > 0
        and all(_seconds(value.get(name)) for name in ("min_s", "median_s", "mean_s"))
    ):
        raise _Bad(what)
    return value


def _is(check: Callable[[Any], Any], value: Any) -> bool:
    """Whether ``check`` accepts ``value``."""
    try:
        check(value)
    except _Bad:
        return False
    return True


def _positive(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_COUNT:
        return value
    raise _Bad("a positive integer")


def _largest(value: Any) -> dict[str, Any]:
    """The answer of ``vram.largest``, as ``Largest.to_dict`` writes it."""
    what = (
        "an object of the largest value that fits: 'value' (0 or more), 'low', 'high' and "
        "'step' (positive integers, low <= high), 'card' (a string), 'probes' (a list of "
        "objects with 'value', 'fits' (true or false) and 'peak_bytes') and 'lost' (null, or "
        "an object with 'peak_bytes')"
    )
    if not isinstance(value, dict):
        raise _Bad(what)
    probes = value.get("probes", [])
    lost = value.get("lost")
    if not (
        _is(_count, value.get("value"))
        and all(_is(_positive, value.get(name)) for name in ("low", "high", "step"))
        and value["low"] <= value["high"]
        and isinstance(value.get("card"), str)
        and isinstance(probes, list)
        and all(
            isinstance(p, dict)
            and set(p) == {"value", "fits", "peak_bytes"}
            and _is(_count, p["value"])
            and isinstance(p["fits"], bool)
            and _is(_count, p["peak_bytes"])
            for p in probes
        )
        and (lost is None or (isinstance(lost, dict) and _is(_count, lost.get("peak_bytes"))))
    ):
        raise _Bad(what)
    return value


def _off_device(value: Any) -> dict[str, Any]:
    """Why the figures are not the test's device memory, as ``OffDevice.to_dict`` writes it."""
    what = (
        "an object of what is not on the device: 'step', 'device' and 'backend' (strings), "
        "'params' and 'tensors' (counts), 'elsewhere' (a list of strings) and 'causes' (a "
        "list of objects with the strings 'kind' and 'name', and optionally 'value', 'where')"
    )
    if not isinstance(value, dict):
        raise _Bad(what)
    elsewhere = value.get("elsewhere", [])
    causes = value.get("causes", [])
    if not (
        all(isinstance(value.get(name), str) for name in ("step", "device", "backend"))
        and all(_is(_count, value.get(name, 0)) for name in ("params", "tensors"))
        and isinstance(elsewhere, list)
        and all(isinstance(e, str) for e in elsewhere)
        and isinstance(causes, list)
        and all(
            isinstance(c, dict)
            and {"kind", "name"} <= set(c) <= {"kind", "name", "value", "where"}
            and all(isinstance(v, str) for v in c.values())
            for c in causes
        )
    ):
        raise _Bad(what)
    return value


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


#: What every measurement of a ``--vram-json`` document must hold, and how each field is
#: checked where present; the PR comment needs every field of a Record (:data:`RECORD`).
REQUIRED = ("key", "model_bytes", "peak_bytes")
FIELDS: dict[str, Callable[[Any], Any]] = {
    "key": _key,
    "nodeid": _text,
    "name": _optional(_text),
    "profile": _text,
    "baseline_path": _text,
    "params": _optional(_count),
    "model_bytes": _count,
    "peak_bytes": _count,
    "context": _strings,
    "tolerance": _tolerance,
    "budget": _optional(_count),
    "baseline_model_bytes": _optional(_count),
    "baseline_peak_bytes": _optional(_count),
    "verdicts": _verdicts,
    "leaked_bytes": _optional(_signed),
    "reserved_bytes": _optional(_count),
    "time": _optional(_time),
    "breakdown": _optional(_breakdown),
    "reserved_budget": _optional(_count),
    "off_device": _optional(_off_device),
    "card": _optional(_text),
    "card_note": _optional(_text),
    "largest": _optional(_largest),
    "baseline_largest": _optional(_count),
    "baseline_card": _optional(_text),
}
RECORD = (
    *REQUIRED,
    "nodeid",
    "name",
    "profile",
    "baseline_path",
    "params",
    "context",
    "tolerance",
    "budget",
    "baseline_model_bytes",
    "baseline_peak_bytes",
    "verdicts",
)


def _check_measurement(label: str, index: int, m: Any, required: tuple[str, ...]) -> None:
    if not isinstance(m, dict):
        raise RunError(f"{label}: measurements[{index}] must be an object with key, peak_bytes "
                       f"and model_bytes, got {_kind(m)}; {_WRITE_IT}")  # fmt: skip
    for name in required:
        if name not in m:
            raise RunError(f"{_where(label, index, m)}: {name!r} is missing; {_WRITE_IT}")
    for name, check in FIELDS.items():
        if name in m:
            try:
                check(m[name])
            except _Bad as bad:
                raise RunError(
                    f"{_where(label, index, m)}: {name} must be {bad.what}, got "
                    f"{_kind(m[name])}; {_WRITE_IT}"
                ) from None


def _where(label: str, index: int, m: dict[str, Any]) -> str:
    key = m.get("key")
    return f"{label}: measurements[{index}]" + (f" ({show(key)})" if isinstance(key, str) and key
                                                  else "")  # fmt: skip


# --------------------------------------------------------------------------- documents


def measurements_of(
    label: str, document: Any, required: tuple[str, ...] = REQUIRED, *, or_baseline: bool = False
) -> list[dict[str, Any]]:
    """The measurements of a ``--vram-json`` document, each checked; RunError otherwise.

    ``or_baseline``: the command also reads baseline files, and its message says so.
    """
    if not isinstance(document, dict):
        got = f"got {_kind(document)[:40]}"
    elif "version" not in document or "measurements" not in document:
        got = f"it has no {'version' if 'version' not in document else 'measurements'!r}"
    else:
        got = ""
    if got and or_baseline:
        raise RunError(
            f"{label}: neither a --vram-json file (an object with 'version' and "
            f"'measurements') nor a baseline file (with 'entries'): {got}; {_WRITE_IT}, or "
            f"give a baselines/<profile>.yaml file"
        )
    if got:
        raise RunError(
            f"{label}: not a --vram-json document of version {JSON_VERSION} ({got}); {_WRITE_IT}"
        )
    version = document["version"]
    if isinstance(version, bool) or version != JSON_VERSION:
        raise RunError(
            f"{label}: --vram-json version {show(version)} is not the one this pytest-vram "
            f"reads ({JSON_VERSION}); read it with the pytest-vram that wrote it, or rerun "
            f"pytest --vram-json with this one"
        )
    measurements = document["measurements"]
    if not isinstance(measurements, list):
        raise RunError(
            f"{label}: measurements must be a list, got {_kind(measurements)[:40]}; {_WRITE_IT}"
        )
    if document.get("run") is not None and not isinstance(document["run"], dict):
        raise RunError(f"{label}: run must be an object, got {_kind(document['run'])}; {_WRITE_IT}")
    seen: dict[str, int] = {}
    for index, m in enumerate(measurements):
        _check_measurement(label, index, m, required)
        first = seen.setdefault(m["key"], index)
        if first != index:
            raise RunError(
                f"{label}: measurements[{first}] and measurements[{index}] both have key "
                f"{show(m['key'])}; a run measures each key once: {_WRITE_IT}"
            )
    return measurements


def load_measurements(spec: str, required: tuple[str, ...] = REQUIRED) -> list[dict[str, Any]]:
    """The checked measurements of the ``--vram-json`` file ``spec``."""
    return _guarded(spec, lambda: _measurements(spec, required))


def _measurements(spec: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    text, _json = read_input(spec, MAX_JSON_BYTES)
    return measurements_of(spec, parse_json(spec, text), required)


def load_run(spec: str) -> Run:
    """A ``--vram-json`` file, a baseline YAML file, or ``git:REF:PATH``."""
    return _guarded(spec, lambda: _load_run(spec))


def _load_run(spec: str) -> Run:
    text, json_file = read_input(spec, MAX_JSON_BYTES)
    document = _sniff_json(spec, text) if not json_file else parse_json(spec, text)
    if document is not None:
        measurements = measurements_of(spec, document, or_baseline=True)
        return Run(spec, {m["key"]: m for m in measurements}, document.get("run") or {})
    if len(text) > baselines.MAX_FILE_BYTES:
        raise RunError(f"{spec}: larger than {baselines.MAX_FILE_BYTES // 1024**2} MiB; not a "
                       f"baseline file")  # fmt: skip
    try:
        baseline = baselines.parse(text, Path(spec))
    except BaselineError as exc:
        raise RunError(
            f"{_one_line(str(exc))} (a run is a --vram-json file, a baseline file or git:REF:PATH)"
        ) from None
    entries = {
        key: {
            "key": key,
            "params": e.params,
            "model_bytes": e.model_bytes,
            "peak_bytes": e.peak_bytes,
            "activation_bytes": e.activation_bytes,
            "profile": baseline.profile,
        }
        for key, e in baseline.entries.items()
    }
    return Run(spec, entries, {"recorded_with": baseline.setup})


def _sniff_json(spec: str, text: str) -> Any:
    """A ``--vram-json`` document under another name (``vram.out``), else None: YAML."""
    if spec.endswith((".yaml", ".yml")) or not text.lstrip().startswith("{"):
        return None
    try:
        document = parse_json(spec, text)
    except RunError:
        return None  # a baseline file in YAML's flow style
    return document if isinstance(document, dict) and "measurements" in document else None


def load_records(spec: str) -> list[Record]:
    """The measurements of the ``--vram-json`` file ``spec`` as Records (every field checked)."""

    def records() -> list[Record]:
        found = _measurements(spec, RECORD)
        out = []
        for index, m in enumerate(found):
            try:
                out.append(Record.from_dict(m))
            except Exception as exc:  # the checks above should leave none
                raise RunError(
                    f"{spec}: measurements[{index}] ({show(m['key'])}): cannot be read "
                    f"({type(exc).__name__}: {_short(str(exc))}); {_WRITE_IT}"
                ) from None
        return out

    return _guarded(spec, records)


def load_breakdowns(spec: str) -> dict[str, dict[str, int]]:
    """A stored breakdowns file: ``{key: {"module (category)": bytes}}``, checked."""
    return _guarded(spec, lambda: _load_breakdowns(spec), _BREAKDOWNS_FIX)


def _load_breakdowns(spec: str) -> dict[str, dict[str, int]]:
    """Read as ``pytest --vram-update`` reads its own store (:func:`breakdowns.parse`)."""
    text, _json = read_input(spec, MAX_BREAKDOWN_BYTES)
    try:
        return breakdowns.parse(text, Path(spec))
    except breakdowns.BreakdownError as exc:
        raise RunError(str(exc)) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _guarded(spec: str, read: Callable[[], Any], fix: str = _WRITE_IT) -> Any:
    """``read()``, with any error the checks did not foresee reported against ``spec``."""
    try:
        return read()
    except RunError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise RunError(f"{spec}: too large or too deeply nested to read ({type(exc).__name__})"
                       ) from None  # fmt: skip
    except Exception as exc:
        raise RunError(
            f"{spec}: cannot be read ({type(exc).__name__}: {_short(_one_line(str(exc)))}); {fix}"
        ) from None
