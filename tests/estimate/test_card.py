"""The emulated card: named cards, declared capacities, and torch.cuda's device and memory
queries answered as that card from the allocator model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends.cards import CARDS, DEFAULT, Card, CardError  # noqa: E402
from pytest_vram.backends.estimate.allocator import round_size  # noqa: E402
from pytest_vram.backends.estimate.backend import EstimateBackend  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20

#: the CUDA runtime is emulated only where no GPU is usable (on a GPU it is the real one)
emulated = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: not emulated")


def in_scope(backend: Any, work: Callable[[], Any]) -> Any:
    """``work()`` in a fresh test's scope, as a build step or workload runs."""
    backend.begin_test()
    try:
        with backend.scope():
            return work()
    finally:
        backend.end_test()


# -- the table ----------------------------------------------------------------------------


def test_the_default_card_is_the_measured_h200() -> None:
    assert DEFAULT is CARDS["h200"]
    assert DEFAULT.total_memory == 150_109_880_320  # mem_get_info's total on the H200
    assert DEFAULT.capability == (9, 0) and DEFAULT.multi_processor_count == 132
    # context and libraries + the warm-up's workspace pages: used_after_warmup_bytes
    assert DEFAULT.outside_bytes == 892_141_568
    assert DEFAULT.unknown() is None


@pytest.mark.parametrize("key", [k for k in CARDS if k != "h200"])
def test_cards_not_measured_here_say_so(key: str) -> None:
    card = CARDS[key]
    assert card.context_bytes is None and card.workspace_bytes is None
    assert card.usable_bytes == card.total_memory
    assert "not measured" in card.unknown() and "device_overhead.py" in card.unknown()
    assert "not measured here" in card.source


@pytest.mark.parametrize(
    ("text", "key"),
    [("h200", "h200"), ("H100 80GB", "h100-80gb"), ("rtx3080_laptop", "rtx3080-laptop")],
)
def test_cards_by_name(text: str, key: str) -> None:
    assert Card.parse(text) is CARDS[key]


