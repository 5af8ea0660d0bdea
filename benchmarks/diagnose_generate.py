"""What ``model.generate`` holds at its peak that a manual KV-cache loop does not (estimate).

    python benchmarks/diagnose_generate.py [gpt2|llama]

Runs, on the estimate backend, a small model's ``generate`` (greedy, four new tokens,
``eos_token_id=None``) and a loop making the same model calls (``logits_to_keep=1``, the
float32 copy of the last logits, ``cat`` of ids and mask), and prints each one's peak and
the allocations live at one peak and not at the other, by the line that made them (the
innermost frame outside torch). See docs/estimator.md, "Known values".
"""

from __future__ import annotations

import collections
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

from pytest_vram.backends import create  # noqa: E402

NEW_TOKENS = 4


def build(kind: str) -> Any:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128
        )
        return transformers.GPT2LMHeadModel(config).to("cuda").eval()
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    return transformers.LlamaForCausalLM(config).to("cuda").eval()


def generate(model: Any, ids: Any, mask: Any) -> Any:
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
    )


def manual(model: Any, ids: Any, mask: Any) -> Any:
    cache = transformers.DynamicCache(config=model.config)
    step = ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out = model(
                step, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            del out
            step = torch.argmax(logits, dim=-1)[:, None]
            ids = torch.cat([ids, step], dim=-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return ids


class LiveAtPeak:
    """Tracker observer: the live storages (size, creating line) at the highest total."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[int, str]] = {}
        self.peak = 0
        self.at_peak: dict[int, tuple[int, str]] = {}

    def allocated(self, key: int, size: int) -> None:
        self.live[key] = (size, _where())
        total = sum(s for s, _ in self.live.values())
        if total > self.peak:
            self.peak, self.at_peak = total, dict(self.live)

    def freed(self, key: int) -> None:
        self.live.pop(key, None)

    def transient(self, sizes: list[int]) -> None:
        pass


def _where() -> str:
    frames = [
        f
        for f in traceback.extract_stack()[:-2]
        if "site-packages/torch" not in f.filename and "pytest_vram" not in f.filename
    ]
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} ({(f.line or '')[:70]})"


def main(kind: str) -> int:
    backend = create("estimate")
    backend.warmup()
    seen: dict[str, collections.Counter[tuple[int, str]]] = {}
    for name, run in (("generate", generate), ("manual", manual)):
        observer = LiveAtPeak()
        backend.observe(observer)
        backend.begin_test()
        with backend.scope():
            model = build(kind)
            ids = torch.randint(0, 1000, (2, 32), device="cuda")
            mask = torch.ones_like(ids)
            before = set(observer.live)
            observer.peak = 0
            backend.reset_peak()
            run(model, ids, mask)
            print(f"{name:9} peak {backend.peak():,} B")
            seen[name] = collections.Counter(
                v for k, v in observer.at_peak.items() if k not in before
            )
        backend.end_test()
    backend.observe(None)
    for a, b in (("generate", "manual"), ("manual", "generate")):
        print(f"live at the peak of {a} only:")
        for (size, line), n in sorted((seen[a] - seen[b]).items()):
            print(f"  {size:>8,} B x{n}  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpt2"))
