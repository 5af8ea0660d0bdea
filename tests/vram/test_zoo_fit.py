"""The report's card, asked: which pairs fit an RTX 3080 Laptop GPU (8 GiB), and how large a
batch and a context fit it.

Every test runs on the report's card (``card="rtx3080-laptop"``: 8191 MiB, the figure torch
reports on that GPU): an allocation it cannot serve raises ``torch.OutOfMemoryError`` there,
on the estimator (the card's capacity enforced) as on a GPU capped to it. Each asks
``vram.largest`` for one (preset, phase) and the report's workloads:

* ``test_largest_batch[<preset>-<phase>-inference]``: the report's protocol (eval, no grad,
  FP16 autocast) at 512 tokens: the largest batch; the report's claim holds where it is 1
  or more;
* ``test_largest_batch[<preset>-<phase>-train]``: a training step (checkpointed blocks, FP16
  autocast, no optimiser) at 512 tokens: the largest batch, 0 where not even one sequence
  trains;
* ``test_largest_context[<preset>-<phase>]``: inference at batch 1: the longest sequence,
  in steps of 512 tokens.

The answers are recorded in the baselines with the card and gated like a figure: a change
that lowers one fails with what grew at the value that no longer fits. What the card holds
besides PyTorch (its CUDA context, the libraries) is not measured, so its whole capacity
counts as usable and the answers are upper bounds for the real laptop (the note after the
table says so). docs/suite.md, "Fitting the report's card", has the answers.
"""

from __future__ import annotations

import functools

import pytest
from zoo_suite import PAIR_IDS, PAIRS

import model_zoo

#: the source report's GPU (backends/cards.py)
CARD = "rtx3080-laptop"
#: the tokens of the report's protocol, at which the batch is asked
TOKENS = 512
#: the context is asked in steps of this many tokens, up to CONTEXT_HIGH
CONTEXT_STEP = 512
CONTEXT_HIGH = 1 << 17
#: no batch of the zoo's sizes comes near this on 8 GiB
BATCH_HIGH = 256

pair = pytest.mark.parametrize(("preset", "phase"), PAIRS, ids=PAIR_IDS)
WORKLOADS = {"inference": model_zoo.inference, "train": model_zoo.train_step}


@pytest.mark.vram(card=CARD)
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pair
def test_largest_batch(vram, preset: str, phase: str, workload: str) -> None:
    model = vram.build(model_zoo.build_model, preset, phase, device=vram.device)

    def step(batch: int) -> None:
        WORKLOADS[workload](model, batch=batch, seq_len=TOKENS)

    # a training step leaves its gradients in .grad, which the next probe must not start with
    vram.largest(step, high=BATCH_HIGH, reset=functools.partial(model.zero_grad, True))


@pytest.mark.vram(card=CARD)
@pair
def test_largest_context(vram, preset: str, phase: str) -> None:
    model = vram.build(model_zoo.build_model, preset, phase, device=vram.device)

    def step(seq_len: int) -> None:
        model_zoo.inference(model, batch=1, seq_len=seq_len)

    vram.largest(step, low=CONTEXT_STEP, high=CONTEXT_HIGH, step=CONTEXT_STEP)
