"""Where a test's tensors are: the check that a figure counted the device at all.

A model left on the CPU, or a device chosen before the backend was known (a module-level
``DEVICE = "cuda" if torch.cuda.is_available() else "cpu"`` evaluated where no GPU is
visible), makes a build step count 0 B and a workload peak at 0 B: figures that would pass
and be recorded as baselines. :func:`survey` says where the tensors of an object are
(modules, tensors, and those inside tuples, lists and dicts); :func:`causes` looks in the
test's code for why. Both only run where a step counted nothing on the device, so they
cost nothing otherwise; neither imports torch (a test that made tensors imported it).
"""

from __future__ import annotations

import dataclasses
import inspect
import linecache
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from pytest_vram.core.verdicts import Cause
from pytest_vram.measure.attribution import is_user_file

#: How deep :func:`survey` looks into containers, and how many objects it visits at most.
MAX_DEPTH = 4
MAX_OBJECTS = 100_000

#: A variable whose name says it holds a device: DEVICE, device, dev, torch_device, ...
_DEVICE_NAME = re.compile(r"device|(^|_)dev($|_)", re.IGNORECASE)
_IS_AVAILABLE = re.compile(r"\bcuda\.is_available\s*\(")


@dataclasses.dataclass
class Held:
    """Where the tensors of an object are, relative to the measured device type."""

    #: tensors on the measured device
    on_device: int = 0
    #: parameter elements elsewhere
    params: int = 0
    #: other tensors elsewhere (buffers, inputs)
    tensors: int = 0
    #: the device types of what is elsewhere
    elsewhere: set[str] = dataclasses.field(default_factory=set)

    @property
    def off_device(self) -> bool:
        return bool(self.params or self.tensors)


def device_type(device: str) -> str:
    """``"cuda:0"`` -> ``"cuda"``."""
    return str(device).split(":", 1)[0]


def survey(objects: Iterable[Any], device: str) -> Held:
    """Where the tensors of ``objects`` are: modules (their parameters and buffers),
    tensors, and those inside tuples, lists, sets and dicts, ``MAX_DEPTH`` levels deep."""
    held = Held()
    torch = sys.modules.get("torch")
    if torch is None:  # nothing made a tensor
        return held
    wanted = device_type(device)
    seen: set[int] = set()
    for t, is_param in _tensors(torch, objects, seen):
        kind = t.device.type
        if kind == wanted:
            held.on_device += 1
            continue
        held.elsewhere.add(kind)
        if is_param:
            held.params += t.numel()
        else:
            held.tensors += 1
    return held


def _tensors(torch: Any, objects: Iterable[Any], seen: set[int]) -> Iterator[tuple[Any, bool]]:
    todo = [(obj, 0) for obj in objects]
    while todo and len(seen) < MAX_OBJECTS:
        obj, depth = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p, True
            for b in obj.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    yield b, False
        elif isinstance(obj, torch.Tensor):
            yield obj, isinstance(obj, torch.nn.Parameter)
        elif depth < MAX_DEPTH and isinstance(obj, dict):
            todo.extend((v, depth + 1) for v in obj.values())
        elif depth < MAX_DEPTH and isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend((v, depth + 1) for v in obj)


def reachable(fn: Any) -> list[Any]:
    """What a workload can reach besides its arguments: its closure's cells, defaults, the
    object of a bound method, a ``functools.partial``'s arguments."""
    found: list[Any] = []
    for _ in range(3):  # partial(partial(f, ...), ...)
        found.extend(getattr(fn, "args", ()) or ())
        found.extend((getattr(fn, "keywords", None) or {}).values())
        inner = getattr(fn, "func", None)
        if inner is None or not callable(inner):
            break
        fn = inner
    if getattr(fn, "__self__", None) is not None:
        found.append(fn.__self__)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            found.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    found.extend(getattr(fn, "__defaults__", None) or ())
    found.extend((getattr(fn, "__kwdefaults__", None) or {}).values())
    return found


# --------------------------------------------------------------------------- causes


