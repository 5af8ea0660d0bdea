"""Comments in baseline files survive ``--vram-update``; the canonical form stays."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from vram_testing import MiB, load

from pytest_vram import __version__
from pytest_vram.store import baselines
from pytest_vram.store.baselines import Entry

COMMENTED = f"""\
# Figures of the scripted backend; re-record with `pytest --vram-update`.
profile: scripted
recorded_with:
  allocator: default
  backend: scripted  # the test backend
  device: scripted
  plugin: {__version__}
  torch: none
entries:
  # raised after the flash attention change, PR 123
  test_u.py::test_a:
    model_bytes: 0
    peak_bytes: 4194304  # was 3 MiB before PR 123
    activation_bytes: 4194304
  test_u.py::test_b:  # flaky on small GPUs
    model_bytes: 0
    peak_bytes: 1024
    activation_bytes: 1024
  'test_u.py::test_c[# not a comment]':
    model_bytes: 0
    peak_bytes: 1
    activation_bytes: 1
# end of file note
"""
TESTS = """
    MiB = 1024**2

    def test_a(vram):
        vram.run(vram.backend.spike, 8 * MiB)

    def test_b(vram):
        vram.run(vram.backend.spike, 1024)
"""


def test_update_keeps_comments_with_their_entries(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_u=TESTS)
    path = vram_pytester.path / "baselines" / "scripted.yaml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    run_vram("--vram-update", "--vram-prune").assert_outcomes(passed=2)
    text = path.read_text()
    assert text == (
        COMMENTED.replace("peak_bytes: 4194304  #", f"peak_bytes: {8 * MiB}  #")
        .replace("activation_bytes: 4194304", f"activation_bytes: {8 * MiB}")
        .replace(
            "  'test_u.py::test_c[# not a comment]':\n    model_bytes: 0\n    peak_bytes: 1\n"
            "    activation_bytes: 1\n",
            "",
        )
    )
    assert load(path).entries["test_u.py::test_a"].peak_bytes == 8 * MiB


def test_comments_are_put_at_their_key_in_canonical_order(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text(
        "profile: scripted\nentries:\n"
        "  z.py::t:  # last in canonical order\n    model_bytes: 0\n    peak_bytes: 2\n"
        "  # about a\n  a.py::t:\n    model_bytes: 0\n    peak_bytes: 1\n"
    )
    baselines.update(path, "scripted", {"m.py::t": Entry(0, 3)}, setup={})
    assert path.read_text() == (
        "profile: scripted\nentries:\n"
        "  # about a\n  a.py::t:\n    model_bytes: 0\n    peak_bytes: 1\n    activation_bytes: 1\n"
        "  m.py::t:\n    model_bytes: 0\n    peak_bytes: 3\n    activation_bytes: 3\n"
        "  z.py::t:  # last in canonical order\n    model_bytes: 0\n    peak_bytes: 2\n"
        "    activation_bytes: 2\n"
    )


def test_comment_after_a_flow_style_entry_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text(
        "profile: scripted\nentries:\n"
        "  a.py::t: {model_bytes: 0, peak_bytes: 1}  # hand-written, flow style\n"
    )
    baselines.update(path, "scripted", {"a.py::t": Entry(0, 2)}, setup={})
    assert path.read_text() == (
        "profile: scripted\nentries:\n  a.py::t:  # hand-written, flow style\n"
        "    model_bytes: 0\n    peak_bytes: 2\n    activation_bytes: 2\n"
    )


def test_unchanged_commented_file_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text(COMMENTED)
    result = baselines.update(
        path, "scripted", {"test_u.py::test_b": Entry(0, 1024)}, setup={"x": "y"}
    )
    assert not result.written and path.read_text() == COMMENTED


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "baselines").glob("*.yaml")), ids=lambda p: p.name
)
def test_committed_baselines_stay_byte_identical_after_a_no_change_update(
    tmp_path: Path, path: Path
) -> None:
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    loaded = load(copy)
    result = baselines.update(
        copy,
        loaded.profile,
        loaded.entries,
        setup={"changed": "yes"},
        seen=loaded,
        read_before=True,
    )
    assert not result.written and not result.conflicts
    assert copy.read_bytes() == path.read_bytes()
    # And a forced rewrite of the same content is the same bytes: the form is canonical.
    baselines.write(loaded)  # loaded.path is the copy
    assert copy.read_bytes() == path.read_bytes()
