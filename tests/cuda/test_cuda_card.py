"""The ``cuda`` backend capped to a smaller card: the caching allocator's per-process limit
for the test, lifted after it. Skipped where no GPU is visible."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.base import BackendUnavailable  # noqa: E402
from pytest_vram.backends.cards import Card  # noqa: E402

pytestmark = pytest.mark.cuda

MiB = 1 << 20


def test_a_gpu_capped_to_a_card_runs_out_where_the_limit_says() -> None:
    card = Card.parse("8GiB")
    backend = create("cuda", card="8GiB")
    backend.warmup()
    with backend.test_scope():
        backend.begin_test()
        with pytest.raises(torch.OutOfMemoryError, match="allowed"):
            torch.empty(card.total_memory, dtype=torch.uint8, device=backend.device)
        fits = torch.empty(1 << 30, dtype=torch.uint8, device=backend.device)
        del fits
        backend.end_test()
    # the limit is lifted after the test: more than the card holds fits again
    more = torch.empty(card.total_memory + 64 * MiB, dtype=torch.uint8, device=backend.device)
    del more
    torch.cuda.empty_cache()
    assert "card" in backend.context()


def test_a_card_larger_than_the_gpu_is_refused() -> None:
    total = torch.cuda.mem_get_info()[1]
    larger = Card.parse(f"{total + (1 << 30)}B")
    with pytest.raises(BackendUnavailable, match="larger than this GPU"):
        create("cuda", card=larger)


def test_without_a_card_the_test_scope_does_nothing() -> None:
    backend = create("cuda")
    with backend.test_scope():
        x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    del x
