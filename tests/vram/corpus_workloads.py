"""The ecosystem corpus: third-party models and the usual PyTorch idioms, written the way
their documentation writes them (``Model(config).to(device)``, ``.half()``, autocast, a
plain optimizer step), at two sizes.

``small`` is what CI runs on the estimator (tests/vram/test_corpus.py); ``realistic``
(100M to 1B parameters) is what ``benchmarks/corpus_accuracy.py`` runs on an H200 with both
backends. Each workload is a pair: ``build(size, device)`` makes the model (what it leaves
allocated is the model's memory), ``work(model, size, device)`` runs one step.
"""

from __future__ import annotations

import copy
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


def _tf() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _tokens(size: str, device: str, vocab: int, batch: int = 2, seq: int | None = None) -> Any:
    seq = seq or (32 if size == "small" else 512)
    return torch.randint(0, vocab, (batch, seq), device=device)


# -- transformers ---------------------------------------------------------------------------
def _gpt2_config(size: str) -> Any:
    T = _tf()
    if size == "small":
        return T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    return T.GPT2Config()  # GPT-2 small: 124M parameters


def gpt2_build(size: str, device: str) -> Any:
    return _tf().GPT2LMHeadModel(_gpt2_config(size)).to(device)


def gpt2_half_build(size: str, device: str) -> Any:
    return _tf().GPT2LMHeadModel(_gpt2_config(size)).to(device).half().eval()


def gpt2_infer(model: Any, size: str, device: str) -> Any:
    with torch.no_grad():
        return model(_tokens(size, device, model.config.vocab_size)).logits


def gpt2_infer_inference_mode(model: Any, size: str, device: str) -> Any:
    with torch.inference_mode():
        return model(_tokens(size, device, model.config.vocab_size)).logits


def gpt2_train_bf16(model: Any, size: str, device: str) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # foreach on CUDA
    ids = _tokens(size, device, model.config.vocab_size)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()


def gpt2_train_gradscaler(model: Any, size: str, device: str) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    # A moderate initial scale, so that the GPU's first step does not overflow and skip the
    # optimizer step: the estimator assumes finite gradients (docs/estimator.md).
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    ids = _tokens(size, device, model.config.vocab_size)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


def _llama_config(size: str) -> Any:
    T = _tf()
    if size == "small":
        return T.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=256,
        )
    return T.LlamaConfig(  # ~0.5B parameters, GQA 16:4
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=4096,
    )


def llama_build(size: str, device: str) -> Any:
    # The class and its configuration are looked up before the device context, as a
    # module-level `from transformers import LlamaForCausalLM` would: transformers imports
    # its modeling modules lazily, and torchaudio (which modeling_layers imports) makes a
    # module-level tensor (kaldi's EPSILON) that, created inside `torch.device("cuda")`,
    # stays on the GPU for the life of the process: 512 B in the first test to do it, in
    # no other, so the figure depended on which test ran first (seen under -n 4 and -n 8).
    cls, config = _tf().LlamaForCausalLM, _llama_config(size)
    with torch.device(device):
        model = cls(config)
    return model.to(torch.bfloat16)


def llama_infer_long(model: Any, size: str, device: str) -> Any:
    seq = 64 if size == "small" else 2048
    with torch.no_grad():
        return model(_tokens(size, device, model.config.vocab_size, 1, seq)).logits


def llama_train_checkpointed(model: Any, size: str, device: str) -> None:
    model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = _tokens(size, device, model.config.vocab_size)
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def llama_kv_cache_decode(model: Any, size: str, device: str) -> Any:
    """Greedy decoding with a KV cache, four new tokens (what ``generate`` does, without
    its value-dependent stopping checks)."""
    T = _tf()
    ids = _tokens(size, device, model.config.vocab_size, 1, 16 if size == "small" else 512)
    try:
        cache = T.DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 builds its cache layers lazily
        cache = T.DynamicCache()
    with torch.no_grad():
        for _ in range(4):
            out = model(ids, past_key_values=cache, use_cache=True)
            ids = out.logits[:, -1:].argmax(-1)
    return ids


def generate(model: Any, size: str, device: str) -> Any:
    """``model.generate``, greedy, four new tokens, with the tokenizer's all-ones mask.

    ``eos_token_id=None``: without it generate stops when every sequence has produced
    EOS, which depends on the tokens' values, and the estimator refuses (with that fix).
    """
    ids = _tokens(size, device, model.config.vocab_size, 2, 16 if size == "small" else 512)
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=None,
    )


def bert_build(size: str, device: str) -> Any:
    T = _tf()
    if size == "small":
        cfg = T.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=1000,
        )
    else:
        cfg = T.BertConfig()  # BERT-base: 110M parameters
    return T.BertModel(cfg).to(device=device, dtype=torch.float16).eval()


def bert_infer(model: Any, size: str, device: str) -> Any:
    ids = _tokens(size, device, model.config.vocab_size)
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def vit_build(size: str, device: str) -> Any:
    T = _tf()
    if size == "small":
        cfg = T.ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
        )
    else:
        cfg = T.ViTConfig()  # ViT-base/16: 86M parameters
    return T.ViTModel(cfg).to(device)


def vit_train(model: Any, size: str, device: str) -> None:
    n = model.config.image_size
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(torch.randn(2 if size == "small" else 16, 3, n, n, device=device))
        loss = out.last_hidden_state.float().pow(2).mean()
    loss.backward()
    opt.step()