def causes(
    functions: Iterable[Callable[..., Any] | None],
    device: str,
    step: str = "",
    values: Iterable[Any] = (),
    set_up_outside: Iterable[Callable[..., Any]] = (),
) -> tuple[Cause, ...]:
    """Likely reasons why the tensors are not on ``device``, from the code of
    ``functions`` (the test function, the step's function, the test's fixtures), the
    step's arguments ``values`` and the fixtures that may have been set up outside any
    vram test, ``set_up_outside`` (wider-scoped ones).

    Code that runs inside a vram test sees the device (``torch.cuda.is_available()`` is
    True there, on the estimator too): only a device chosen at import, or by a fixture set
    up outside, can be another.
    """
    found: list[Cause] = []
    for value in values:
        other = _other_device(value, device)
        if other is not None:
            found.append(Cause("device argument", step, other))
    for fn in functions:
        if fn is not None:
            found.extend(_variables(fn, device))
    for fn in set_up_outside:
        found.extend(_chosen_inside(fn))
    unique: dict[Cause, None] = {}
    for cause in found:
        unique.setdefault(cause)
    return tuple(unique)


def _variables(fn: Any, device: str) -> Iterator[Cause]:
    """Device-named variables that ``fn`` (or a function of its module it calls) reads
    from its module or closure and that hold another device."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    module_globals = getattr(fn, "__globals__", {})
    try:
        nonlocals = inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        nonlocals = {}
    used = _names_used(code, module_globals)
    filename = code.co_filename
    calls = _is_available_lines(filename)
    for names, at_module in ((module_globals, True), (nonlocals, False)):
        for name, value in list(names.items()):
            if not isinstance(name, str) or name not in used or not _DEVICE_NAME.search(name):
                continue
            other = _other_device(value, device)
            if other is None:
                continue
            line = _assignment_line(filename, name)
            where = f"{_display(filename)}:{line}" if line else _display(filename)
            kind = "import-time device" if at_module and calls else "device variable"
            yield Cause(kind, name, other, where)


def _names_used(code: Any, module_globals: dict[str, Any], depth: int = 2) -> set[str]:
    """Names read by ``code``, its nested functions and lambdas, and (``depth`` calls
    deep) the functions of the same module it names."""
    names: set[str] = set()
    todo = [(code, 0)]
    seen: set[Any] = set()
    while todo:
        current, level = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names.update(current.co_names)
        names.update(current.co_freevars)
        todo.extend((c, level) for c in current.co_consts if inspect.iscode(c))
        if level >= depth:
            continue
        for name in current.co_names:
            called = module_globals.get(name)
            inner = getattr(called, "__code__", None)
            if inner is not None and getattr(called, "__globals__", None) is module_globals:
                todo.append((inner, level + 1))
    return names


def _chosen_inside(fn: Any) -> Iterator[Cause]:
    """A fixture (not a module's top level) that calls ``torch.cuda.is_available()``."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return
    for offset, text in enumerate(lines):
        if _IS_AVAILABLE.search(text):
            where = f"{_display(code.co_filename)}:{first + offset}"
            yield Cause("is_available in fixture", getattr(fn, "__qualname__", "?"), "", where)
            return


def _other_device(value: Any, device: str) -> str | None:
    """The device ``value`` names if it is a device other than ``device``'s type."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(value, torch.device):
        kind = value.type
    elif isinstance(value, str) and value and len(value) < 32:
        try:
            kind = torch.device(value).type
        except (RuntimeError, ValueError):
            return None
    else:
        return None
    return None if kind == device_type(device) else str(value)


def _is_available_lines(filename: str) -> list[int]:
    return [
        number
        for number, text in enumerate(linecache.getlines(filename), start=1)
        if _IS_AVAILABLE.search(text)
    ]


def _assignment_line(filename: str, name: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(name)}\s*(:[^=]*)?=[^=]")
    for number, text in enumerate(linecache.getlines(filename), start=1):
        if pattern.match(text):
            return number
    return None


def user_line(tb: TracebackType | None) -> str:
    """``file:line`` of the innermost frame of ``tb`` in the user's code (not torch's, not
    this package's, not pytest's), or ``""``."""
    found = ""
    for frame, lineno in traceback.walk_tb(tb):
        if is_user_file(frame.f_code.co_filename):
            found = f"{_display(frame.f_code.co_filename)}:{lineno}"
    return found


def user_frame_values(tb: TracebackType | None) -> list[Any]:
    """The local variables of the user's frames of ``tb`` (the test function, its steps):
    what the code that failed was working with."""
    found: list[Any] = []
    for frame, _lineno in traceback.walk_tb(tb):
        if is_user_file(frame.f_code.co_filename):
            found.extend(frame.f_locals.values())
    return found


def _display(filename: str) -> str:
    """``filename`` relative to the working directory where it lies inside it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        return filename
    return filename if relative.startswith(os.pardir) else relative
