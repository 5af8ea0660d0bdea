"""Where the memory went: what was live at a workload's peak, by module and category.

A :class:`Collector` follows one test. Every new device storage and its release is reported
to it (by the estimator's storage tracker, or on a real GPU by :class:`_DispatchTracker`, a
dispatch mode that watches operator outputs) together with what was running when it was
made: the module (its path in the built model, e.g. ``blocks.3.attn``), forward or backward,
an optimizer step, the operator and the user's source line. The collector only appends an
event per allocation and per release; at the end of a workload it replays the events up to
the highest total and groups what was live there.

Categories say what a tensor *is*, whenever the peak falls: ``parameters`` and
``buffers`` (of the built models and of every module that runs), ``gradients`` (a
parameter's ``.grad``, noted when backward accumulates it and when an optimizer steps, so
a ``zero_grad()`` after the step does not turn it into something else), ``optimizer
state`` (in an optimizer's ``state`` after its step), ``temporaries`` (made during an
optimizer step and not kept in its state), ``activations`` (made inside a module's
forward or in backward), ``workspaces`` (buffers a kernel uses internally; the
estimator's model of them), ``inputs/other`` (everything else: inputs, tensors made
outside any module). What a tensor is becomes known at different moments; each is noted
with the position in the event log at which it was true, and names the allocation that
was live at that position.

A breakdown is plain JSON-able data (see :func:`Collector.breakdown`), read by
:mod:`pytest_vram.core.breakdown`. torch is imported inside the functions that need it, so
importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import _pytest
import pluggy

from pytest_vram.core.breakdown import pattern

#: Groups kept in a breakdown (the rest is summed into one ``(other)`` group).
MAX_GROUPS = 40
#: Allocation sites kept in a breakdown.
MAX_SITES = 10
#: Module of allocations made outside any module.
NO_MODULE = "(no module)"
#: Module of an optimizer's allocations whose parameter belongs to no known module.
OPTIMIZER = "(optimizer)"
#: Categories known by identity; where one storage is noted as two, the first listed wins.
IDENTITIES = ("parameters", "buffers", "gradients", "optimizer state")
_RANK = {category: rank for rank, category in enumerate(IDENTITIES)}

#: torch.compile's warning, at each call of its wrapper while global module hooks exist,
#: that they fire once more for the wrapper: the hooks here know the wrapper and skip it.
_COMPILE_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"

#: the pytest_vram package: its frames are never the user's source line
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIPPED_DIRS: tuple[str, ...] = ()


def _skipped_dirs() -> tuple[str, ...]:
    """Directories whose frames are not "the user's source line": torch, this package,
    the standard library's contextlib/functools, pytest and pluggy."""
    global _SKIPPED_DIRS
    if not _SKIPPED_DIRS:
        import torch  # on first use: importing this module does not import torch

        dirs = [os.path.dirname(m.__file__ or "") for m in (torch, _pytest, pluggy)]
        dirs += [_PACKAGE_DIR, os.path.dirname(contextlib.__file__)]
        _SKIPPED_DIRS = tuple(d + os.sep for d in dirs)
    return _SKIPPED_DIRS


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's code (not torch, this package, pytest, pluggy,
    contextlib)."""
    return not filename.startswith(_skipped_dirs()) and not filename.startswith("<")


#: code object -> 0 (library), 1 (user code), 2 (a dispatch mode's handler: has the op)
_CODE_KIND: dict[Any, int] = {}


def _code_kind(code: Any) -> int:
    kind = _CODE_KIND.get(code)
    if kind is None:
        kind = _CODE_KIND[code] = (
            2 if code.co_name == "__torch_dispatch__" else int(is_user_file(code.co_filename))
        )
    return kind


def _call_site() -> tuple[str, str | None]:
    """(``file:line`` of the innermost user frame, operator name if a dispatch frame has one)."""
    frame = sys._getframe(2)
    op = None
    while frame is not None:
        kind = _CODE_KIND.get(frame.f_code)
        if kind is None:
            kind = _code_kind(frame.f_code)
        if kind == 1:
            return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno}", op
        if kind == 2 and op is None:
            func = frame.f_locals.get("func")
            op = getattr(func, "__name__", None) or str(func)
        frame = frame.f_back
    return "?", op


@functools.lru_cache(maxsize=1024)
def _short_path(filename: str) -> str:
    """The file as its import path names it (``model_zoo/model.py``), else as given."""
    best = ""
    for entry in (os.getcwd(), *sys.path):
        entry = os.path.abspath(entry or os.curdir) + os.sep
        if filename.startswith(entry) and len(entry) > len(best):
            best = entry
    return filename[len(best) :] if best else filename


def _compiled(module: Any) -> Any | None:
    """The module that ``module`` wraps if it is ``torch.compile``'s ``OptimizedModule``,
    else None. torch is looked up, never imported."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    if wrapper is not None and isinstance(module, wrapper):
        return module._orig_mod
    return None


