"""Where the results of a run come together: :class:`ReportHooks` (each test report to the
session and the claims), :class:`AggregateHooks` (the session-end work and the ``VRAM``
section, in the controller or the single process) and :class:`WorkerHooks` (an xdist
worker's collection, sent to the controller)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_vram.pytest_plugin import xdist
from pytest_vram.pytest_plugin.claim_judging import ClaimHooks
from pytest_vram.pytest_plugin.session import VramSession
from pytest_vram.render.terminal import section


class ReportHooks:
    """Each test report's phase: to the claims (what ran, the figures) and, where the
    process aggregates, to the session (completed tests, the records a teardown report
    carries)."""

    def __init__(self, session: VramSession, claims: ClaimHooks, aggregate: bool) -> None:
        self.session = session
        self.claims = claims
        self.aggregate = aggregate

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.aggregate:
            self.session.add_report(
                report.nodeid, report.when, report.passed, report.user_properties
            )
        self.claims.add_report(report)


class AggregateHooks:
    """The controller (or the single process; rank 0 of a launched world): where and when
    the run happened, the session-end work, and the ``VRAM`` section (:class:`ReportHooks`
    gathers the records from the reports)."""

    def __init__(self, config: pytest.Config, session: VramSession) -> None:
        self.config = config
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.session.settings.json_path:
            self.session.outcome.run = run_metadata(session.config.rootpath)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.session.finish(_partly_selected_files(self.config)):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.session.outcome.has_summary:
            section(terminalreporter, self.session.outcome, self.session.settings.strict)


class WorkerHooks:
    """An xdist worker: hands its collection to the controller at the end of its session."""

    def __init__(self, config: pytest.Config, session: VramSession) -> None:
        self.config = config
        self.session = session

    def pytest_sessionfinish(self) -> None:
        xdist.send(self.config, self.session.collection())


def run_metadata(root: Path) -> dict[str, Any]:
    """Commit, branch, UTC time and machine of this run, for comparing runs over time.

    On GitHub Actions the pull request's branch and commit come from its variables (a
    checkout there is a detached merge commit); elsewhere from ``git`` in ``root``.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None

    branch = os.environ.get("GITHUB_HEAD_REF") or os.environ.get("GITHUB_REF_NAME")
    return {
        "commit": os.environ.get("GITHUB_SHA") or git("rev-parse", "HEAD"),
        "branch": branch or git("rev-parse", "--abbrev-ref", "HEAD"),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def _partly_selected_files(config: pytest.Config) -> set[str]:
    """Test files (rootdir-relative, as in node ids) of which the command line selected only
    some tests (``file.py::test_a``): their other entries were never collected, so a run
    says nothing about them and they cannot be stale."""
    partly: set[str] = set()
    whole: set[str] = set()
    for arg in config.args:
        path, sep, _ = str(arg).partition("::")
        try:
            resolved = (config.invocation_params.dir / path).resolve()
            relative = resolved.relative_to(config.rootpath).as_posix()
        except (OSError, ValueError):
            continue
        (partly if sep else whole).add(relative)
    return {
        f for f in partly if not any(f == w or f.startswith(w.rstrip("/") + "/") for w in whole)
    }
