"""VramSession on its own: judging, stale entries and updates without pytester."""

from __future__ import annotations

from pathlib import Path

import pytest
from vram_testing import MiB, load

from pytest_vram.core import marks
from pytest_vram.core.units import parse_tolerance
from pytest_vram.core.verdicts import Kind
from pytest_vram.pytest_plugin.options import Settings
from pytest_vram.pytest_plugin.session import VramSession
from pytest_vram.render.json_report import record_property
from pytest_vram.render.verdicts import NOTHING_MEASURED
from pytest_vram.store import baselines
from pytest_vram.store.baselines import BaselineFile, Entry

NODE = "test_m.py::test_a"


@pytest.fixture(autouse=True)
def _scripted_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VRAM_SCRIPTED_PROFILE", raising=False)


def settings(root: Path, **changes: object) -> Settings:
    base = Settings(
        backend="vram_scripted:ScriptedBackend",
        allocator="expandable",
        update=False,
        prune=False,
        strict=False,
        update_new_only=False,
        stale_warn=False,
        fail_improvements=False,
        tolerance=parse_tolerance("0"),
        profile=None,
        baselines=root / "baselines",
        json_path=None,
        markdown_path=None,
    )
    return base._replace(**changes)


def write(root: Path, entries: dict[str, tuple[int, int]]) -> Path:
    path = baselines.profile_path(root / "baselines", "scripted")
    entries_ = {k: Entry(model, peak) for k, (model, peak) in entries.items()}
    baselines.write(BaselineFile(path=path, profile="scripted", entries=entries_, setup={}))
    return path


def measured(session: VramSession, nodeid: str, peak: int) -> list:
    """Open, run one spike of ``peak`` bytes, judge and aggregate as the hooks would."""
    probe = session.open(marks.VramMark(), nodeid)
    probe.run(probe.backend.spike, peak)
    probe.finish()
    records = session.judge(nodeid, probe)
    session.add_report(nodeid, "call", True, [])
    session.add_report(nodeid, "teardown", True, [record_property(r) for r in records])
    return records


def test_judge_against_the_baseline_file(tmp_path):
    write(tmp_path, {NODE: (0, 100 * MiB)})
    session = VramSession(settings(tmp_path), tmp_path)
    (record,) = measured(session, NODE, 150 * MiB)
    assert record.kind is Kind.REGRESSION
    assert record.baseline_path == str(Path("baselines") / "scripted.yaml")
    (text,) = session.failures(NODE, [record])
    assert "memory regression against" in text
    assert session.outcome.records == [record]
    assert session.completed == {NODE}


def test_strict_fails_a_test_that_measured_nothing(tmp_path):
    session = VramSession(settings(tmp_path, strict=True), tmp_path)
    assert session.failures(NODE, []) == [NOTHING_MEASURED.format(nodeid=NODE)]
    assert VramSession(settings(tmp_path), tmp_path).failures(NODE, []) == []


def test_stale_entries_of_collected_files_fail_in_strict_mode(tmp_path):
    write(tmp_path, {NODE: (0, 10 * MiB), "test_m.py::gone": (0, 1), "other.py::t": (0, 1)})
    session = VramSession(settings(tmp_path, strict=True), tmp_path)
    session.collect(NODE, None, vram=True)
    measured(session, NODE, 10 * MiB)
    assert session.finish() is True
    assert session.outcome.stale == {str(Path("baselines") / "scripted.yaml"): ["test_m.py::gone"]}
    assert "1 stale entry" in session.outcome.errors[0]


def test_a_partly_selected_file_has_no_stale_entries(tmp_path):
    write(tmp_path, {NODE: (0, 10 * MiB), "test_m.py::gone": (0, 1)})
    session = VramSession(settings(tmp_path, strict=True), tmp_path)
    session.collect(NODE, None, vram=True)
    measured(session, NODE, 10 * MiB)
    assert session.finish({"test_m.py"}) is False
    assert session.outcome.stale == {}


def test_update_rewrites_the_measured_entry_and_prunes(tmp_path):
    path = write(tmp_path, {NODE: (0, 10 * MiB), "test_m.py::gone": (0, 1)})
    session = VramSession(settings(tmp_path, update=True, prune=True), tmp_path)
    session.collect(NODE, None, vram=True)
    measured(session, NODE, 20 * MiB)
    assert session.finish() is False
    assert load(path).entries[NODE].peak_bytes == 20 * MiB
    assert "test_m.py::gone" not in load(path).entries
    assert session.outcome.updated == [(NODE, 10 * MiB, 20 * MiB)]
    assert session.outcome.pruned == {str(Path("baselines") / "scripted.yaml"): ["test_m.py::gone"]}


def test_an_unwritable_report_fails_the_session(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    session = VramSession(settings(tmp_path, json_path=blocker / "r.json"), tmp_path)
    assert session.write_reports() is True
    assert "--vram-json=file" in session.outcome.errors[0]


def test_a_worker_collection_reaches_the_controller(tmp_path):
    worker = VramSession(settings(tmp_path), tmp_path, worker=True)
    worker.collect(NODE, marks.VramMark(), vram=True)
    worker.collect("test_m.py::plain", None, vram=False)
    controller = VramSession(settings(tmp_path), tmp_path)
    controller.receive(worker.collection())
    assert controller.collected_files == {"test_m.py"}
    assert controller.owner(NODE) == NODE
    assert controller.owner(f"{NODE}::step") == NODE
    assert controller.owner("test_m.py::plain") is None


def test_two_tests_with_one_key_are_named(tmp_path):
    session = VramSession(settings(tmp_path), tmp_path)
    session.collect("t.py::a", marks.VramMark(key="shared"), vram=True)
    session.collect("t.py::b", marks.VramMark(key="shared"), vram=True)
    assert session.shared_with("t.py::a", "shared") == ["t.py::b"]
    assert session.shared_with("t.py::c", "shared") == []
