"""Will it fit the report's card: the estimator's verdict and largest batch against a GPU
capped to the same capacity.

For every zoo pair (preset, phase) three questions, as tests/vram/test_zoo_fit.py asks
them: the largest inference batch and training batch at 512 tokens and the longest
inference context at batch 1; and for corpus-style workloads (tests/vram/corpus_workloads.py
at size ``realistic``: training steps with AdamW, Adam and SGD, CNNs, generation with a KV
cache, ...) the largest batch. Each question is answered by
:meth:`pytest_vram.measure.meter.Meter.largest` (bisection; a hint is checked first with
its next value), on the card ``--card`` (default the report's RTX 3080 Laptop, 8191 MiB),
by up to three sides, each subject (a zoo pair or a corpus workload) in a fresh process:

* ``estimate-card``: the estimator enforcing the card itself (``limit_rule="device"``):
  what the memory suite answers;
* ``estimate-capped``: the estimator predicting the GPU capped to the card
  (``limit_rule="fraction"``: the per-process limit as torch checks it, the GPU's own
  persistent workspaces inside it);
* ``cuda-capped``: the GPU under ``torch.cuda.set_per_process_memory_fraction`` to the card
  (the ``cuda`` backend's card support), expandable segments, warmed up as the plugin does.

A question's verdict is "fits" where its first value (batch 1, 512 tokens) runs. The
estimate sides run in parallel on the CPU with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``,
as on CI), the GPU side one subject at a time. Each side checks a hint first, with its
next value (two probes where it holds, a bisection below or above it where not): the card
side the committed baselines' answers; the capped estimate and the GPU those of
``--hints-from`` (by default the committed estimate half,
docs/data/fit-accuracy/estimate.json), the GPU where it has none this run's capped
estimate's. With a GPU the sides are ``estimate-capped`` and ``cuda-capped``, without one
the two estimates. Writes ``fit_accuracy.json`` (every answer, its probes, the
peak and reserved bytes of the largest run, seconds, versions) and ``fit_accuracy.md``
(the table) under ``--out``; exits 1 where a side failed.

    # on the H200 (under 150 s):
    python benchmarks/fit_accuracy.py --out "$OUT" --budget-s 130
    # on a CPU-only machine, the estimate sides (what docs/data/fit-accuracy/ holds):
    python benchmarks/fit_accuracy.py --budget-s 3000 --out cpu
    # a subset:
    python benchmarks/fit_accuracy.py --sides estimate-card --only 'standard-*' --out cpu
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "vram"))

JSON_NAME = "fit_accuracy.json"
MD_NAME = "fit_accuracy.md"
SIDES = ("estimate-card", "estimate-capped", "cuda-capped")
#: the key of the zoo's questions in the committed estimate baselines (their hints)
ZOO_FIT_TESTS = "tests/vram/test_zoo_fit.py"
#: the estimate half run on a CPU, committed: the capped sides' hints on the GPU
HINTS = ROOT / "docs" / "data" / "fit-accuracy" / "estimate.json"


@dataclasses.dataclass(frozen=True)
class Question:
    """One "largest that fits" question about a subject's model."""

    name: str
    #: (model, device) -> the workload at n
    step: Callable[[Any, str], Callable[[int], Any]]
    low: int
    high: int
    step_size: int = 1
    #: (model) -> what frees a failed or finished probe's leftovers (gradients)
    reset: Callable[[Any], Callable[[], Any]] | None = None
    #: the test_zoo_fit.py test that asks the same question (its baseline answer is a hint)
    baseline: str | None = None


@dataclasses.dataclass(frozen=True)
class Subject:
    """One model and the questions asked about it, in one process per side."""

    name: str
    build: Callable[[str], Any]
    questions: tuple[Question, ...]


def _zero_grad(model: Any) -> Callable[[], Any]:
    return lambda: model.zero_grad(set_to_none=True)


