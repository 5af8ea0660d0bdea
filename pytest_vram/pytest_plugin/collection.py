"""Which tests are vram tests, the baseline key each owns, which modules declare claims,
and the marker checks at setup: :class:`CollectionHooks`."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import pytest

from pytest_vram.backends import cards
from pytest_vram.core import marks
from pytest_vram.pytest_plugin.claim_judging import ClaimHooks
from pytest_vram.pytest_plugin.keys import MARK
from pytest_vram.pytest_plugin.session import VramSession
from pytest_vram.render.terminal import header


class CollectionHooks:
    """The collection's side of the session: vram tests and their keys (deselected ones
    too, so that their entries are not stale), the plain tests' files, the modules that
    declare claims (handed to :class:`ClaimHooks`), the header line, and the marker checks
    at setup."""

    def __init__(
        self, config: pytest.Config, session: VramSession, claim_hooks: ClaimHooks
    ) -> None:
        self.config = config
        self.session = session
        self.claim_hooks = claim_hooks
        #: a collected test (deselected ones too) carries the marker or uses the fixture
        self.measuring = False

    def pytest_report_header(self, config: pytest.Config) -> str:
        settings = self.session.settings
        try:
            baselines = str(settings.baselines.relative_to(config.rootpath)) or "."
        except ValueError:
            baselines = str(settings.baselines)
        return header(
            backend=settings.backend,
            profile=settings.profile,
            baselines=baselines,
            strict=settings.strict,
            attribution=settings.attribution,
            allocator=settings.allocator,
            card=estimator_card(settings.backend),
            emulate=settings.emulate,
            declared_card=declared_card(settings.card),
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        rep = yield
        if not isinstance(collector, pytest.Module):
            return rep
        if rep.failed:
            self.claim_hooks.module_failed(collector, rep)
        elif rep.passed and getattr(collector.obj, marks.CLAIMS_ATTRIBUTE, None) is not None:
            self.claim_hooks.module_collected(collector, rep)
        return rep

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        # A test that uses the fixture is a vram test: `pytest -m vram` must select it.
        if "vram" in getattr(item, "fixturenames", ()) and item.get_closest_marker("vram") is None:
            item.add_marker(marks.MARKER)

    @pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: deselected tests are not stale
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        parents: dict[int, bool] = {}
        plain = []
        for item in items:
            if not marks.carries(item, parents):
                plain.append(item.nodeid)
                continue
            self.measuring = True
            mark = evaluated(item)
            if isinstance(mark, marks.MarkError):
                mark = None  # reported at setup
            self.session.collect(item.nodeid, mark, vram=True)
        self.session.collect_plain(plain)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # An item that another plugin marked after our collection_modifyitems (tryfirst)
        # still counts.
        parents: dict[int, bool] = {}
        if not self.measuring:
            self.measuring = any(marks.carries(i, parents) for i in session.items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not self.measuring:  # no test of this run carries the marker: nothing to check
            return
        mark = evaluated(item)
        if isinstance(mark, marks.MarkError):
            pytest.fail(str(mark), pytrace=False)
        key = mark.base_key(item.nodeid) if mark else item.nodeid
        others = self.session.shared_with(item.nodeid, key)
        if others:
            pytest.fail(
                f"{item.nodeid}: baseline key {key!r} is also used by {', '.join(others)}; "
                f"only one figure per key can be kept: give each test its own key=",
                pytrace=False,
            )
        # Only a marker on the test itself demands the fixture: a module-wide marker that
        # sets a tolerance must not break the module's other tests.
        own = any(m.name == marks.MARKER for m in getattr(item, "own_markers", ()))
        if own and "vram" not in getattr(item, "fixturenames", ()):
            pytest.fail(
                f"{item.nodeid}: marked @pytest.mark.vram but does not use the `vram` fixture; "
                f"add a `vram` argument and measure with vram.run(workload, ...)",
                pytrace=False,
            )


def estimator_card(backend: str) -> str | None:
    """The card the estimator follows where ``--vram-backend`` may choose it (``estimate``;
    ``auto`` where no GPU is visible), as its context names it; None for any other."""
    if backend not in ("auto", "estimate"):
        return None
    text = cards.DEFAULT.describe()
    return text if backend == "estimate" else f"{text} (where no GPU is visible)"


def declared_card(text: str | None) -> str | None:
    """``--vram-card``'s card as the header names it: key, name, capacity, and whether what it
    holds besides PyTorch is measured; None where no card is declared."""
    if text is None:
        return None
    card = cards.Card.parse(text)
    gib = card.total_memory / 1024**3
    measured = "measured" if card.unknown() is None else "not measured"
    return (
        f"{card.key} ({card.name}, {card.total_memory} B ({gib:.2f} GiB); what it holds "
        f"besides PyTorch {measured}), enforced on every vram test"
    )


def evaluated(item: pytest.Item) -> marks.VramMark | marks.MarkError | None:
    """The item's vram marker, evaluated once (at collection, or at setup for items added
    later) and kept in ``item.stash``; a bad marker is kept as its error for setup to report."""
    if MARK not in item.stash:
        try:
            item.stash[MARK] = _with_card(item.nodeid, marks.evaluate(item))
        except marks.MarkError as exc:
            item.stash[MARK] = exc
    return item.stash[MARK]


def _with_card(nodeid: str, mark: marks.VramMark | None) -> marks.VramMark | None:
    """The marker with its card checked against ``backends.cards``: a named card's key, or
    the capacity as declared; an unknown name lists the valid ones."""
    if mark is None or mark.card is None:
        return mark
    try:
        card = cards.Card.parse(mark.card)
    except cards.CardError as exc:
        raise marks.MarkError(f"{nodeid}: @pytest.mark.vram: card: {exc}") from None
    return dataclasses.replace(mark, card=card.key)


def valid_mark(item: pytest.Item) -> marks.VramMark | None:
    """The item's evaluated vram marker, None where it has none or a bad one."""
    mark = item.stash.get(MARK, None)
    return None if isinstance(mark, marks.MarkError) else mark