def t5_build(size: str, device: str) -> Any:
    T = _tf()
    common = {"decoder_start_token_id": 0, "pad_token_id": 0}
    if size == "small":
        cfg = T.T5Config(
            d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=1000, **common
        )
    else:
        cfg = T.T5Config(
            d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, **common
        )  # t5-base: 223M parameters
    return T.T5ForConditionalGeneration(cfg).to(device)


def t5_train(model: Any, size: str, device: str) -> None:
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-3)
    ids = _tokens(size, device, model.config.vocab_size)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def mixtral_build(size: str, device: str) -> Any:
    T = _tf()
    if size == "small":
        cfg = T.MixtralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    else:
        cfg = T.MixtralConfig(  # ~0.6B parameters, 8 experts, top-2
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=32000,
            num_local_experts=8,
            num_experts_per_tok=2,
        )
    return T.MixtralForCausalLM(cfg).to(device, dtype=torch.bfloat16)


def mixtral_train(model: Any, size: str, device: str) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = _tokens(size, device, model.config.vocab_size)
    model(ids, labels=ids).loss.backward()
    opt.step()


# -- plain PyTorch --------------------------------------------------------------------------
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
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)  # in-place residual add
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
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


def resnet_build(size: str, device: str) -> Any:
    if size == "small":
        return ResNet((8, 16), 1, 10).to(device)
    return ResNet((64, 128, 256, 512), 3, 1000).to(device)  # ResNet-34-like: 22M params


def resnet_train(model: Any, size: str, device: str) -> None:
    n, batch = (32, 4) if size == "small" else (224, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, n, n, device=device)
    y = torch.randint(0, model.head.out_features, (batch,), device=device)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def encoder_build(size: str, device: str) -> Any:
    d, heads, ff, depth = (64, 4, 128, 2) if size == "small" else (1024, 16, 4096, 12)
    layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).to(device)


def encoder_train(model: Any, size: str, device: str) -> None:
    d = model.layers[0].linear1.in_features
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(2, 32 if size == "small" else 512, d, device=device)
    model(x).pow(2).mean().backward()
    opt.step()


def mlp_build(size: str, device: str) -> Any:
    d = 64 if size == "small" else 4096
    model = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    twin = copy.deepcopy(model)  # a deep copy on the CPU, then a state dict from it
    model = model.cuda() if device.startswith("cuda") else model.to(device)
    model.load_state_dict(twin.state_dict())
    return model


#: torch.optim optimizer -> variants to run ("foreach", "fused", "for-loop")
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "SGD": ("foreach", "fused"),
    "Adam": ("foreach", "fused"),
    "AdamW": ("foreach", "fused"),
    # torch's fused Adagrad runs on the CPU only: on CUDA it raises ("`fused=True` requires
    # ... supported devices: [... no cuda]"), as the H200 showed; so no fused variant here.
    "Adagrad": ("foreach",),
    "Adadelta": ("foreach",),
    "Adamax": ("foreach",),
    "NAdam": ("foreach",),
    "RAdam": ("foreach",),
    "RMSprop": ("foreach",),
    "Rprop": ("foreach",),
    "ASGD": ("foreach",),
    "Adafactor": ("foreach",),
}


def optimizer_step(name: str, variant: str) -> Callable[[Any, str, str], None]:
    def work(model: Any, size: str, device: str) -> None:
        cls = getattr(torch.optim, name)
        kwargs: dict[str, Any] = {"lr": 1e-3}
        if name == "SGD":
            kwargs["momentum"] = 0.9
        kwargs[variant] = True
        opt = cls(model.parameters(), **kwargs)
        d = model[0].in_features
        x = torch.randn(16 if size == "small" else 2048, d, device=device)
        model(x).pow(2).mean().backward()
        opt.step()  # lazily creates the optimizer state: counted

    return work


WORKLOADS: dict[str, Workload] = {
    "gpt2-inference-fp32": Workload(gpt2_build, gpt2_infer),
    "gpt2-inference-half-inference_mode": Workload(gpt2_half_build, gpt2_infer_inference_mode),
    "gpt2-train-bf16-autocast-adamw": Workload(gpt2_build, gpt2_train_bf16),
    "gpt2-train-fp16-gradscaler-adam": Workload(gpt2_build, gpt2_train_gradscaler),
    "llama-gqa-bf16-inference-long": Workload(llama_build, llama_infer_long),
    "llama-gqa-train-checkpointing-fused-adamw": Workload(llama_build, llama_train_checkpointed),
    "llama-kv-cache-decode": Workload(llama_build, llama_kv_cache_decode),
    "bert-fp16-inference": Workload(bert_build, bert_infer),
    "vit-train-fp16-autocast-sgd": Workload(vit_build, vit_train),
    "t5-train-adafactor": Workload(t5_build, t5_train),
    "mixtral-moe-bf16-train": Workload(mixtral_build, mixtral_train),
    "resnet-cnn-train-sgd-momentum": Workload(resnet_build, resnet_train),
    "transformer-encoder-train-adam": Workload(encoder_build, encoder_train),
}
#: workloads ``benchmarks/corpus_accuracy.py --only`` measures on both backends, not yet
#: in CI's corpus (no H200 figure for them yet)
EXTRA_WORKLOADS: dict[str, Workload] = {
    "gpt2-generate": Workload(gpt2_half_build, generate),
    "llama-generate": Workload(llama_build, generate),
}
for _name, _variants in OPTIMIZERS.items():
    for _variant in _variants:
        WORKLOADS[f"optim-{_name}-{_variant}"] = Workload(
            mlp_build, optimizer_step(_name, _variant)
        )
