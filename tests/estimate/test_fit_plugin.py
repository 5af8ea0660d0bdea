"""Will it fit, through the plugin on the estimator: a test on a declared card runs out of
memory where the card would, ``vram.largest`` finds the largest batch that fits, records it
with the card and gates it like a figure.

Each case runs a sub-session of its own (``pytester``, a fresh process), as a user's
project would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")

#: a linear layer's training step whose input grows with the batch: 8 KiB a row in and out
LAYER = """
import pytest
import torch


def build(device):
    return torch.nn.Linear(4096, WIDTH, bias=False, device=device, dtype=torch.float16)


def make_step(model, device):
    def step(n):
        x = torch.randn(n, 4096, device=device, dtype=torch.float16, requires_grad=True)
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    return step
"""

TESTS = (
    LAYER
    + """

@pytest.mark.vram(card="1GiB")
def test_batch(vram):
    model = vram.build(build, vram.device)
    assert vram.largest(make_step(model, vram.device), high=1 << 20) > 0


def test_on_the_default_card(vram):
    model = vram.build(build, vram.device)
    vram.run(make_step(model, vram.device), 4096)
"""
)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:randomly", *args
    )


def _write(pytester: pytest.Pytester, width: int = 4096, tests: str = TESTS) -> None:
    pytester.makepyfile(test_fit=tests.replace("WIDTH", str(width)))


def _measurements(path: Path) -> dict[str, dict[str, Any]]:
    report = json.loads(path.read_text())
    return {m["key"].split("::")[-1]: m for m in report["measurements"]}


def test_the_largest_batch_is_recorded_with_its_card_and_checked_in_two_probes(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester)
    _run(pytester, "--vram-update").assert_outcomes(passed=2)
    entry = (pytester.path / "baselines" / "estimate.yaml").read_text()
    assert "largest: 61184\n    card: 1GiB\n" in entry
    result = _run(pytester, "--vram-strict", "--vram-json=run.json", "--vram-markdown=run.md")
    result.assert_outcomes(passed=2)
    measured = _measurements(pytester.path / "run.json")
    largest = measured["test_batch"]["largest"]
    # what the recorded answer and the next value do: one fits, the other does not
    assert [(p["value"], p["fits"]) for p in largest["probes"]] == [(61184, True), (61185, False)]
    assert largest["card"] == "1GiB" and measured["test_batch"]["baseline_largest"] == 61184
    assert measured["test_batch"]["card"] == "1GiB"
    out = result.stdout.str()
    assert "largest" in out and "61184" in out
    assert "card: 1GiB (1 measurement): what 1 GiB card (declared) holds besides" in out
    assert "| 61184 |" in (pytester.path / "run.md").read_text()
    # the card decides where it runs out, never the figures: the default card's test
    assert measured["test_on_the_default_card"]["largest"] is None
    assert measured["test_on_the_default_card"]["card"] is None


def test_a_change_that_lowers_the_largest_batch_fails_with_what_grew(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester)
    _run(pytester, "--vram-update").assert_outcomes(passed=2)
    _write(pytester, width=4160)  # 64 more output features: the layer and its output grow
    result = _run(pytester, "--vram-strict", "-k", "test_batch")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*largest 61120 on card 1GiB, baseline 61184: what fits the card shrank*",
            "*baseline     61184  ran out of memory at*",
            "*at 61184, the recorded largest, which now runs out of memory, live at the "
            "highest allocation it reached:",
            "grew against baselines/breakdowns/estimate.yaml:",
            "*(model) (activations) (was *",
        ]
    )
    _run(pytester, "--vram-update", "-k", "test_batch").assert_outcomes(passed=1)
    assert "largest: 61120\n" in (pytester.path / "baselines" / "estimate.yaml").read_text()


def test_a_test_on_a_card_that_runs_out_fails_with_the_card_and_the_breakdown(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester)
    result = _run(pytester, "--vram-card=rtx3080-laptop", "-k", "default")
    result.stdout.fnmatch_lines(["vram: *, card rtx3080-laptop (NVIDIA GeForce RTX 3080 Laptop*"])
    result.assert_outcomes(passed=1)  # 4096 rows fit the laptop's 8 GiB
    pytester.makepyfile(
        test_big=LAYER.replace("WIDTH", "4096")
        + """

def test_too_big(vram):
    model = vram.build(build, vram.device)
    vram.run(make_step(model, vram.device), 1 << 20)
