"""What the estimator refuses, and how it says so: the user's line, the reason, the fix.

An operation whose result (and so the memory after it) depends on tensor values, an
operator without a fake kernel, a ``torch.compile`` the estimate cannot follow: each fails
the test with :class:`EstimateUnsupported`, whose message names the user's line (not
torch's or the estimator's), why the estimate cannot follow, and what to do instead. Where
such a read only decides values, never memory (weight initialisation, an optimizer's step
count), a fixed answer is given instead (:data:`_VALUE_FREE_CALLERS`).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import traceback
from typing import Any

import torch

from pytest_vram.backends.estimate.transformers_support import value_dependent_hint

_TORCH_DIR = os.path.dirname(torch.__file__)
#: this package (pytest_vram): its frames are never the user's
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: where installed libraries live: a value read inside one is named with its caller too
_LIBRARY_DIRS = (_TORCH_DIR, *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
#: torch's own machinery between user code and a mode's ``__torch_dispatch__``.
_MACHINERY = tuple(
    os.path.join(_TORCH_DIR, p)
    for p in (
        "_subclasses",
        "_ops.py",
        "_compile.py",
        "utils/_python_dispatch.py",
        "_tensor.py",
        "overrides.py",
        "_dynamo",
        "_prims",
        "_refs",
        "_decomp",
    )
)


class EstimateUnsupported(RuntimeError):
    """An operation whose result (and so the memory after it) depends on tensor values."""


def user_frames() -> list[traceback.FrameSummary]:
    """The calling stack, innermost first, without torch's dispatch machinery and ours."""
    frames = traceback.extract_stack(sys._getframe(1))
    return [
        f
        for f in reversed(frames)
        if not f.filename.startswith(_MACHINERY) and not f.filename.startswith(_PACKAGE_DIR)
    ]


#: Source files whose value-dependent scalar reads decide *values*, never memory, and the
#: answer given there (by the type of the scalar read: float, int, bool).
#:
#: * weight initialisation: ``trunc_normal_`` redraws out-of-range samples until none is
#:   left; "nothing to redraw" (no CUDA memory is measured during a build anyway);
#: * ``torch.optim``: step counts and hyperparameters kept in tensors (``_get_value``,
#:   Adafactor's norms, ASGD's ``mu``) scale the update; the first step's value, 1;
#: * ``torch.amp.GradScaler``: ``found_inf`` decides whether the optimizer step runs; the
#:   estimate assumes finite gradients (0 infs), i.e. the step runs and creates its state.
_VALUE_FREE_CALLERS: tuple[tuple[str, tuple[float, int, bool]], ...] = (
    (os.path.join(_TORCH_DIR, "nn", "init.py"), (0.0, 0, False)),
    (os.path.join(_TORCH_DIR, "optim", ""), (1.0, 1, False)),
    (os.path.join(_TORCH_DIR, "amp", "grad_scaler.py"), (0.0, 0, False)),
    # clip_grad_norm_(error_if_nonfinite=True): "is the total norm NaN or inf?" decides
    # whether to raise, never what is allocated; finite, as for GradScaler's found_inf
    (os.path.join(_TORCH_DIR, "nn", "utils", "clip_grad.py"), (0.0, 0, False)),
)


def _value_free_answer(filename: str, dtype: torch.dtype) -> float | int | bool | None:
    for prefix, (real, integer, boolean) in _VALUE_FREE_CALLERS:
        if filename.startswith(prefix):
            if dtype == torch.bool:
                return boolean
            return real if dtype.is_floating_point else integer
    return None


def value_dependent(func: Any, args: Any) -> Any:
    """Answer a value-dependent query where memory cannot depend on it, else explain.

    Fake tensors have no values: ``.item()``, ``bool(t)``, ``nonzero``, boolean indexing
    cannot be computed. Where the answer only decides values (see ``_VALUE_FREE_CALLERS``)
    a fixed answer is given; anywhere else the figure would depend on data the estimator
    does not have, so the test fails, naming the user's line.
    """
    frames = user_frames()
    if func is torch.ops.aten._local_scalar_dense.default and frames:
        answer = _value_free_answer(frames[0].filename, args[0].dtype)
        if answer is not None:
            return answer
    hint = value_dependent_hint(frames) or _data_loader_hint(frames)
    fix = f"{hint}; or measure" if hint else "Measure"
    raise EstimateUnsupported(
        f"the estimate backend cannot run {func} at {user_line(frames)}: its result depends "
        "on tensor values, which fake tensors do not have (e.g. .item(), nonzero, boolean "
        f"indexing, data-dependent control flow). {fix} this test with --vram-backend=cuda, "
        "or mark it @pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."
    ) from None