class _Modules:
    """Which module is running, from global forward hooks, named by the module's path in
    the models the test built.

    A ``torch.compile``d module runs as one: its wrapper's call stands for the module it
    wraps (inside the compiled code no hook runs, and modules have no boundaries), and its
    submodules are known from that first call, so their parameters are named.

    In backward, the autograd node that runs is looked up: when a module's forward returns,
    the nodes its forward added to the graph are stamped with its name (``node.metadata``,
    a string: it keeps no tensor alive). torch's ``ModuleTracker`` knows the module in
    backward through autograd hooks instead, but those keep every module's graph, and so
    its saved activations, alive until they are removed, which changes the peak it is
    meant to explain.
    """

    _KEY = "pytest_vram.module"

    def __init__(
        self, names: weakref.WeakKeyDictionary[Any, str], adopt: Callable[[Any, bool], str]
    ) -> None:
        self._names = names
        self._adopt = adopt
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._warnings: contextlib.AbstractContextManager[Any] | None = None

    def current(self) -> tuple[str, str | None]:
        """(innermost running module or ``(no module)``, the autograd node in backward)."""
        import torch  # torch on use

        if self._stack:
            return self._stack[-1], None
        node = torch._C._current_autograd_node()
        if node is not None:
            return node.metadata.get(self._KEY, "(backward)"), node.name()
        return NO_MODULE, None

    def _pre(self, module: Any, args: Any) -> None:
        import torch  # torch on use

        if torch.compiler.is_compiling():
            return  # compiled, modules have no boundaries: nothing of this goes in a graph
        wrapped = _compiled(module)
        if wrapped is not None:
            module = wrapped
        name = self._names.get(module)
        if name is None:  # a module the test made outside vram.build
            name = self._adopt(module, wrapped is not None)
        if torch.is_grad_enabled():
            # The graph the inputs came from is the caller's: mark where this one's begins.
            outer = self._stack[-1] if self._stack else NO_MODULE
            self._stamp(args if isinstance(args, tuple) else (args,), outer, depth=1)
        self._stack.append(name)

    def _post(self, _module: Any, _args: Any, out: Any) -> None:
        import torch  # torch on use

        if torch.compiler.is_compiling() or not self._stack:
            return
        name = self._stack.pop()
        if torch.is_grad_enabled():
            # torch on use: this module is imported without it
            from torch.utils._pytree import tree_leaves

            self._stamp(tree_leaves(out), name)

    def _stamp(self, tensors: Any, name: str, depth: int | None = None) -> None:
        """Stamp the unstamped graph behind ``tensors`` (to ``depth`` nodes deep)."""
        todo = [(getattr(t, "grad_fn", None), 0) for t in tensors]
        while todo:
            node, level = todo.pop()
            # A parameter's AccumulateGrad node lives as long as the parameter: left alone.
            if node is None or not node.next_functions and node.name().endswith("AccumulateGrad"):
                continue
            if self._KEY in node.metadata:
                continue
            node.metadata[self._KEY] = name
            if depth is None or level + 1 < depth:
                todo.extend((n, level + 1) for n, _ in node.next_functions)

    def __enter__(self) -> _Modules:
        # torch on use: this module is imported without it
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", _COMPILE_HOOKS_WARNING, UserWarning)
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack.clear()
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None


