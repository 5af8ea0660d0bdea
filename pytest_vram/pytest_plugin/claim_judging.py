"""Claims in a run: find ``vram_claims`` declarations, judge them once, report them.

A test module declares ``vram_claims = [Claim.at_most(...), ...]`` (see
:mod:`pytest_vram.claims`). The module is imported where it is collected (on xdist: on the
workers, which send the declarations to the controller as plain data). The controller, or
the single process, gathers every measurement from the test reports, and when the test loop
is over judges each claim exactly once on those figures, never measuring again. Each result
is reported through ``pytest_runtest_logreport`` as a test item of its own,
``<module>::<claim name>``, so that the terminal, ``--junitxml``, ``--vram-json``,
``--vram-markdown`` and the exit status see it as they see a test.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_vram.core.claims import Claim, ClaimError, ClaimKind, ClaimVerdict, evaluate
from pytest_vram.core.marks import CLAIMS_ATTRIBUTE as ATTRIBUTE
from pytest_vram.core.records import Figures, records_from
from pytest_vram.render.claims import report_text, summary_lines
from pytest_vram.render.json_report import claim_property

#: ``config.workeroutput`` key of a worker's declarations.
WORKEROUTPUT_KEY = "vram_claims"


class ClaimHooks:
    """Collects declarations and figures; on the controller, judges and reports the claims.

    ``owner`` maps a baseline key to the collected test that produces it (None: no
    collected test does); ``produced_nowhere`` says of a key that no test of the run's tree
    can produce it (a typo, a renamed test); ``strict`` makes a claim with missing figures
    fail, not skip, and also one that reads a key produced nowhere.
    """

    def __init__(
        self,
        config: pytest.Config,
        *,
        worker: bool,
        strict: bool,
        owner: Callable[[str], str | None],
        results: list[tuple[str, ClaimVerdict]],
        produced_nowhere: Callable[[str], bool] = lambda key: False,
    ) -> None:
        self.config = config
        self.worker = worker
        self.strict = strict
        self.owner = owner
        self.produced_nowhere = produced_nowhere
        #: (node id, verdict) of the claims judged in this session (the session's outcome
        #: holds the same list, for ``--vram-json`` and ``--vram-markdown``)
        self.results = results
        #: every record of this process by baseline key (``vram_figures``)
        self.figures = Figures()
        #: node id of the declaring module's item -> claim
        self.declared: dict[str, Claim] = {}
        #: node id -> outcome of the tests that ran ("passed", "failed", "skipped")
        self.ran: dict[str, str] = {}
        self.not_evaluated: list[tuple[str, str]] = []

    # -- declarations ----------------------------------------------------------------

    def module_collected(self, collector: pytest.Module, rep: pytest.CollectReport) -> None:
        """A module that declares claims was collected (``CollectionHooks`` looks for the
        attribute in every module): take its declarations, or fail its collection with the
        reason."""
        try:
            self._declare(collector.nodeid, getattr(collector.obj, ATTRIBUTE))
        except ClaimError as exc:
            rep.outcome = "failed"
            rep.longrepr = f"{collector.nodeid}: {ATTRIBUTE}: {exc}"

    def module_failed(self, collector: pytest.Module, rep: pytest.CollectReport) -> None:
        """A module whose import failed: where a claim declared in it was refused
        (:class:`ClaimError`), its collection error is that one line, at the declaration,
        instead of a traceback through the dataclass that refused it."""
        call = getattr(rep, "call", None)  # pytest's CallInfo, kept for collect_one_node
        excinfo = getattr(call, "excinfo", None)
        if excinfo is None or not isinstance(excinfo.value, ClaimError):
            return
        lines = [entry.lineno + 1 for entry in excinfo.traceback if entry.path == collector.path]
        where = f"{collector.nodeid}:{lines[-1]}" if lines else collector.nodeid
        rep.longrepr = f"{where}: {ATTRIBUTE}: {excinfo.value}"

    def _declare(self, module: str, declared: Any) -> None:
        if not isinstance(declared, (list, tuple)):
            raise ClaimError(
                f"must be a list of pytest_vram.claims.Claim, got {type(declared).__name__}"
            )
        for item in declared:
            if not isinstance(item, Claim):
                raise ClaimError(
                    f"{item!r} is not a Claim; declare claims with Claim.at_most(...) or "
                    f"Claim.grows_like(...)"
                )
            nodeid = f"{module}::{item.name}"
            if nodeid in self.declared:
                raise ClaimError(f"claim name {item.name!r} is declared twice")
            self.declared[nodeid] = item

    # -- figures ---------------------------------------------------------------------

    def add_report(self, report: pytest.TestReport) -> None:
        """A test report's phase (``ReportHooks`` hands it on): what ran, the figures."""
        if report.when == "call" or report.outcome != "passed":  # a setup error counts too
            xfailed = report.skipped and hasattr(report, "wasxfail")
            self.ran[report.nodeid] = "xfailed" if xfailed else report.outcome
        if report.when == "teardown" and report.user_properties:
            for record in records_from(report.user_properties):
                self.figures.add(record)

    # -- xdist -----------------------------------------------------------------------

    def pytest_sessionfinish(self) -> None:
        if self.worker:
            output = self.config.workeroutput  # type: ignore[attr-defined]
            output[WORKEROUTPUT_KEY] = {k: c.to_dict() for k, c in self.declared.items()}

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        data = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY) or {}
        for nodeid, claim in data.items():
            self.declared.setdefault(nodeid, Claim.from_dict(claim))

    # -- judging ---------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        result = yield
        if self.worker or self.config.option.collectonly or not self.declared:
            return result
        judged = []
        for nodeid, claim in sorted(self.declared.items()):
            owners = {key: self.owner(key) for key in claim.keys}
            missing = {key: self._why_missing(owner) for key, owner in owners.items()}
            # A claim is in play when one of its tests ran: `pytest -m "not vram"` or one
            # unrelated file leaves it out, a partial selection (`-k phase7`) reports it.
            # A test that skipped itself (a GPU-only or multi-GPU test elsewhere) did not
            # run: a claim over skipped tests alone is not in play either. Figures of a
            # test that asked for `vram` at run time count although it owns no key.
            ran = any(self.ran.get(owner, "skipped") != "skipped" for owner in owners.values())
            measured = any(key in self.figures for key in claim.keys)
            # A key no test can produce is a mistake in the declaration: strict mode,
            # which must decide every claim, fails it even when nothing else ran.
            nowhere = self.strict and any(
                owner is None and key not in self.figures and self.produced_nowhere(key)
                for key, owner in owners.items()
            )
            if ran or measured or nowhere:
                judged.append((nodeid, evaluate(claim, self.figures, missing)))
            else:
                reasons = "; ".join(f"{key}: {why}" for key, why in missing.items())
                self.not_evaluated.append((nodeid, f"none of its tests ran ({reasons})"))
        # The claims are reported as items of their own: count them for the progress column.
        session.testscollected += len(judged)
        for nodeid, verdict in judged:
            self.results.append((nodeid, verdict))
            _report(self.config, nodeid, verdict, strict=self.strict)
        return result

    def _why_missing(self, owner: str | None) -> str:
        if owner is None:
            return (
                "no collected test produces it: check the key, the test's node id or "
                "nodeid::name as the VRAM table shows it"
            )
        outcome = self.ran.get(owner)
        if outcome is None:
            return f"{owner} was deselected or did not run"
        if outcome == "passed":
            return f"{owner} passed but did not measure it"
        return f"{owner} {outcome}"

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        # A run that measured nothing (`pytest -m "not vram"`) has nothing to say on claims.
        if self.worker or not (self.results or (self.not_evaluated and self.figures)):
            return
        terminalreporter.section("VRAM claims")
        for line in summary_lines(self.results, self.not_evaluated):
            terminalreporter.write_line(line)