# -- the zoo ---------------------------------------------------------------------------------
def _zoo_subjects() -> list[Subject]:
    from test_zoo_fit import BATCH_HIGH, CONTEXT_HIGH, CONTEXT_STEP, TOKENS
    from zoo_suite import PAIRS

    import model_zoo

    def batch(fn: Callable[..., Any]) -> Callable[[Any, str], Callable[[int], Any]]:
        return lambda model, device: lambda n: fn(model, batch=n, seq_len=TOKENS)

    def context(model: Any, device: str) -> Callable[[int], Any]:
        return lambda n: model_zoo.inference(model, batch=1, seq_len=n)

    subjects = []
    for preset, phase in PAIRS:
        pair = f"{preset}-{phase}"
        subjects.append(
            Subject(
                pair,
                lambda device, preset=preset, phase=phase: model_zoo.build_model(
                    preset, phase, device=device
                ),
                (
                    Question(
                        "inference batch",
                        batch(model_zoo.inference),
                        1,
                        BATCH_HIGH,
                        baseline=f"test_largest_batch[{pair}-inference]",
                    ),
                    Question(
                        "train batch",
                        batch(model_zoo.train_step),
                        1,
                        BATCH_HIGH,
                        reset=_zero_grad,
                        baseline=f"test_largest_batch[{pair}-train]",
                    ),
                    Question(
                        "context",
                        context,
                        CONTEXT_STEP,
                        CONTEXT_HIGH,
                        CONTEXT_STEP,
                        baseline=f"test_largest_context[{pair}]",
                    ),
                ),
            )
        )
    return subjects