class Collector:
    """Follows one test's storages and says what was live at a workload's peak."""

    def __init__(self) -> None:
        #: (key, bytes, context id) for an allocation, (key, -1, -1) for a release
        self.events: list[tuple[int, int, int]] = []
        self._contexts: dict[tuple[str, str, str, str], int] = {}
        self._context_list: list[tuple[str, str, str, str]] = []
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        #: modules that ran without having been built: named by their class
        self._adopted: weakref.WeakSet[Any] = weakref.WeakSet()
        self._roots: list[weakref.ref[Any]] = []
        self._optimizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._modules: _Modules | None = None
        #: hooks on the known parameters while a step is followed (their gradients)
        self._grad_hooks: list[Any] = []
        self._in_step = 0
        self.phase = "run"
        #: (storage key, event position, module, category): what a storage was, noted when
        #: it was known; resolved to the allocation live at that position
        self._notes: list[tuple[int, int, str, str]] = []
        self._resolved = 0
        self._scanned = 0
        self._scan_live: dict[int, int] = {}
        #: allocation event index -> (module, category) by identity, kept once known, so
        #: that a timeline drawn after the test's objects died still names them
        self._ident_at: dict[int, tuple[str, str]] = {}

    # -- what the test built -------------------------------------------------------
    def add_model(self, obj: Any) -> None:
        """Name the modules of a built model by their path (the root is unnamed)."""
        wrapped = _compiled(obj)
        if wrapped is not None:  # torch.compile(model): named as the model itself
            obj = wrapped
        named = getattr(obj, "named_modules", None)
        if not callable(named):
            return
        prefix = f"model{len(self._roots)}." if self._roots else ""
        for name, module in named():
            if module in self._adopted:  # ran before it was returned: its path wins
                self._adopted.discard(module)
                self._names.pop(module, None)
            self._names.setdefault(module, (prefix + name).rstrip(".") or "(model)")
        self._roots.append(weakref.ref(obj))
        self._note_modules(list(self._names.items()))

    def _adopt(self, module: Any, whole: bool = False) -> str:
        """A module that runs but was not built (made in the workload or the test body):
        named by its class; its parameters and buffers are known from now on. ``whole``
        (a compiled module, whose submodules run without hooks): its submodules too."""
        found = [(m, type(m).__name__) for m in (module.modules() if whole else (module,))]
        found = [(m, name) for m, name in found if m is module or m not in self._names]
        for m, name in found:
            self._names[m] = name
            self._adopted.add(m)
        self._note_modules(found)
        if self._modules is not None:
            self._hook_gradients(found)
        return found[0][1]

    # -- the hooks -----------------------------------------------------------------
    def allocated(self, key: int, nbytes: int, op: str | None = None) -> None:
        """A new storage of ``nbytes`` (allocator-rounded) with identity ``key``."""
        site, found_op = _call_site()
        self.events.append((key, nbytes, self._context(op or found_op or "?", site)))

    def freed(self, key: int) -> None:
        self.events.append((key, -1, -1))

    def transient(self, sizes: list[int]) -> None:
        """Buffers a kernel allocates and frees internally."""
        site, op = _call_site()
        ctx = self._context(op or "?", site, category="workspaces")
        for i, n in enumerate(sizes):
            self.events.append((-1 - i, n, ctx))
        for i in reversed(range(len(sizes))):
            self.events.append((-1 - i, -1, -1))

    def _context(self, op: str, site: str, category: str | None = None) -> int:
        module, node = self._modules.current() if self._modules else (NO_MODULE, None)
        backward = node is not None
        if node is not None and op == "?":
            op = node
        if category is None:
            if self._in_step:
                # what the step keeps is named optimizer state when the step ends
                category = "temporaries"
            elif self.phase == "build":
                category = "inputs/other"
            elif module != NO_MODULE or backward:
                category = "activations"
            else:
                category = "inputs/other"
        if self._in_step and module == NO_MODULE:
            module = OPTIMIZER
        ctx = (module, category, op, site)
        found = self._contexts.get(ctx)
        if found is None:
            found = self._contexts[ctx] = len(self._context_list)
            self._context_list.append(ctx)
        return found

    @contextlib.contextmanager
    def following(self, phase: str) -> Iterator[None]:
        """Around a build step or workload: module, optimizer and gradient hooks on,
        ``phase`` noted."""
        # torch on use: this module is imported without it
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        def pre(optimizer: Any, *_: Any) -> None:
            self._optimizers.add(optimizer)
            self._note_gradients_of(optimizer)  # also those an optimizer was handed
            self._in_step += 1

        def post(optimizer: Any, *_: Any) -> None:
            self._in_step = max(0, self._in_step - 1)
            self._note_state_of(optimizer, self._owners())

        outer, outer_phase, outer_hooks = self._modules, self.phase, self._grad_hooks
        self.phase = phase
        handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        self._modules = _Modules(self._names, self._adopt)
        self._grad_hooks = []
        self._hook_gradients(list(self._names.items()))
        try:
            with self._modules:
                yield
        finally:
            for handle in (*handles, *self._grad_hooks):
                handle.remove()
            self._modules, self.phase, self._grad_hooks = outer, outer_phase, outer_hooks

    # -- what a tensor is ------------------------------------------------------------
    def _note(self, t: Any, module: str, category: str) -> None:
        """``t``'s storage is ``category`` of ``module`` at this point of the event log."""
        with contextlib.suppress(Exception):  # e.g. a meta tensor without storage
            key = t.untyped_storage()._cdata
            self._notes.append((key, len(self.events), module, category))

    def _note_modules(self, modules: list[tuple[Any, str]]) -> None:
        for module, path in modules:
            for _name, p in module.named_parameters(recurse=False):
                self._note(p, path, "parameters")
                if p.grad is not None:
                    self._note(p.grad, path, "gradients")
            for name, b in module.named_buffers(recurse=False):
                if b is not None:
                    self._note(b, f"{path}.{name}" if path != "(model)" else name, "buffers")

    def _hook_gradients(self, modules: list[tuple[Any, str]]) -> None:
        """Note each parameter's ``.grad`` when backward has accumulated it: a gradient
        stays one after a ``zero_grad()`` freed it, wherever the peak fell."""
        for module, path in modules:
            for _name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                with contextlib.suppress(RuntimeError):  # a parameter that takes no hooks
                    self._grad_hooks.append(
                        p.register_post_accumulate_grad_hook(
                            functools.partial(self._accumulated, path)
                        )
                    )

    def _accumulated(self, path: str, p: Any) -> None:
        if p.grad is not None:
            self._note(p.grad, path, "gradients")

    def _owners(self) -> dict[int, str]:
        """id(parameter) -> the path of the known module that holds it."""
        owner: dict[int, str] = {}
        for module, path in list(self._names.items()):
            for _name, p in module.named_parameters(recurse=False):
                owner.setdefault(id(p), path)
        return owner

    def _note_gradients_of(self, optimizer: Any) -> None:
        owner = self._owners()
        for group in getattr(optimizer, "param_groups", ()):
            for p in group.get("params", ()):
                if getattr(p, "grad", None) is not None:
                    self._note(p.grad, owner.get(id(p), OPTIMIZER), "gradients")

    def _note_state_of(self, optimizer: Any, owner: dict[int, str]) -> None:
        for p, state in getattr(optimizer, "state", {}).items():
            for value in state.values() if isinstance(state, dict) else ():
                if hasattr(value, "untyped_storage"):
                    self._note(value, owner.get(id(p), OPTIMIZER), "optimizer state")

    def _resolve(self) -> None:
        """Name the allocations the new notes are about (one pass over new events)."""
        live, events = self._scan_live, self.events
        for key, position, module, category in self._notes[self._resolved :]:
            for i in range(self._scanned, min(position, len(events))):
                k, nbytes, _ctx = events[i]
                if nbytes >= 0:
                    live.setdefault(k, i)
                else:
                    live.pop(k, None)
            self._scanned = max(self._scanned, min(position, len(events)))
            made = live.get(key)
            if made is None:
                continue
            known = self._ident_at.get(made)
            if known is None or _RANK[category] < _RANK[known[1]]:
                self._ident_at[made] = (module, category)
        self._resolved = len(self._notes)

    def _refresh_identities(self) -> None:
        """Note what the live objects are now (parameters, gradients, optimizer state),
        then name every allocation noted so far."""
        self._note_modules(list(self._names.items()))
        owner = self._owners()
        for optimizer in list(self._optimizers):
            self._note_state_of(optimizer, owner)
        self._resolve()

    # -- the breakdown -------------------------------------------------------------
    def mark(self) -> int:
        """Position in the event log; a workload's peak is searched from its mark."""
        return len(self.events)

    def breakdown(self, since: int = 0) -> dict[str, Any]:
        """What was live at the highest total after event ``since``, grouped.

        ``{"peak_bytes": total, "groups": [[module, category, bytes], ...],
        "sites": [{"op", "source", "module", "bytes", "count"}, ...]}``, largest first.
        """
        live, total, best, best_at = {}, 0, -1, 0
        for i, (key, nbytes, _ctx) in enumerate(self.events):
            if nbytes >= 0:
                if key not in live:
                    live[key] = nbytes
                    total += nbytes
            elif key in live:
                total -= live.pop(key)
            if i >= since and total > best:
                best, best_at = total, i
        if best < 0:  # nothing happened in the workload: what was held when it started
            best_at = since - 1
        return self._group(best_at)

    def _group(self, upto: int) -> dict[str, Any]:
        self._refresh_identities()
        live: dict[int, tuple[int, int, int]] = {}
        for i, (key, nbytes, ctx) in enumerate(self.events):
            if i > upto:
                break
            if nbytes >= 0:
                live.setdefault(key, (nbytes, ctx, i))
            else:
                live.pop(key, None)
        groups: dict[tuple[str, str], int] = {}
        sites: dict[tuple[str, str, str], list[int]] = {}
        for _key, (nbytes, ctx, made) in live.items():
            module, category, op, site = self._context_list[ctx]
            module, category = self._ident_at.get(made, (module, category))
            groups[(module, category)] = groups.get((module, category), 0) + nbytes
            entry = sites.setdefault((op, site, pattern(module)), [0, 0])
            entry[0] += nbytes
            entry[1] += 1
        ordered = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
        patterns: dict[tuple[str, str], int] = {}
        for (m, c), n in ordered:
            patterns[(pattern(m), c)] = patterns.get((pattern(m), c), 0) + n
        rows = [[m, c, n] for (m, c), n in ordered[:MAX_GROUPS]]
        rest = sum(n for _, n in ordered[MAX_GROUPS:])
        if rest:
            rows.append(["(other)", "inputs/other", rest])
        top_sites = sorted(sites.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_SITES]
        return {
            "peak_bytes": sum(groups.values()),
            "groups": rows,
            # every group, each module of all layers together: what is compared and stored
            "patterns": [
                [m, c, n] for (m, c), n in sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "sites": [
                {"op": op, "source": src, "module": mod, "bytes": n, "count": c}
                for (op, src, mod), (n, c) in top_sites
            ],
        }

    def labels(self) -> dict[int, str]:
        """Event index -> module pattern of every allocation (what a timeline colours)."""
        self._refresh_identities()
        out = {}
        for i, (_key, nbytes, ctx) in enumerate(self.events):
            if nbytes < 0:
                continue
            module, category = self._ident_at.get(i) or self._context_list[ctx][:2]
            out[i] = f"{pattern(module)} ({category})"
        return out


class _DispatchTracker:
    """For a backend without its own storage hook (the real GPU): a dispatch mode that
    reports every new CUDA storage an operator returns, and its release, to a collector."""

    def __init__(self, collector: Collector, device_type: str = "cuda") -> None:
        # torch on use: this module is imported without it
        from torch.utils._python_dispatch import TorchDispatchMode

        live: dict[int, Any] = {}

        def release(key: int, _ref: object) -> None:
            if live.pop(key, None) is not None:
                collector.freed(key)

        def track(t: Any, op: str) -> None:
            if t.device.type != device_type:
                return
            storage = t.untyped_storage()
            key = storage._cdata
            if key in live:
                return
            live[key] = weakref.ref(storage, functools.partial(release, key))
            collector.allocated(key, _round(storage.nbytes()), op)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def]
                import torch  # torch on use
                from torch.utils._pytree import tree_leaves

                out = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(out):
                    if isinstance(leaf, torch.Tensor):
                        track(leaf, func.__name__)
                return out

        self.mode = Mode()
        self.live = live

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.mode:
            yield


def _round(nbytes: int) -> int:
    return max(512, -(-nbytes // 512) * 512) if nbytes else 0


class Attribution:
    """The collector of one test attached to a backend: through the backend's own storage
    hook where it has one (``backend.observe(collector)``), else a dispatch mode."""

    def __init__(self, backend: Any) -> None:
        self.collector = Collector()
        observe = getattr(backend, "observe", None)
        native = callable(observe) and observe(self.collector)
        self._dispatch = None if native else _DispatchTracker(self.collector)
        self._backend = backend

    @contextlib.contextmanager
    def following(self, phase: str) -> Iterator[None]:
        with self.collector.following(phase):
            if self._dispatch is None:
                yield
            else:
                with self._dispatch.active():
                    yield

    def close(self) -> None:
        observe = getattr(self._backend, "observe", None)
        if callable(observe):
            observe(None)