@pytest.mark.parametrize(
    ("text", "total"),
    [("8GiB", 8 * GiB), ("8 GiB", 8 * GiB), ("40GB", 40 * 10**9), ("1.5GiB", 3 * GiB // 2)],
)
def test_declared_capacities(text: str, total: int) -> None:
    card = Card.parse(text)
    assert card.total_memory == total and card.key == text
    assert card.capability == DEFAULT.capability  # the kernels the estimator models
    assert card.outside_bytes is None and "declared" in card.name


@pytest.mark.parametrize("text", ["a200", "8G", "-8GiB", "0GiB", "1.5B", "", "eight GiB"])
def test_an_unknown_card_lists_the_valid_ones(text: str) -> None:
    with pytest.raises(CardError) as info:
        Card.parse(text)
    message = str(info.value)
    assert all(key in message for key in CARDS) and "'8GiB'" in message


# -- the queries inside the scope ------------------------------------------------------------


@emulated
def test_the_device_queries_answer_as_the_card() -> None:
    backend = EstimateBackend(card="a100-40gb")

    def work() -> dict[str, Any]:
        props = torch.cuda.get_device_properties(0)
        return {
            "available": torch.cuda.is_available(),
            "count": torch.cuda.device_count(),
            "current": torch.cuda.current_device(),
            "name": torch.cuda.get_device_name(),
            "capability": torch.cuda.get_device_capability("cuda:0"),
            "props": (props.name, props.total_memory, props.major, props.minor),
            "sms": props.multi_processor_count,
            "accelerator": torch.accelerator.current_accelerator(check_available=True),
        }

    seen = in_scope(backend, work)
    card = CARDS["a100-40gb"]
    assert seen["available"] is True and seen["count"] == 1 and seen["current"] == 0
    assert seen["name"] == card.name and seen["capability"] == (8, 0)
    assert seen["props"] == (card.name, 42_298_834_944, 8, 0) and seen["sms"] == 108
    assert seen["accelerator"] == torch.device("cuda")


@emulated
def test_another_device_index_is_refused_as_on_a_one_gpu_machine(backend: Any) -> None:
    with pytest.raises(AssertionError, match="Invalid device id"):
        in_scope(backend, lambda: torch.cuda.get_device_properties(1))


@emulated
def test_mem_get_info_is_the_capacity_less_reserved_and_outside(backend: Any) -> None:
    def work() -> tuple[Any, ...]:
        before = torch.cuda.mem_get_info()
        x = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
        after = torch.cuda.mem_get_info()
        return before, after, torch.cuda.memory_reserved(), x.numel()

    before, after, reserved, _ = in_scope(backend, work)
    total = DEFAULT.total_memory
    assert before == (total - DEFAULT.outside_bytes, total)
    assert reserved == 20 * MiB  # one page of the large pool
    assert after == (total - DEFAULT.outside_bytes - reserved, total)


@emulated
def test_memory_stats_has_the_keys_libraries_read(backend: Any) -> None:
    def work() -> tuple[dict[str, Any], dict[str, Any]]:
        a = torch.empty(1000, device="cuda")
        b = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
        during = torch.cuda.memory_stats()
        del b
        torch.cuda.reset_peak_memory_stats()
        after = torch.cuda.memory_stats("cuda:0")
        del a
        return during, after

    during, after = in_scope(backend, work)
    small, large = round_size(4000), 3 * MiB
    assert during["allocated_bytes.all.current"] == during["allocated_bytes.all.peak"]
    assert during["allocated_bytes.all.current"] == small + large
    assert during["allocated_bytes.small_pool.current"] == small
    assert during["allocated_bytes.large_pool.current"] == large
    assert during["active_bytes.all.current"] == small + large
    assert during["requested_bytes.all.current"] == 4000 + large
    assert during["reserved_bytes.all.current"] == 2 * MiB + 20 * MiB
    assert during["allocation.all.current"] == 2
    assert during["num_alloc_retries"] == during["num_ooms"] == 0
    assert after["allocated_bytes.all.peak"] == after["allocated_bytes.all.current"] == small
    assert after["allocated_bytes.all.freed"] == large
    assert list(after) == sorted(after)  # torch's flattened, sorted form


@emulated
def test_the_memory_counters_read_the_stats(backend: Any) -> None:
    def work() -> tuple[int, ...]:
        x = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")
        counters = (
            torch.cuda.memory_allocated(),
            torch.cuda.max_memory_allocated(0),
            torch.cuda.memory_reserved(),
            torch.cuda.max_memory_reserved(),
            torch.cuda.memory.memory_allocated(),
            torch.accelerator.memory_allocated(),
        )
        del x
        torch.cuda.empty_cache()  # unmaps the free page, as on a GPU
        return (*counters, torch.cuda.memory_reserved(), torch.cuda.max_memory_reserved())

    assert in_scope(backend, work) == (
        *(5 * MiB, 5 * MiB, 20 * MiB, 20 * MiB, 5 * MiB, 5 * MiB),
        0,
        20 * MiB,
    )


@emulated
def test_outside_the_scope_torch_answers_as_before(backend: Any) -> None:
    in_scope(backend, lambda: None)
    assert torch.cuda.is_available() is False
    assert torch.cuda.device_count() == 0


# -- what libraries do with the answers ---------------------------------------------------------


def _accelerate_style_max_memory() -> dict[Any, int]:
    """accelerate's ``get_max_memory``, as its source computes it (the library need not be
    installed for this test): every device's free memory."""
    device_type = torch.accelerator.current_accelerator(check_available=True).type
    module = getattr(torch, device_type)
    budget: dict[Any, int] = {}
    for i in range(module.device_count()):
        _ = torch.tensor(0, device=f"{device_type}:{i}")  # initialises the device
        budget[i] = module.mem_get_info(i)[0]
    return budget


@emulated
def test_an_accelerate_style_memory_budget_sees_the_card() -> None:
    backend = EstimateBackend(card="rtx3080-laptop")
    card = CARDS["rtx3080-laptop"]
    budget = in_scope(backend, _accelerate_style_max_memory)
    assert budget == {0: card.total_memory - 2 * MiB}  # the small pool's page of torch.tensor(0)


@emulated
def test_accelerates_own_get_max_memory_sees_the_card(backend: Any) -> None:
    utils = pytest.importorskip("accelerate.utils")
    budget = in_scope(backend, lambda: utils.get_max_memory())
    assert budget[0] == DEFAULT.total_memory - DEFAULT.outside_bytes - 2 * MiB
    assert "cpu" in budget


@emulated
def test_transformers_device_map_budget_sees_the_card(backend: Any) -> None:
    """What ``device_map="auto"`` sizes its placement by (transformers' own wrapper around
    accelerate's budget, which adds the allocator's cached free bytes)."""
    pytest.importorskip("accelerate")
    integration = pytest.importorskip("transformers.integrations.accelerate")

    def budget() -> tuple[dict[Any, int], int, int, int]:
        kept = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
        seen = integration.get_max_memory()
        free, _ = torch.cuda.mem_get_info()
        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return seen, free, cached, kept.numel()

    seen, free, cached, _ = in_scope(backend, budget)
    assert free == DEFAULT.total_memory - DEFAULT.outside_bytes - 22 * MiB  # two pages
    assert cached == 22 * MiB - 3 * MiB
    assert seen[0] == free + cached  # free memory plus the allocator's cached bytes
