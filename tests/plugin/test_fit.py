"""The largest value that fits: the bisection over a question's candidates, the answer's
record, and its baseline entry (strict loader, canonical dump)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pytest_vram.core.fit import Candidates, FitError, Largest, Probe, search
from pytest_vram.core.units import parse_tolerance
from pytest_vram.core.verdicts import LARGEST, Kind, judge
from pytest_vram.store import baselines
from pytest_vram.store.baselines import BaselineError, Entry


def _asked(limit: int, candidates: Candidates, hint: int | None = None) -> tuple[int, list[int]]:
    """The answer for a card on which every value up to ``limit`` fits, and the probes."""
    probes: list[int] = []

    def fits(value: int) -> bool:
        assert value not in probes, "a value is probed once"
        probes.append(value)
        return value <= limit

    return search(candidates, fits, hint), probes


@pytest.mark.parametrize("limit", [0, 1, 2, 7, 63, 64, 100, 1000])
def test_the_answer_is_the_last_value_that_fits(limit: int) -> None:
    candidates = Candidates(1, 100)
    answer, probes = _asked(limit, candidates)
    assert answer == min(limit, 100)
    # the first and the last candidate, then a bisection of the hundred
    assert len(probes) <= 2 + math.ceil(math.log2(100))


@pytest.mark.parametrize(("low", "high", "step"), [(512, 65536, 512), (3, 3, 1), (2, 9, 3)])
def test_steps_are_candidates(low: int, high: int, step: int) -> None:
    candidates = Candidates(low, high, step)
    values = [candidates[i] for i in range(len(candidates))]
    assert values == list(range(low, high + 1, step))
    for limit in range(0, high + step):
        answer, probes = _asked(limit, candidates)
        fitting = [v for v in values if v <= limit]
        assert answer == (fitting[-1] if fitting else 0)
        assert set(probes) <= set(values)


@pytest.mark.parametrize(("limit", "probes"), [(37, 2), (100, 1), (0, 1)])
def test_the_recorded_answer_is_checked_first(limit: int, probes: int) -> None:
    candidates = Candidates(1, 100)
    recorded = search(candidates, lambda value: value <= limit)
    answer, asked = _asked(limit, candidates, hint=recorded)
    assert answer == recorded and len(asked) == probes


@pytest.mark.parametrize(("recorded", "limit"), [(37, 30), (37, 45), (0, 5), (5, 0), (99, 100)])
def test_a_recorded_answer_that_changed_is_searched_again(recorded: int, limit: int) -> None:
    candidates = Candidates(1, 100)
    answer, probes = _asked(limit, candidates, hint=recorded)
    assert answer == min(limit, 100)
    assert len(probes) <= 3 + math.ceil(math.log2(100))


def test_a_recorded_answer_outside_the_range_is_not_used() -> None:
    answer, probes = _asked(40, Candidates(8, 64, 8), hint=41)
    assert answer == 40 and probes[0] == 8


@pytest.mark.parametrize(
    ("low", "high", "step", "message"),
    [
        (0, 8, 1, "low must be a positive int, got 0"),
        (1, 0, 1, "high must be a positive int, got 0"),
        (4, 2, 1, "high (2) must be at least low (4)"),
        (1, 8, 0, "step must be a positive int, got 0"),
        (1, 8.0, 1, "high must be a positive int, got 8.0"),
        (True, 8, 1, "low must be a positive int, got True"),
    ],
)
def test_a_bad_range_says_which_argument(low: object, high: object, step: object, message: str):
    with pytest.raises(FitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Candidates(low, high, step)  # type: ignore[arg-type]


def test_the_answer_travels_as_plain_data() -> None:
    largest = Largest(12, 1, 64, 1, "rtx3080-laptop", (Probe(12, True, 5), Probe(13, False, 9)))
    assert Largest.from_dict(largest.to_dict()) == largest
    assert largest.fits and not largest.whole_range
    assert Largest(64, 1, 64, 1, "8GiB").whole_range
    assert not Largest(0, 1, 64, 1, "8GiB").fits


# -- judged like a figure -----------------------------------------------------------------


def _judge(measured: int, recorded: int | None, card: str = "8GiB", **kw: object) -> list[Kind]:
    entry = Entry(100, 200, largest=recorded, card=None if recorded is None else "8GiB")
    verdicts = judge(
        Entry(100, 150 if measured != recorded else 200),
        entry,
        tolerance=parse_tolerance(0),
        largest=(measured, card),
        baseline_largest=(entry.largest, entry.card),
        **kw,  # type: ignore[arg-type]
    )
    compared = [v for v in verdicts if v.kind not in (Kind.PASS, Kind.UPDATED)]
    assert all(v.fields == (LARGEST,) for v in compared)
    return [v.kind for v in verdicts]


def test_a_lower_answer_fails_and_a_higher_one_is_an_improvement() -> None:
    assert _judge(7, 8) == [Kind.REGRESSION]
    assert _judge(9, 8) == [Kind.IMPROVEMENT]  # the figures of another value: not compared
    assert _judge(8, 8) == [Kind.PASS]
    assert _judge(8, None) == [Kind.NEW]
    assert _judge(8, None, strict=True) == [Kind.MISSING]
    assert _judge(8, 8, card="rtx3080-laptop", strict=True) == [Kind.MISSING]
    assert _judge(7, 8, update=True) == [Kind.UPDATED]


# -- the baseline entry --------------------------------------------------------------------


def _load(tmp_path: Path, entry: str) -> baselines.BaselineFile | None:
    path = tmp_path / "estimate.yaml"
    path.write_text(f"profile: estimate\nentries:\n  t.py::test_fit:\n{entry}")
    return baselines.load(path)


FIGURES = "    model_bytes: 1024\n    peak_bytes: 4096\n"


def test_an_entry_keeps_its_largest_and_card_through_a_dump(tmp_path: Path) -> None:
    text = FIGURES + "    largest: 12  # batch\n    card: rtx3080-laptop\n"
    loaded = _load(tmp_path, text)
    assert loaded is not None
    entry = loaded.entries["t.py::test_fit"]
    assert (entry.largest, entry.card) == (12, "rtx3080-laptop")
    dumped = baselines.dump(loaded)
    assert "    largest: 12  # batch\n    card: rtx3080-laptop\n" in dumped
    assert baselines.parse(dumped, tmp_path / "estimate.yaml").entries == loaded.entries


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("    largest: 12\n", "largest without card: the largest value that fits is recorded"),
        ("    card: 8GiB\n", "card without largest"),
        ("    largest: -1\n    card: 8GiB\n", "largest must be a non-negative integer"),
        ("    largest: twelve\n    card: 8GiB\n", "largest must be a non-negative integer"),
        ("    largest: 12\n    card: 12\n", "card must be a card's name or a capacity"),
        ("    largest: 12\n    card: ''\n", "card must be a card's name or a capacity"),
        (f"    largest: 12\n    card: {'x' * 101}\n", "at most 100 characters"),
    ],
)
def test_a_bad_largest_names_the_entry_and_the_fix(
    tmp_path: Path, fields: str, message: str
) -> None:
    with pytest.raises(BaselineError) as info:
        _load(tmp_path, FIGURES + fields)
    assert "entry 't.py::test_fit'" in str(info.value) and message in str(info.value)
