"""Third-party models (transformers, a PyTorch tutorial), built and run as their
documentation writes them, on the estimator.

Each case exercises an idiom the estimator handles specially (named per case); the suite's
corpus (``tests/vram/test_corpus.py``) holds the accuracy figures, measured against the
H200. Here the claim is narrower and still falsifiable: the model builds on the CPU,
moves with ``.to("cuda")``, runs a training step (or an inference) on the fake GPU, and
its figure is above the bytes of its parameters. (Their small, unusual convolutions are
not in the cuDNN table: those tests carry its warning, as a user's would.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_vram.measure.meter import Meter  # noqa: E402

nn = torch.nn
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
#: an encoder-decoder of two layers each
SEQ2SEQ = {"vocab_size": 1000, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2}
SEQ2SEQ |= {"encoder_attention_heads": 4, "decoder_attention_heads": 4}
SEQ2SEQ |= {"encoder_ffn_dim": 128, "decoder_ffn_dim": 128}


def ids(batch: int = 2, length: int = 16) -> Any:
    return torch.randint(0, 1000, (batch, length), device="cuda")


def labels(batch: int = 2) -> Any:
    return torch.zeros(batch, dtype=torch.long, device="cuda")


def image(batch: int = 2, size: int = 32) -> Any:
    return torch.randn(batch, 3, size, size, device="cuda")


def _bart() -> tuple[Any, Callable[[Any], Any]]:
    """LayerDrop in training (``rand([]) < layerdrop``): known from the draw's sign."""
    config = transformers.BartConfig(**SEQ2SEQ)
    return transformers.BartForConditionalGeneration(config), lambda m: m(
        input_ids=ids(), labels=ids()
    )


def _opt() -> tuple[Any, Callable[[Any], Any]]:
    """LayerDrop, decoder only."""
    config = transformers.OPTConfig(vocab_size=1000, ffn_dim=128, word_embed_proj_dim=64, **SMALL)
    return transformers.OPTForCausalLM(config), lambda m: m(input_ids=ids(), labels=ids())


def _clip() -> tuple[Any, Callable[[Any], Any]]:
    """``logit_scale = nn.Parameter(torch.tensor(2.6592))``, then ``.to("cuda")``."""
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 1000, "intermediate_size": 128, **SMALL},
        vision_config={"image_size": 32, "patch_size": 8, "intermediate_size": 128, **SMALL},
    )
    return transformers.CLIPModel(config), lambda m: m(
        input_ids=ids(), pixel_values=image(), return_loss=True
    )


def _convnext() -> tuple[Any, Callable[[Any], Any]]:
    """A stochastic-depth schedule read with ``.tolist()`` in the constructor."""
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10, drop_path_rate=0.1
    )
    return transformers.ConvNextForImageClassification(config), lambda m: m(
        pixel_values=image(), labels=labels()
    )


def _whisper() -> tuple[Any, Callable[[Any], Any]]:
    """Convolutions over audio features, LayerDrop in both stacks."""
    config = transformers.WhisperConfig(
        **SEQ2SEQ,
        num_mel_bins=16,
        max_source_positions=32,
        max_target_positions=32,
        pad_token_id=0,
        decoder_start_token_id=1,
    )
    return transformers.WhisperForConditionalGeneration(config), lambda m: m(
        input_features=torch.randn(2, 16, 64, device="cuda"), labels=ids(2, 8)
    )


def _swin() -> tuple[Any, Callable[[Any], Any]]:
    """Shifted windows: relative-position tables built on the CPU."""
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=10,
    )
    return transformers.SwinForImageClassification(config), lambda m: m(
        pixel_values=image(), labels=labels()
    )


def _mamba() -> tuple[Any, Callable[[Any], Any]]:
    """A selective-scan model without its CUDA kernels: the sequential path."""
    config = transformers.MambaConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, state_size=8
    )
    return transformers.MambaForCausalLM(config), lambda m: m(input_ids=ids(), labels=ids())


class _TutorialLM(nn.Module):
    """PyTorch's "Language Modeling with nn.Transformer" tutorial model, as it writes it."""

    def __init__(self, ntoken: int = 100, d_model: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(ntoken, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, 0.1)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.linear = nn.Linear(d_model, ntoken)

    def forward(self, src: Any, src_mask: Any = None) -> Any:
        if src_mask is None:
            src_mask = nn.Transformer.generate_square_subsequent_mask(len(src)).to(src.device)
        return self.linear(self.encoder(self.embedding(src), src_mask))


def _tutorial_lm() -> tuple[Any, Callable[[Any], Any]]:
    """A causal mask without ``is_causal``: the encoder compares it with its own."""

    class Loss:
        def __init__(self, logits: Any, target: Any) -> None:
            self.loss = nn.functional.cross_entropy(logits.view(-1, 100), target.view(-1))

    def step(m: Any) -> Any:
        src = torch.randint(0, 100, (35, 4), device="cuda")
        return Loss(m(src), src)

    return _TutorialLM(), step


CASES = (_bart, _opt, _clip, _convnext, _whisper, _swin, _mamba, _tutorial_lm)
MODELS = {f.__name__.strip("_"): f for f in CASES}


def measure(backend: Any, make: Callable[[], tuple[Any, Callable[[Any], Any]]], train: bool):
    meter = Meter(backend)
    meter.start()
    try:
        parts: dict[str, Any] = {}

        def build() -> Any:
            model, parts["step"] = make()
            return model.to("cuda").train(train)

        model = meter.build(build)

        def step(m: Any) -> None:
            if train:
                parts["step"](m).loss.backward()
            else:
                with torch.no_grad():
                    parts["step"](m)

        meter.run(step, model)
        del model
    finally:
        meter.finish()
    return meter.measurements[0]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # the tutorial's, as written
@pytest.mark.filterwarnings("ignore::pytest_vram.backends.estimate.ConvWorkspaceUnknown")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_third_party_model_runs_on_the_estimator(backend: Any, name: str, train: bool) -> None:
    measurement = measure(backend, MODELS[name], train)
    assert measurement.peak_bytes > measurement.model_bytes > 0