_TORCH_DATA_DIR = os.path.join(_TORCH_DIR, "utils", "data", "")


def _data_loader_hint(frames: list[traceback.FrameSummary]) -> str | None:
    """The fix for a shuffled order that ``data_loading`` leaves fake: a sampler or
    ``random_split`` drawing from torch's default generator over a dataset whose items
    may differ in size."""
    if not any(f.filename.startswith(_TORCH_DATA_DIR) for f in frames):
        return None
    return (
        "torch.utils.data shuffles here (a sampler's order, or random_split's), and over "
        "a dataset other than a TensorDataset the order decides which items form each "
        "batch, and so the batches' shapes; the estimate backend draws it only where it "
        "is the same on the GPU: pass the DataLoader (or random_split) a seeded "
        "generator=torch.Generator().manual_seed(0), or use a TensorDataset, whose "
        "items all have one shape"
    )


def user_line(frames: list[traceback.FrameSummary]) -> str:
    """Where the program called what the estimator cannot run: the innermost line outside
    torch (and torch's line inside it), and the first outside installed libraries."""
    where = next((f for f in frames if not f.filename.startswith(_TORCH_DIR)), None)
    line = f"{where.filename}:{where.lineno} ({where.line})" if where else "an unknown line"
    if frames and where is not frames[0]:
        line += f", inside {frames[0].filename}:{frames[0].lineno}"
    caller = next((f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)), None)
    if caller is not None and where is not None and caller is not where:
        line += f", called from {caller.filename}:{caller.lineno} ({caller.line})"
    return line


#: why an operator without a fake kernel is called, where a common idiom reaches one
_NO_KERNEL_HINTS = {
    "_nested_tensor_from_mask_left_aligned": (
        "nn.TransformerEncoder's inference fast path, which packs a padded batch into "
        "nested tensors (fake tensors have none); with enable_nested_tensor=False the "
        "padded batch runs as in training, on the GPU too"
    ),
}


#: how a ``torch.library.custom_op`` without ``register_fake`` fails in the fake mode
CUSTOM_OP_WITHOUT_FAKE = "There was no fake impl registered for "


def no_kernel(func: Any, torch_advice: str | None = None) -> EstimateUnsupported:
    """The error for an operator that has no fake (meta) kernel.

    torch's fake mode would run such an operator for real on zero-filled copies of its
    inputs (the "fallback kernel"): on a CPU-only torch that fails for CUDA tensors with
    "Torch not compiled with CUDA enabled", and anywhere it allocates memory the estimate
    does not see. The estimator turns the fallback off and says what to do. A custom
    operator (``torch.library.custom_op``) gets torch's own advice (``torch_advice``).
    """
    where = user_line(user_frames())
    skip = "or mark it @pytest.mark.vram(skip_estimate='<reason>') to skip it on the estimator."
    if torch_advice is None and getattr(func, "namespace", "aten") not in ("aten", "prims"):
        torch_advice = "torch.library.register_fake adds one"
    if torch_advice is not None:
        return EstimateUnsupported(
            f"the estimate backend cannot run the custom operator {func} at {where}: it has "
            f"no fake kernel, so what it allocates cannot be predicted ({torch_advice}). "
            f"Register one, measure this test with --vram-backend=cuda, {skip}"
        )
    name = getattr(func, "__name__", str(func)).split(".")[0]
    hint = _NO_KERNEL_HINTS.get(name)
    because = f" (here: {hint})" if hint else ""
    return EstimateUnsupported(
        f"the estimate backend cannot run {func} at {where}: torch {torch.__version__} has "
        f"no fake (meta) kernel for it, so what it allocates cannot be predicted{because}. "
        f"Measure this test with --vram-backend=cuda, {skip}"
    )


def compile_message(exc: BaseException) -> str:
    """A ``torch.compile`` failure on the estimator: the user's line, torch's error, the fix."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not f.filename.startswith((_TORCH_DIR, _PACKAGE_DIR))]
    line = f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else "?"
    cause = getattr(exc, "inner_exception", None) or exc
    what = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return (
        f"the estimate backend could not compile the torch.compile'd code called at {line}: "
        f"{type(cause).__name__}: {what[:500]} (docs/estimator.md, 'torch.compile', says what "
        "the estimate of compiled code supports). Measure this test with "
        "--vram-backend=cuda, call the uncompiled module (e.g. the OptimizedModule's "
        "._orig_mod) for the estimate, or mark the test "
        "@pytest.mark.vram(skip_estimate='torch.compile')."
    )
