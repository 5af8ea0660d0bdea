"""Compiled workloads: ``torch.compile``'d training and inference steps, at two sizes.

``small`` is what CI runs on the estimator (tests/vram/test_compiled.py); ``realistic`` is
what ``benchmarks/compile_accuracy.py`` runs on an H200 with both backends. Each workload
is a pair: ``build(size, device)`` makes the model, compiles it and returns the state a
step needs; ``work(state, size, device)`` runs one step. :func:`warmed` runs the step once
after the build, so that the measured call is the compiled program's steady state (the
rule of docs/usage.md, "Compiled code"): what it leaves (gradients, optimizer state) is
held when the measured step starts, as in any training loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = ("small", "realistic")


@dataclasses.dataclass(frozen=True)
class Workload:
    build: Callable[[str, str], Any]
    work: Callable[[Any, str, str], Any]
    #: whether the estimate backend refuses it (the compile mode it cannot follow)
    refused_by_estimate: bool = False


def warmed(workload: Workload) -> Callable[[str, str], Any]:
    """``workload.build`` followed by one unmeasured step: compiles every graph the
    measured step runs (forward, backward, each shape of a dynamic workload)."""

    def build(size: str, device: str) -> Any:
        state = workload.build(size, device)
        workload.work(state, size, device)
        return state

    build.__qualname__ = f"warmed({workload.build.__qualname__})"
    return build


def _tf() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


@dataclasses.dataclass
class Training:
    """A compiled model, its optimizer (whose step may be compiled too) and its inputs."""

    model: Any
    optimizer: torch.optim.Optimizer
    step: Callable[[], Any]
    inputs: dict[str, Any]


def _train_step(state: Training, loss: Callable[[Any, dict[str, Any]], torch.Tensor]) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    loss(state.model, state.inputs).backward()
    state.step()


# -- an MLP ---------------------------------------------------------------------------------
def _mlp(size: str, device: str) -> nn.Module:
    d = 256 if size == "small" else 4096
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)).to(device)


def mlp_build(backend: str) -> Callable[[str, str], Training]:
    def build(size: str, device: str) -> Training:
        model = _mlp(size, device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(64 if size == "small" else 2048, model[0].in_features, device=device)
        compiled = torch.compile(model, backend=backend)
        return Training(compiled, opt, opt.step, {"x": x})

    build.__qualname__ = f"mlp_build_{backend}"
    return build


def mlp_train(state: Training, size: str, device: str) -> None:
    _train_step(state, lambda model, inputs: model(inputs["x"]).square().mean())


def mlp_infer_build(size: str, device: str) -> Any:
    model = _mlp(size, device).eval()
    x = torch.randn(64 if size == "small" else 2048, model[0].in_features, device=device)
    return torch.compile(model), x


def mlp_infer(state: Any, size: str, device: str) -> Any:
    model, x = state
    with torch.no_grad():
        return model(x)


# -- a compiled optimizer step --------------------------------------------------------------
def optimizer_build(size: str, device: str) -> Training:
    model = _mlp(size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64 if size == "small" else 2048, model[0].in_features, device=device)
    return Training(model, opt, torch.compile(opt.step), {"x": x})


# -- GPT-2 (transformers) ---------------------------------------------------------------------
def _gpt2_config(size: str) -> Any:
    T = _tf()
    if size == "small":
        return T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    return T.GPT2Config()  # GPT-2 small: 124M parameters


def _tokens(size: str, device: str, vocab: int, seq: int | None = None) -> torch.Tensor:
    seq = seq or (32 if size == "small" else 512)
    return torch.randint(0, vocab, (2 if size == "small" else 8, seq), device=device)


def gpt2_infer_build(size: str, device: str) -> Any:
    model = _tf().GPT2LMHeadModel(_gpt2_config(size)).to(device).eval()
    return torch.compile(model), _tokens(size, device, model.config.vocab_size)


def gpt2_infer(state: Any, size: str, device: str) -> Any:
    model, ids = state
    with torch.no_grad():
        return model(ids).logits


def gpt2_train_build(size: str, device: str) -> Training:
    model = _tf().GPT2LMHeadModel(_gpt2_config(size)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = _tokens(size, device, model.config.vocab_size)
    return Training(torch.compile(model), opt, opt.step, {"ids": ids})


def gpt2_train(state: Training, size: str, device: str) -> None:
    _train_step(state, lambda model, inputs: model(inputs["ids"], labels=inputs["ids"]).loss)


#: the two sequence lengths of the dynamic-shape workload: the second call recompiles the
#: model with a symbolic length (Dynamo's automatic dynamic shapes)
DYNAMIC_LENGTHS = {"small": (32, 48), "realistic": (512, 768)}


def gpt2_dynamic_build(size: str, device: str) -> Any:
    model = _tf().GPT2LMHeadModel(_gpt2_config(size)).to(device).eval()
    vocab = model.config.vocab_size
    ids = [_tokens(size, device, vocab, seq) for seq in DYNAMIC_LENGTHS[size]]
    return torch.compile(model), ids


def gpt2_dynamic(state: Any, size: str, device: str) -> Any:
    model, ids = state
    with torch.no_grad():
        return [model(each).logits for each in ids]


# -- a Llama block: SDPA with grouped-query attention ---------------------------------------
def _llama_config(size: str) -> Any:
    T = _tf()
    if size == "small":
        return T.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=256,
            attn_implementation="sdpa",
        )
    return T.LlamaConfig(  # one block of a ~1B model, GQA 16:4
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=1,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )


def llama_build(size: str, device: str) -> Training:
    cls, config = _tf().LlamaModel, _llama_config(size)
    model = cls(config).to(device=device, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = _tokens(size, device, config.vocab_size, 64 if size == "small" else 2048)
    return Training(torch.compile(model), opt, opt.step, {"ids": ids})


def llama_train(state: Training, size: str, device: str) -> None:
    _train_step(
        state, lambda model, inputs: model(inputs["ids"]).last_hidden_state.float().square().mean()
    )


# -- a ResNet-style CNN ---------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.down is None else self.down(x))
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_build(size: str, device: str) -> Training:
    if size == "small":
        model, n, batch = ResNet((8, 16), 1, 10).to(device), 32, 4
    else:
        model, n, batch = ResNet((64, 128, 256, 512), 2, 1000).to(device), 224, 32
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, n, n, device=device)
    y = torch.randint(0, model.head.out_features, (batch,), device=device)
    return Training(torch.compile(model), opt, opt.step, {"x": x, "y": y})


def resnet_train(state: Training, size: str, device: str) -> None:
    _train_step(state, lambda model, inputs: F.cross_entropy(model(inputs["x"]), inputs["y"]))


# -- CUDA graphs ----------------------------------------------------------------------------
def mlp_reduce_overhead_build(size: str, device: str) -> Any:
    model = _mlp(size, device).eval()
    x = torch.randn(64 if size == "small" else 2048, model[0].in_features, device=device)
    return torch.compile(model, mode="reduce-overhead"), x


WORKLOADS: dict[str, Workload] = {
    "mlp-train-inductor": Workload(mlp_build("inductor"), mlp_train),
    "mlp-train-aot_eager": Workload(mlp_build("aot_eager"), mlp_train),
    "mlp-train-eager": Workload(mlp_build("eager"), mlp_train),
    "mlp-inference": Workload(mlp_infer_build, mlp_infer),
    "optimizer-step-adamw": Workload(optimizer_build, mlp_train),
    "gpt2-inference": Workload(gpt2_infer_build, gpt2_infer),
    "gpt2-train-adamw": Workload(gpt2_train_build, gpt2_train),
    "gpt2-dynamic-lengths": Workload(gpt2_dynamic_build, gpt2_dynamic),
    "llama-block-sdpa-gqa-bf16-train": Workload(llama_build, llama_train),
    "resnet-train-sgd-momentum": Workload(resnet_build, resnet_train),
    "mlp-inference-reduce-overhead": Workload(
        mlp_reduce_overhead_build, mlp_infer, refused_by_estimate=True
    ),
}
