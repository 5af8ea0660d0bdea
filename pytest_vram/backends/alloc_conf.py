"""The user's CUDA caching-allocator settings, and what pytest-vram accepts of them.

``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF`` hold ``key:value`` settings separated
by commas (``roundup_power2_divisions`` also takes a ``[...]`` list), tokenised the way
torch's ``ConfigTokenizer`` does (spaces dropped; ``,``, ``:``, ``[`` and ``]`` separate).
:func:`problem` is the one check that both built-in backends make when they are created,
so that the ``cuda`` backend and the estimator accept and refuse the same settings with
the same message:

* what torch itself would refuse at the first CUDA allocation (an unknown key, a value it
  cannot parse, ``expandable_segments:false`` in lower case);
* contradictions: one key set twice to different values (torch silently keeps the last),
  or both variables set to different settings (torch reads one of them, which one depends
  on its version);
* settings that rule out the figure being measured (``--vram-allocator``): in the default
  ``expandable`` mode ``expandable_segments:False`` and ``backend:cudaMallocAsync``; in
  ``default`` mode ``expandable_segments:True`` and ``backend:cudaMallocAsync`` too;
* settings that change how the counted bytes are rounded or split, which the estimator's
  allocator model does not follow and the baselines were not recorded under:
  ``roundup_power2_divisions`` (any mode) and, in ``default`` mode, ``max_split_size_mb``,
  ``max_non_split_rounding_mb`` and ``large_segment_size_mb``.

Everything else (``max_split_size_mb`` with expandable segments, ``garbage_collection_
threshold``, the pinned-memory options) changes reserved memory at most, never the gated
figure, and is accepted by both.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping

#: The environment variables torch reads its allocator settings from.
VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
#: What the cuda backend switches on for the gated figure (see docs/architecture.md).
EXPANDABLE = "expandable_segments:True"


class Invalid(ValueError):
    """A value torch would not accept; the message says what it must be."""


def _whole(minimum: int = 0) -> Callable[[str], int]:
    def check(value: str) -> int:
        if not value.isascii() or not value.isdigit() or len(value) > 19:
            raise Invalid("a whole number")
        number = int(value)
        if number < minimum:
            raise Invalid(f"a whole number of at least {minimum}")
        return number

    return check


def _flag(value: str) -> bool:
    # torch's ConfigTokenizer::toBool: exactly these two spellings.
    if value not in ("True", "False"):
        raise Invalid("True or False (with a capital letter)")
    return value == "True"


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 < number < 1.0:
        raise Invalid("a number between 0 and 1, e.g. 0.6")
    return number


def _power_of_two(value: str, zero: bool = False) -> int:
    number = _whole()(value)
    if number & (number - 1) or (number == 0 and not zero):
        raise Invalid("a power of 2" + (" or 0" if zero else ""))
    return number


def _threads(value: str) -> int:
    number = _power_of_two(value)
    if number > 128:
        raise Invalid("a power of 2 of at most 128")
    return number


def _backend(value: str) -> str:
    if value not in ("native", "cudaMallocAsync"):
        raise Invalid("native or cudaMallocAsync")
    return value


def _divisions(value: str) -> str:
    """``4``, or ``[64:8,256:4,>:1]``: intervals (powers of 2, or ``>``) to divisions."""
    if not value.startswith("["):
        _power_of_two(value)
        return value
    pairs = [pair for pair in value[1:-1].split(",") if pair]
    if not pairs:
        raise Invalid("a power of 2, or a list such as [256:4,>:1]")
    for pair in pairs:
        interval, colon, divisions = pair.partition(":")
        if not colon:
            raise Invalid("a list of interval:divisions pairs such as [256:4,>:1]")
        if interval != ">":
            _power_of_two(interval)
        _power_of_two(divisions, zero=True)
    return value


#: Every key torch's CUDA allocator settings accept, with the check of its value.
KEYS: dict[str, Callable[[str], object]] = {
    "max_split_size_mb": _whole(20),
    "max_non_split_rounding_mb": _whole(20),
    "large_segment_size_mb": _whole(11),
    "garbage_collection_threshold": _fraction,
    "roundup_power2_divisions": _divisions,
    "expandable_segments": _flag,
    "backend": _backend,
    "release_lock_on_cudamalloc": _flag,
    "pinned_use_cuda_host_register": _flag,
    "pinned_use_host_register": _flag,
    "pinned_num_register_threads": _threads,
    "pinned_use_background_threads": _flag,
    "pinned_reserve_segment_size_mb": _whole(1),
    "pinned_max_round_threshold_mb": _whole(),
    "pinned_max_cached_size_mb": _whole(),
    "graph_capture_record_stream_reuse": _flag,
}

_TORCH_REFUSES = " (torch refuses it at the first CUDA allocation)"
_RULES_OUT = (
    "rules out expandable segments, which pytest-vram measures under so that figures do not "
    "depend on what ran before in the process (docs/architecture.md). Remove that setting, "
    "or measure raw default-allocator figures with --vram-allocator=default (they can "
    "change with test order)"
)


def user_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's allocator settings: ``{"variable": "value"}`` of each one set."""
    env = os.environ if environ is None else environ
    return {var: env[var] for var in VARIABLES if env.get(var)}


