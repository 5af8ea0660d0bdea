"""inference and train_step on tiny models on the CPU, every phase and Phase 8 mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import model_zoo
from model_zoo import model as model_module

pytestmark = pytest.mark.filterwarnings("ignore:.*autocast.*:UserWarning")

# Phase 8 in each mode; None is Phase 7.
VARIANTS = [
    ("phase7", None),
    ("phase8", 0.01),  # linear
    ("phase8", 0.8),  # hybrid with the exact path
    ("phase8", 2.0),  # exact
]
# fp64 runs outside autocast's reach, so all modes must be finite there. Under FP16 autocast
# the exact path can overflow (a property of the original formula, kept; see docs/zoo.md).
DTYPES = [torch.float32, torch.float16, torch.float64]
BATCH, SEQ = 2, 12


def build(phase: str, curvature: float | None, dtype: torch.dtype) -> nn.Module:
    return model_zoo.build_model("tiny", phase, device="cpu", dtype=dtype, curvature=curvature)


def expect_finite(curvature: float | None, dtype: torch.dtype) -> bool:
    exact_runs = curvature is not None and model_zoo.computes_exact(curvature)
    return dtype == torch.float64 or not exact_runs


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(("phase", "curvature"), VARIANTS)
def test_inference_returns_logits_in_eval_mode(phase, curvature, dtype) -> None:
    model = build(phase, curvature, dtype)
    logits = model_zoo.inference(model, batch=BATCH, seq_len=SEQ)
    assert logits.shape == (BATCH, SEQ, model.config.vocab_size)
    assert not logits.requires_grad
    assert not model.training
    if expect_finite(curvature, dtype):
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(("phase", "curvature"), VARIANTS)
def test_train_step_backpropagates_into_every_parameter(phase, curvature, dtype) -> None:
    model = build(phase, curvature, dtype)
    loss = model_zoo.train_step(model, batch=BATCH, seq_len=SEQ)
    assert loss.shape == () and not loss.requires_grad
    assert model.training
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    if expect_finite(curvature, dtype):
        assert torch.isfinite(loss)
        # ~ln(vocab) for an untrained model.
        assert 0.5 * torch.log(torch.tensor(512.0)) < loss < 2 * torch.log(torch.tensor(512.0))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_train_step_checkpoints_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_checkpoint = model_module.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(model_module, "checkpoint", spy)
    model = build("phase8", None, torch.float32)
    model_zoo.inference(model, seq_len=SEQ)
    assert calls == []  # inference does not checkpoint
    model_zoo.train_step(model, seq_len=SEQ)
    assert calls == [False] * model.config.n_layers


def test_train_step_replaces_gradients_instead_of_accumulating() -> None:
    model = build("phase7", None, torch.float64)
    model_zoo.train_step(model, seq_len=SEQ)
    first = [p.grad.clone() for p in model.parameters()]
    model_zoo.train_step(model, seq_len=SEQ)
    for before, p in zip(first, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, before)


def test_train_step_is_deterministic() -> None:
    losses = [model_zoo.train_step(build("phase8", None, torch.float32), seq_len=SEQ) for _ in "ab"]
    assert torch.equal(losses[0], losses[1])


def test_tokens_are_deterministic_and_in_range() -> None:
    ids = model_zoo.tokens(2, 300, 7, torch.device("cpu"))
    assert ids.shape == (2, 300) and ids.dtype == torch.int64
    assert ids.min() == 0 and ids.max() == 6
    assert torch.equal(ids, model_zoo.tokens(2, 300, 7, torch.device("cpu")))