# -- corpus-style workloads: the corpus's models, the batch as the question ------------------
def _corpus_subjects() -> list[Subject]:
    import corpus_workloads as cw
    import torch
    import torch.nn.functional as F

    size, seq = "realistic", 512

    def ids(model: Any, device: str, n: int) -> Any:
        return cw._tokens(size, device, model.config.vocab_size, n, seq)

    def gpt2_train_adamw(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> None:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = ids(model, device, n)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()

        return step

    def llama_train_checkpointed(model: Any, device: str) -> Callable[[int], Any]:
        model.gradient_checkpointing_enable()
        model.train()

        def step(n: int) -> None:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            x = ids(model, device, n)
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def images(model: Any, device: str, n: int, side: int) -> Any:
        return torch.randn(n, 3, side, side, device=device)

    def resnet_train(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> None:
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            y = torch.randint(0, model.head.out_features, (n,), device=device)
            F.cross_entropy(model(images(model, device, n, 224)), y).backward()
            opt.step()
            opt.zero_grad()

        return step

    def vit_train(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> None:
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(images(model, device, n, model.config.image_size))
                loss = out.last_hidden_state.float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()

        return step

    def encoder_train(model: Any, device: str) -> Callable[[int], Any]:
        d = model.layers[0].linear1.in_features

        def step(n: int) -> None:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            model(torch.randn(n, seq, d, device=device)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

        return step

    def kv_cache_decode(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> Any:
            x = ids(model, device, n)
            try:
                cache = cw._tf().DynamicCache(config=model.config)
            except TypeError:  # transformers < 4.56 builds its cache layers lazily
                cache = cw._tf().DynamicCache()
            with torch.no_grad():
                for _ in range(4):
                    x = model(x, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            return x

        return step

    def generate(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> Any:
            x = ids(model, device, n)
            return model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=4,
                do_sample=False,
                eos_token_id=None,
            )

        return step

    def bert_infer(model: Any, device: str) -> Callable[[int], Any]:
        def step(n: int) -> Any:
            x = ids(model, device, n)
            with torch.no_grad():
                return model(x, attention_mask=torch.ones_like(x)).last_hidden_state

        return step

    def one(name: str, build: Any, step: Any, high: int, train: bool) -> Subject:
        question = Question("batch", step, 1, high, reset=_zero_grad if train else None)
        return Subject(name, lambda device: build(size, device), (question,))

    return [
        one("gpt2-train-bf16-autocast-adamw", cw.gpt2_build, gpt2_train_adamw, 512, True),
        one(
            "llama-gqa-train-checkpointing-fused-adamw",
            cw.llama_build,
            llama_train_checkpointed,
            512,
            True,
        ),
        one("resnet-cnn-train-sgd-momentum", cw.resnet_build, resnet_train, 2048, True),
        one("vit-train-fp16-autocast-sgd", cw.vit_build, vit_train, 2048, True),
        one("transformer-encoder-train-adam", cw.encoder_build, encoder_train, 512, True),
        one("llama-kv-cache-decode", cw.llama_build, kv_cache_decode, 2048, False),
        one("gpt2-generate-fp16", cw.gpt2_half_build, generate, 2048, False),
        one("bert-fp16-inference", cw.bert_build, bert_infer, 4096, False),
    ]


def subjects() -> list[Subject]:
    return _zoo_subjects() + _corpus_subjects()


# -- one side of one subject, in its own process ---------------------------------------------
def _backend(side: str, card: str) -> Any:
    if side == "cuda-capped":
        from pytest_vram.backends.cuda import CudaBackend

        return CudaBackend(card=card)
    from pytest_vram.backends.estimate.backend import EstimateBackend

    rule = "device" if side == "estimate-card" else "fraction"
    return EstimateBackend(card=card, limit_rule=rule)


def answer_subject(side: str, name: str, card: str, hints: dict[str, int]) -> dict[str, Any]:
    """Every question of subject ``name`` on ``side``: answer, probes, figures, seconds."""
    import torch

    from pytest_vram.core.fit import Candidates
    from pytest_vram.measure.meter import Meter

    subject = {s.name: s for s in subjects()}[name]
    backend = _backend(side, card)
    backend.warmup()
    # as the plugin runs a test: the estimator's one card, or the GPU capped to the card
    with backend.test_scope():
        meter = Meter(backend)
        started = time.perf_counter()
        torch.manual_seed(0)
        meter.start()
        model = meter.build(subject.build, backend.device)
        results: dict[str, Any] = {"build_s": round(time.perf_counter() - started, 2)}
        for question in subject.questions:
            results[question.name] = _ask(meter, model, question, hints, card, Candidates)
        del model
        meter.finish()
    return results


def _ask(
    meter: Any, model: Any, question: Question, hints: dict[str, int], card: str, candidates: Any
) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        answer = meter.largest(
            question.step(model, meter.backend.device),
            candidates(question.low, question.high, question.step_size),
            name=question.name,
            hint=(hints.get(question.name), card),
            reset=question.reset(model) if question.reset else None,
        )
    except Exception:  # noqa: BLE001 - recorded with the question, the others go on
        return {"error": traceback.format_exc()}
    record = meter.measurements[-1]
    return {
        "largest": answer.value,
        "fits": answer.fits,
        "whole_range": answer.whole_range,
        "probes": [p.to_dict() for p in answer.probes],
        "model_bytes": record.model_bytes,
        "peak_bytes": record.peak_bytes,
        "reserved_bytes": record.reserved_bytes,
        "seconds": round(time.perf_counter() - began, 2),
    }


def _child(argv: list[str]) -> int:
    side, name, card, hints = argv[0], argv[1], argv[2], json.loads(argv[3])
    try:
        result = answer_subject(side, name, card, hints)
    except Exception:  # noqa: BLE001 - the parent records it
        result = {"error": traceback.format_exc()}
    print("FIT-RESULT " + json.dumps(result), flush=True)
    return 0


def run_side(side: str, name: str, card: str, hints: dict[str, int], timeout: float) -> dict:
    """One side of one subject in a fresh interpreter (the GPU hidden from estimates)."""
    env = dict(os.environ)
    if side == "cuda-capped":
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, __file__, "--child", side, name, card, json.dumps(hints)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=max(timeout, 1), check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (--budget-s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("FIT-RESULT ")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        return {"error": f"exit {done.returncode}: " + "\n".join(tail)}
    result = json.loads(lines[-1][len("FIT-RESULT ") :])
    result["process_s"] = round(time.perf_counter() - started, 2)
    return result


# -- the whole comparison --------------------------------------------------------------------
def baseline_hints() -> dict[str, dict[str, int]]:
    """The committed answers of tests/vram/test_zoo_fit.py, by subject and question."""
    import yaml

    path = ROOT / "baselines" / "estimate.yaml"
    entries = yaml.safe_load(path.read_text()).get("entries", {}) if path.exists() else {}
    hints: dict[str, dict[str, int]] = {}
    for subject in _zoo_subjects():
        for question in subject.questions:
            entry = entries.get(f"{ZOO_FIT_TESTS}::{question.baseline}") or {}
            if isinstance(entry.get("largest"), int):
                hints.setdefault(subject.name, {})[question.name] = entry["largest"]
    return hints


def _environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def earlier_hints(path: Path | None) -> dict[str, dict[str, int]]:
    """The capped estimate's answers of an earlier run's ``fit_accuracy.json`` (the
    committed estimate half), by subject and question: what the capped sides check first."""
    if path is None:
        return {}
    data = json.loads(path.read_text())
    hints: dict[str, dict[str, int]] = {}
    for name, sides in data.get("results", {}).items():
        answers = sides.get("estimate-capped", {})
        for question, answer in answers.items():
            if _answered(answer):
                hints.setdefault(name, {})[question] = answer["largest"]
    return hints


def compare(
    names: list[str],
    sides: list[str],
    card: str,
    budget_s: float,
    jobs: int,
    earlier: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Every side of every subject, the estimates in parallel, the GPU's one at a time.

    Hints: the card's from the committed baselines; the capped sides' from ``earlier``
    (else the card's); where ``earlier`` has none for a subject, its GPU side waits for this
    run's capped estimate and takes its answers."""
    deadline = time.monotonic() + budget_s
    card_hints = baseline_hints()
    capped_hints = {n: {**card_hints.get(n, {}), **(earlier or {}).get(n, {})} for n in names}
    results: dict[str, dict[str, Any]] = {name: {} for name in names}

    def left() -> float:
        return deadline - time.monotonic()

    def estimate(side: str, name: str) -> dict[str, Any]:
        if left() <= 0:
            return {"error": "not started: --budget-s reached"}
        hints = card_hints if side == "estimate-card" else capped_hints
        return run_side(side, name, card, hints.get(name, {}), left())

    estimates = [s for s in sides if s != "cuda-capped"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        # the capped estimates first: the GPU waits for them
        order = sorted(estimates, key=lambda s: s != "estimate-capped")
        futures = {(s, n): pool.submit(estimate, s, n) for s in order for n in names}
        for name in names:
            if "cuda-capped" in sides:
                hint = capped_hints.get(name, {})
                capped = futures.get(("estimate-capped", name))
                if capped is not None and name not in (earlier or {}):
                    # no earlier answers: wait for this run's (two probes where they agree)
                    answers = capped.result()
                    hint = {q: a["largest"] for q, a in answers.items() if _answered(a)}
                if left() <= 0:
                    results[name]["cuda-capped"] = {"error": "not started: --budget-s reached"}
                else:
                    results[name]["cuda-capped"] = run_side("cuda-capped", name, card, hint, left())
                print(f"{name}: cuda-capped done ({budget_s - left():.0f} s)", flush=True)
        for (side, name), future in futures.items():
            results[name][side] = future.result()
    return results


def _answered(answer: Any) -> bool:
    return isinstance(answer, dict) and "largest" in answer


def _cell(answer: Any) -> str:
    if not _answered(answer):
        return "error" if isinstance(answer, dict) and "error" in answer else "-"
    if not answer["fits"]:
        return "does not fit"
    suffix = "+" if answer["whole_range"] else ""  # the range's end fits: at least this
    return f"{answer['largest']}{suffix}"


def _bytes(answer: Any, key: str) -> str:
    return f"{answer[key]:,}" if _answered(answer) and answer.get(key) is not None else "-"


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        f"# Will it fit: {data['card']}",
        "",
        "Command: `" + data["command"] + "`",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(env.items())),
        "",
        f"Sides: {', '.join(data['sides'])}; wall time {data['wall_s']:.1f} s. A cell is the "
        "largest batch (or context, in tokens) that fits, `does not fit` where the first "
        "value does not, `+` where the range's end fits. Bytes: the largest run's peak "
        "allocated and peak reserved.",
        "",
        "| subject | question | estimate, card | estimate, capped | GPU, capped | equal "
        "| est. peak | GPU peak | est. reserved | GPU reserved | probes est./GPU |",
        "|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    errors = []
    for name, sides in data["results"].items():
        questions: list[str] = []
        for side, answers in sides.items():
            if "error" in answers:
                errors.append(f"- `{name}` ({side}): {answers['error'].splitlines()[-1][:300]}")
                continue
            for q, a in answers.items():
                if isinstance(a, dict):
                    if q not in questions:
                        questions.append(q)
                    if "error" in a:
                        errors.append(f"- `{name}` {q} ({side}): {a['error'].splitlines()[-1]}")
        for q in questions:
            card, est, gpu = (sides.get(s, {}).get(q) for s in SIDES)
            shown = est if _answered(est) else card  # the bytes and probes of an estimate
            equal = "-"
            if _answered(est) and _answered(gpu):
                equal = "yes" if est["largest"] == gpu["largest"] else "**no**"
            probes = "/".join(str(len(a["probes"])) if _answered(a) else "-" for a in (shown, gpu))
            lines.append(
                f"| {name} | {q} | {_cell(card)} | {_cell(est)} | {_cell(gpu)} | {equal} "
                f"| {_bytes(shown, 'peak_bytes')} | {_bytes(gpu, 'peak_bytes')} "
                f"| {_bytes(shown, 'reserved_bytes')} | {_bytes(gpu, 'reserved_bytes')} "
                f"| {probes} |"
            )
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="output directory")
    parser.add_argument("--card", default="rtx3080-laptop", help="a card name or capacity")
    parser.add_argument(
        "--sides",
        default=None,
        help=f"comma-separated, of {', '.join(SIDES)} (default: all with a GPU, "
        "the estimate sides without)",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="subjects matching this glob (repeatable)"
    )
    parser.add_argument("--budget-s", type=float, default=130.0, help="start nothing after this")
    parser.add_argument(
        "--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="estimate processes"
    )
    parser.add_argument(
        "--hints-from",
        type=Path,
        default=None,
        help="an earlier fit_accuracy.json whose capped estimates the capped sides check first "
        f"(default: {HINTS.relative_to(ROOT)} where it exists)",
    )
    args = parser.parse_args(argv)

    import torch

    if args.sides is None:  # with a GPU, the comparison; without, both estimates
        sides = list(SIDES[1:]) if torch.cuda.is_available() else list(SIDES[:2])
    else:
        sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        unknown = sorted(set(sides) - set(SIDES))
        if unknown:
            parser.error(f"--sides: unknown {', '.join(unknown)}; give some of {', '.join(SIDES)}")
    if "cuda-capped" in sides and not torch.cuda.is_available():
        parser.error("--sides cuda-capped needs a GPU; leave it out to run the estimates alone")
    names = [s.name for s in subjects()]
    if args.only:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.only)]
        if not names:
            parser.error(f"--only {args.only}: no subject matches")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hints_from = args.hints_from or (HINTS if HINTS.exists() else None)
    earlier = earlier_hints(hints_from)
    results = compare(names, sides, args.card, args.budget_s, args.jobs, earlier)
    data = {
        "card": args.card,
        "command": "python benchmarks/fit_accuracy.py " + " ".join(argv),
        "environment": _environment(),
        "sides": sides,
        "hints_from": str(hints_from) if hints_from else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    (out / JSON_NAME).write_text(json.dumps(data, indent=1) + "\n")
    (out / MD_NAME).write_text(render(data))
    print((out / MD_NAME).read_text())
    return 1 if "## Errors" in (out / MD_NAME).read_text() else 0


if __name__ == "__main__":
    raise SystemExit(main())