def parse(var: str, value: str) -> dict[str, str]:
    """``key -> value`` of one variable's settings; ValueError with the one-line problem."""
    shown = f"{var}={value!r}"
    text = re.sub(r"\s+", "", value)
    settings: dict[str, str] = {}
    for item in _items(shown, text):
        key, colon, setting = item.partition(":")
        if not key or not colon or not setting:
            raise ValueError(
                f"{shown}: {item!r} is not a key:value setting{_TORCH_REFUSES}; write e.g. "
                f"{EXPANDABLE}"
            )
        if key not in KEYS:
            raise ValueError(
                f"{shown}: unknown setting {key!r}{_TORCH_REFUSES}; torch's allocator settings "
                f"are {', '.join(KEYS)}"
            )
        try:
            KEYS[key](setting)
        except Invalid as exc:
            raise ValueError(
                f"{shown}: {key} must be {exc}, got {setting!r}{_TORCH_REFUSES}"
            ) from None
        if key in settings and settings[key] != setting:
            raise ValueError(
                f"{shown}: sets {key} twice ({settings[key]}, then {setting}) and torch keeps "
                f"the last without a word; keep one"
            )
        settings[key] = setting
    return settings


def _items(shown: str, text: str) -> list[str]:
    """The comma-separated settings of ``text``, a ``[...]`` list kept whole."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise ValueError(f"{shown}: unbalanced brackets{_TORCH_REFUSES}; write [256:4,>:1]")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"{shown}: unbalanced brackets{_TORCH_REFUSES}; write [256:4,>:1]")
    items.append(text[start:])
    return [item for item in items if item] if text else []


def problem(allocator: str = "expandable", environ: Mapping[str, str] | None = None) -> str | None:
    """Why the user's settings cannot be measured under ``allocator`` mode, or None.

    The same text on every backend; each raises it as ``BackendUnavailable``.
    """
    conf = user_settings(environ)
    parsed = {}
    for var, value in conf.items():
        try:
            parsed[var] = parse(var, value)
        except ValueError as exc:
            return str(exc)
    if len(parsed) == 2 and parsed[VARIABLES[0]] != parsed[VARIABLES[1]]:
        a, b = (f"{var}={conf[var]!r}" for var in VARIABLES)
        return (
            f"{a} and {b} disagree, and torch reads only one of them (which one depends on its "
            f"version); set one of them"
        )
    for var, settings in parsed.items():
        found = _ruled_out(settings, allocator)
        if found is not None:
            return f"{var}={conf[var]} ({found[0]}) {found[1]}"
    return None


def _ruled_out(settings: dict[str, str], allocator: str) -> tuple[str, str] | None:
    """(the setting, why it cannot be measured and the fix), or None."""
    expandable = settings.get("expandable_segments")
    if settings.get("backend") == "cudaMallocAsync":
        why = _RULES_OUT if allocator == "expandable" else "cannot be measured: remove it"
        return "backend:cudaMallocAsync has no caching-allocator figures", why
    if allocator == "expandable" and expandable == "False":
        return "expandable_segments:False", _RULES_OUT
    if allocator != "expandable" and expandable == "True":
        return "expandable_segments:True", (
            "contradicts --vram-allocator=default, whose figures are the default settings'; "
            "remove one of them"
        )
    rounding = settings.get("roundup_power2_divisions")
    if rounding is not None and _rounds(rounding):
        return f"roundup_power2_divisions:{rounding}", (
            "rounds requests up beyond 512 B, so figures would differ from baselines recorded "
            "without it and from the estimator's allocator model; remove it for the memory tests"
        )
    if allocator != "expandable":
        for key in ("max_split_size_mb", "max_non_split_rounding_mb", "large_segment_size_mb"):
            if key in settings:
                return f"{key}:{settings[key]}", (
                    "changes which blocks the default settings split, so --vram-allocator="
                    "default figures would not be the default settings'; remove it, or measure "
                    "with expandable segments (the default)"
                )
    return None


def _rounds(divisions: str) -> bool:
    """Whether ``roundup_power2_divisions`` rounds any size (0 divisions: it does not)."""
    if not divisions.startswith("["):
        return int(divisions) != 0
    return any(int(pair.partition(":")[2]) != 0 for pair in divisions[1:-1].split(",") if pair)