def _report(config: pytest.Config, nodeid: str, verdict: ClaimVerdict, *, strict: bool) -> None:
    """Hand the verdict to every reporter as the setup, call and teardown of a test."""
    path, _, name = nodeid.rpartition("::")
    location = (path, None, name)
    extra: dict[str, Any] = {}
    outcome, longrepr = "passed", None
    text = report_text(nodeid, verdict, strict=strict)
    if verdict.kind is ClaimKind.BROKEN_AS_EXPECTED:
        outcome, extra["wasxfail"] = "skipped", text
    elif verdict.kind is ClaimKind.INCOMPLETE and not strict:
        outcome, longrepr = "skipped", (path, None, text)
    elif verdict.fails or verdict.kind is ClaimKind.INCOMPLETE:
        outcome, longrepr = "failed", text
    prop = [claim_property(verdict)]
    hook = config.hook
    hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
    for when, rep_outcome, rep_longrepr, props, kw in (
        ("setup", "passed", None, [], {}),
        ("call", outcome, longrepr, [], extra),
        ("teardown", "passed", None, prop, {}),  # where JUnit XML reads properties
    ):
        rep = pytest.TestReport(
            nodeid, location, {name: 1, "vram": 1}, rep_outcome, rep_longrepr, when,
            user_properties=props, **kw,
        )  # fmt: skip
        hook.pytest_runtest_logreport(report=rep)
    hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
