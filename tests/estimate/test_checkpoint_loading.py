"""Loading a checkpoint onto the emulated card, and host work that outlives the test.

``from_pretrained(..., device_map="cuda")`` materialises the checkpoint in a thread pool,
which the estimator runs on the calling thread, with the file's bytes read on the host
for real and their move to the card fake and counted. A CUDA result of an operator on
CPU constants (``empty_like(x, device="cuda")``) is fake, never a real CUDA kernel. What a
wider-scoped fixture computes on the host while a vram test is set up holds real values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402

emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")
pytestmark = emulated


def test_a_cuda_result_of_cpu_constants_is_fake_and_counted(scope: Any) -> None:
    before = scope.allocated()
    moved = torch.empty_like(torch.arange(4.0), device="cuda")
    assert moved.device.type == "cuda"
    assert scope.allocated() - before == round_size(4 * 4)
    assert torch.arange(4.0).sum().item() == 6.0  # the CPU constant is still known


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it for any device_map
    path = tmp_path_factory.mktemp("tiny-llama")
    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_from_pretrained_onto_the_card_counts_its_parameters(scope: Any, checkpoint: Path) -> None:
    transformers = pytest.importorskip("transformers")
    before = scope.allocated()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, device_map="cuda"
    )
    tensors = [*model.parameters(), *model.buffers()]
    assert {t.device.type for t in tensors} == {"cuda"}
    # no tied weights in this config: one block per parameter and per buffer
    assert scope.allocated() - before == sum(
        round_size(t.numel() * t.element_size()) for t in tensors
    )


WIDER = """
import pytest
import torch


@pytest.fixture(scope="session")
def statistics():
    data = torch.randn(4096, 4, generator=torch.Generator().manual_seed(0))
    return data.std(0)


def test_reads_them(statistics, vram):
    assert all(0.9 < s < 1.1 for s in statistics.tolist())
    x = torch.zeros(4, device=vram.device)
    vram.run(lambda: x / statistics.to(vram.device))
"""


def test_a_wider_fixture_computes_real_values_on_the_host(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_wider=WIDER)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1)