"""
    )
    result = _run(pytester, "--vram-card=rtx3080-laptop", "test_big.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_too_big: does not fit card rtx3080-laptop (NVIDIA GeForce RTX 3080 Laptop "
            "GPU, 8588886016 B): out of memory on cuda in vram.run(*",
            "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB.*",
            "live at the highest allocation the step reached:",
        ]
    )
    # without the card the same test passes: the estimator enforces no capacity by default
    _run(pytester, "test_big.py").assert_outcomes(passed=1)


def test_a_marker_card_overrides_the_default_and_a_bad_one_lists_the_cards(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester)
    result = _run(pytester, "--vram-card=h200", "--vram-json=run.json", "-k", "test_batch")
    result.assert_outcomes(passed=1)
    assert _measurements(pytester.path / "run.json")["test_batch"]["largest"]["card"] == "1GiB"
    result = _run(pytester, "--vram-card=rtx3090")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--vram-card: unknown card 'rtx3090': give one of h200, *, rtx3080-laptop, or a "
            "capacity such as '8GiB'*"
        ]
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "vram.largest(lambda n: None, high=8)",
            "*vram.largest needs a card whose capacity decides what fits: declare one with*",
        ),
        (
            "vram.largest(lambda n: None, high=0)",
            "*vram.largest(low=1, high=0, step=1): high must be a positive int, got 0*",
        ),
        (
            "kept = []; vram.largest(lambda n: kept.append(torch.empty(n, device='cuda')), high=8)",
            "*vram.largest(test_question.<locals>.<lambda>) at 1 left 512 B allocated that "
            "the test did not hold before the first probe*reset=*",
        ),
    ],
)
def test_a_question_that_cannot_be_answered_says_why(
    pytester: pytest.Pytester, body: str, message: str
) -> None:
    card = "" if "needs a card" in message else "card='8GiB'"
    pytester.makepyfile(
        f"""
        import pytest
        import torch

        @pytest.mark.vram({card})
        def test_question(vram):
            {body}
        """
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str()


def test_reset_frees_what_a_probe_keeps(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import torch

        @pytest.mark.vram(card="1GiB")
        def test_grads_kept(vram):
            model = vram.build(torch.nn.Linear, 4096, 4096, device=vram.device)

            def step(n):
                model(torch.randn(n, 4096, device=vram.device)).sum().backward()

            reset = lambda: model.zero_grad(set_to_none=True)
            assert vram.largest(step, high=1 << 16, reset=reset) == 30592
        """
    )
    _run(pytester).assert_outcomes(passed=1)


BACK_OFF = (
    LAYER.replace("WIDTH", "4096")
    + """

def halve_until_it_fits(step, batch):
    tried = []
    while True:
        try:
            step(batch)
            return batch, tried
        except torch.OutOfMemoryError as exc:  # the user's own handler, as on the card
            assert "CUDA out of memory" in str(exc)
            tried.append(batch)
            batch //= 2


@pytest.mark.vram(card="1GiB")
def test_back_off_in_the_workload(vram):
    model = vram.build(build, vram.device)
    step = make_step(model, vram.device)
    batch, tried = vram.run(halve_until_it_fits, step, 1 << 20)
    assert (batch, tried) == (1 << 15, [1 << 20, 1 << 19, 1 << 18, 1 << 17, 1 << 16])


@pytest.mark.vram(card="1GiB")
def test_back_off_around_the_workload(vram):
    model = vram.build(build, vram.device)
    step = make_step(model, vram.device)
    batch, tried = halve_until_it_fits(lambda n: vram.run(step, n, name=f"batch {n}"), 1 << 20)
    assert (batch, tried) == (1 << 15, [1 << 20, 1 << 19, 1 << 18, 1 << 17, 1 << 16])
"""
)


def test_out_of_memory_on_the_card_reaches_the_user_s_own_back_off(
    pytester: pytest.Pytester,
) -> None:
    """The card's out-of-memory is torch's error, raised in the user's code: their handler
    catches it, halves the batch and goes on, and the test passes with what then fit."""
    pytester.makepyfile(test_back_off=BACK_OFF)
    result = _run(pytester, "--vram-json=run.json")
    result.assert_outcomes(passed=2)
    measured = _measurements(pytester.path / "run.json")
    # the largest that fits this card is 61184 rows (above): 32768 fits, 65536 does not
    fitted = measured["test_back_off_in_the_workload"]
    assert fitted["card"] == "1GiB" and fitted["peak_bytes"] < 1024**3
    # around vram.run: the runs that ran out are not measurements, the one that fit is
    assert sorted(measured) == ["batch 32768", "test_back_off_in_the_workload"]
    assert measured["batch 32768"]["card"] == "1GiB"
