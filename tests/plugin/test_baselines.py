"""The baseline store: strict loading, canonical dumping, atomic writes, update, stale entries."""

from __future__ import annotations

import os
import re
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vram.core.names import unstorable
from pytest_vram.core.units import MiB, Tolerance
from pytest_vram.store import baselines, files, yaml_dialect
from pytest_vram.store.baselines import (
    BaselineError,
    BaselineFile,
    Change,
    Entry,
    dump,
    load,
    profile_path,
    stale_keys,
    update,
    write,
)

PROFILE = "cuda-h200"
KEY = "tests/vram/test_zoo.py::test_inference[maximum-phase8]"
ENTRY = Entry(model_bytes=6163679232, peak_bytes=6236118016, params=3081831456)

EXAMPLE = f"""\
profile: {PROFILE}
recorded_with:
  device: NVIDIA H200
  plugin: 0.1.0
  torch: 2.11.0+cu130
tolerance: 0.5%
entries:
  {KEY}:
    params: 3081831456
    model_bytes: 6163679232
    peak_bytes: 6236118016
    activation_bytes: 72438784
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "baselines" / f"{PROFILE}.yaml"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def entry_text(body: str, key: str = "tests/x.py::t") -> str:
    """A file with one entry whose fields are ``body`` (YAML lines, unindented)."""
    fields = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return f"profile: {PROFILE}\nentries:\n  {key}:\n{fields}\n"


# ----------------------------------------------------------------------------- loading


def test_load_missing_file_is_none(path: Path) -> None:
    assert load(path) is None


def test_load_example(path: Path) -> None:
    baseline = load(write_text(path, EXAMPLE))
    assert baseline == BaselineFile(
        path=path,
        profile=PROFILE,
        entries={KEY: ENTRY},
        setup={"device": "NVIDIA H200", "plugin": "0.1.0", "torch": "2.11.0+cu130"},
        tolerance=Tolerance(relative=0.005),
    )
    assert baseline.entries[KEY].activation_bytes == 72438784


def test_example_is_already_canonical(path: Path) -> None:
    baseline = load(write_text(path, EXAMPLE))
    assert baseline is not None
    assert dump(baseline) == EXAMPLE


@pytest.mark.parametrize(
    "text",
    [
        f"profile: {PROFILE}\nentries: {{}}\n",
        f"profile: {PROFILE}\nentries:\n",  # an empty "entries:" reads as null
    ],
)
def test_load_empty_entries(path: Path, text: str) -> None:
    baseline = load(write_text(path, text))
    assert baseline is not None
    assert baseline.entries == {}
    assert baseline.setup == {}
    assert baseline.tolerance is None


def test_load_optional_fields(path: Path) -> None:
    text = entry_text("model_bytes: 10\npeak_bytes: 30\ntolerance: 1% + 4MiB")
    baseline = load(write_text(path, text))
    assert baseline is not None
    assert baseline.entries["tests/x.py::t"] == Entry(
        10, 30, params=None, tolerance=Tolerance(0.01, 4 * MiB)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Field types: the message names file, entry, field and what was expected.
        (
            entry_text("model_bytes: 1\npeak_bytes: 5.8 GB"),
            "entry 'tests/x.py::t': peak_bytes must be a non-negative integer number of "
            "bytes, got '5.8 GB' (write 5800000000)",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 5.8e9"),
            "entry 'tests/x.py::t': peak_bytes must be a non-negative integer number of bytes",
        ),
        (
            entry_text("model_bytes: -1\npeak_bytes: 2"),
            "entry 'tests/x.py::t': model_bytes must be a non-negative integer number of bytes, "
            "got -1",
        ),
        (
            entry_text("model_bytes: true\npeak_bytes: 2"),
            "entry 'tests/x.py::t': model_bytes must be a non-negative integer number of bytes, "
            "got True",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 2\nparams: many"),
            "entry 'tests/x.py::t': params must be a non-negative integer (or null), got 'many'",
        ),
        (
            entry_text("peak_bytes: 2"),
            "entry 'tests/x.py::t': model_bytes is missing; record it with --vram-update",
        ),
        (
            entry_text("model_bytes: 2"),
            "entry 'tests/x.py::t': peak_bytes is missing",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 2\npeek_bytes: 3"),
            "entry 'tests/x.py::t': unknown key 'peek_bytes'; allowed keys are params, "
            "model_bytes, peak_bytes, activation_bytes, largest, card, tolerance",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 3\nactivation_bytes: 1"),
            "entry 'tests/x.py::t': activation_bytes is 1 but peak_bytes - model_bytes is 2; "
            "set activation_bytes: 2",
        ),
        (
            entry_text("model_bytes: 3\npeak_bytes: 2"),
            "entry 'tests/x.py::t': peak_bytes (2) must be at least model_bytes (3)",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 2\ntolerance: 0.5"),
            "entry 'tests/x.py::t': tolerance: 0.5 is ambiguous without a unit; write '0.5%'",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 2\ntolerance: 200%"),
            "entry 'tests/x.py::t': tolerance: percentage must be between 0% and 100%",
        ),
        (
            f"profile: {PROFILE}\nentries:\n  tests/x.py::t: 5\n",
            "entry 'tests/x.py::t': must be a mapping with model_bytes and peak_bytes, got int 5",
        ),
        (
            f"profile: {PROFILE}\nentries:\n  tests/x.py::t:\n",
            "entry 'tests/x.py::t': must be a mapping with model_bytes and peak_bytes, "
            "got nothing (null)",
        ),
        # Duplicate keys: PyYAML alone would keep the last one silently.
        (
            f"profile: {PROFILE}\nentries:\n"
            "  tests/x.py::t:\n    model_bytes: 1\n    peak_bytes: 2\n"
            "  tests/x.py::t:\n    model_bytes: 1\n    peak_bytes: 3\n",
            "entry 'tests/x.py::t' appears twice (lines 3 and 6); keep one of them",
        ),
        (
            entry_text("model_bytes: 1\npeak_bytes: 2\npeak_bytes: 3"),
            "entry 'tests/x.py::t': peak_bytes appears twice (lines 5 and 6)",
        ),
        (
            f"profile: {PROFILE}\nprofile: {PROFILE}\nentries: {{}}\n",
            "top-level key 'profile' appears twice (lines 1 and 2)",
        ),
        (
            f"profile: {PROFILE}\nrecorded_with:\n  torch: '1'\n  torch: '2'\nentries: {{}}\n",
            "recorded_with: key 'torch' appears twice (lines 3 and 4)",
        ),
        # Header.
        ("", "file is empty; expected a mapping with keys profile, entries"),
        ("- 1\n- 2\n", "top level must be a mapping with keys profile, entries"),
        ("entries: {}\n", f"profile is missing; add 'profile: {PROFILE}'"),
        ("profile: 7\nentries: {}\n", "profile must be a string, got 7"),
        (
            "profile: cuda-h100\nentries: {}\n",
            f"profile is 'cuda-h100' but the file name says '{PROFILE}'; a file holds exactly "
            f"its own profile: rename the file to 'cuda-h100.yaml' or set 'profile: {PROFILE}'",
        ),
        (f"profile: {PROFILE}\n", "entries is missing; write 'entries: {}' for none"),
        (f"profile: {PROFILE}\nentries: [a]\n", "entries must be a mapping from test id"),
        (
            f"profile: {PROFILE}\nentry: {{}}\nentries: {{}}\n",
            "unknown top-level key 'entry'; allowed keys are profile, recorded_with, "
            "tolerance, entries",
        ),
        (
            f"profile: {PROFILE}\nrecorded_with: [torch]\nentries: {{}}\n",
            "recorded_with must be a mapping of names to version strings, got a list",
        ),
        (
            f"profile: {PROFILE}\nrecorded_with:\n  plugin: 0.1\nentries: {{}}\n",
            "recorded_with: 'plugin' must map a name to a string, got 0.1; quote the value",
        ),
        (f"profile: {PROFILE}\ntolerance: 3\nentries: {{}}\n", "tolerance: 3 is ambiguous"),
        (
            f"profile: {PROFILE}\nentries:\n  1:\n    model_bytes: 1\n    peak_bytes: 1\n",
            "entry key 1 must be a non-empty test id string",
        ),
        # Syntax: the message carries the line.
        (
            f"profile: {PROFILE}\nentries:\n  tests/x.py::t: [1,\n",
            "line 4, column 1: invalid YAML",
        ),
        (
            f"profile: {PROFILE}\nentries:\n  a:\n    model_bytes: 1\n   peak_bytes: 2\n",
            "line 5, column 4: invalid YAML",
        ),
        (f"profile: {PROFILE}\n---\nprofile: {PROFILE}\n", "invalid YAML"),
    ],
)
def test_load_errors_name_file_entry_field_and_fix(path: Path, text: str, message: str) -> None:
    write_text(path, text)
    with pytest.raises(BaselineError) as excinfo:
        load(path)
    error = str(excinfo.value)
    assert error.startswith(str(path))
    assert message in error


def test_load_refuses_python_tags(path: Path) -> None:
    # safe loading: a baseline is data, never code.
    write_text(path, f"profile: {PROFILE}\nentries: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BaselineError, match="invalid YAML"):
        load(path)


# ----------------------------------------------------------------------------- profile names


@pytest.mark.parametrize("profile", ["cuda-nvidia-h200", "estimate", "cuda-a100_80gb", "v1.2+x"])
def test_profile_path(tmp_path: Path, profile: str) -> None:
    assert profile_path(tmp_path, profile) == tmp_path / f"{profile}.yaml"


@pytest.mark.parametrize("profile", ["", "../etc", "a/b", ".hidden", "a b", "a\\b", "x..y", "-x"])
def test_profile_path_rejects_unsafe_names(tmp_path: Path, profile: str) -> None:
    with pytest.raises(BaselineError, match=re.escape(f"profile name {profile!r}")):
        profile_path(tmp_path, profile)


# ----------------------------------------------------------------------------- dumping


def make_file(path: Path, entries: dict[str, Entry], **kwargs: object) -> BaselineFile:
    return BaselineFile(
        path=path,
        profile=path.stem,
        entries=entries,
        setup=kwargs.pop("setup", {"torch": "2.11"}),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_dump_is_canonical(path: Path) -> None:
    entries = {
        "tests/b.py::t": Entry(10, 30, params=5, tolerance=Tolerance(0.01, 4 * MiB)),
        "tests/a.py::t": Entry(1, 2),
    }
    baseline = make_file(path, entries, setup={"torch": "2.11", "device": "H200", "plugin": "0.10"})
    assert dump(baseline) == textwrap.dedent(
        f"""\
        profile: {PROFILE}
        recorded_with:
          device: H200
          plugin: '0.10'
          torch: '2.11'
        entries:
          tests/a.py::t:
            model_bytes: 1
            peak_bytes: 2
            activation_bytes: 1
          tests/b.py::t:
            params: 5
            model_bytes: 10
            peak_bytes: 30
            activation_bytes: 20
            tolerance: 1% + 4MiB
        """
    )


def test_dump_is_deterministic_whatever_the_insertion_order(path: Path) -> None:
    keys = [f"tests/t.py::test[{i}]" for i in range(20)]
    forward = make_file(path, {k: Entry(1, 2) for k in keys})
    backward = make_file(path, {k: Entry(1, 2) for k in reversed(keys)})
    assert dump(forward) == dump(backward)
    assert dump(forward) == dump(forward)


def test_dump_has_no_aliases_even_for_shared_objects(path: Path) -> None:
    shared = {"torch": "2.11"}
    entry = Entry(1, 2, tolerance=Tolerance(0.01))
    text = dump(make_file(path, {"a": entry, "b": entry}, setup=shared))
    assert "&" not in text and "*" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_dump_of_empty_file_round_trips(path: Path) -> None:
    baseline = make_file(path, {}, setup={})
    assert dump(baseline) == f"profile: {PROFILE}\nentries: {{}}\n"
    assert baselines.parse(dump(baseline), path) == baseline


def test_long_parametrised_ids_stay_plain_keys(path: Path) -> None:
    # PyYAML would switch to the "? key" form past 128 characters.
    key = "tests/vram/test_zoo.py::test_train[" + "-".join(["preset"] * 40) + "]::backward"
    text = dump(make_file(path, {key: Entry(1, 2)}))
    assert f"\n  {key}:\n" in text
    assert "?" not in text
    assert baselines.parse(text, path).entries == {key: Entry(1, 2)}


@pytest.mark.parametrize(
    "key",
    [
        "tests/x.py::test[a: b]",
        "tests/x.py::test[#1]",
        "tests/x.py::test['quoted']",
        "tests/x.py::test[ü-ñ]",
        "tests/x.py::test[yes]",
        "tests/x.py::test[1.5]",
        "- starts with dash",
        "123",
        "null",
    ],
)
def test_awkward_keys_round_trip(path: Path, key: str) -> None:
    baseline = make_file(path, {key: Entry(1, 2)})
    assert baselines.parse(dump(baseline), path) == baseline


_keys = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=80
).filter(lambda k: k.strip() == k and k)
_sizes = st.integers(min_value=0, max_value=2**50)


@st.composite
def _entries(draw: st.DrawFn) -> Entry:
    model = draw(_sizes)
    peak = model + draw(_sizes)
    params = draw(st.none() | _sizes)
    tolerance = draw(
        st.none()
        | st.builds(Tolerance, st.floats(min_value=0, max_value=1, allow_nan=False), _sizes)
    )
    return Entry(model, peak, params=params, tolerance=tolerance)


@settings(max_examples=200)
@given(st.dictionaries(_keys, _entries(), max_size=5))
def test_dump_round_trips_through_load(entries: dict[str, Entry]) -> None:
    path = Path("baselines") / f"{PROFILE}.yaml"
    baseline = make_file(path, entries, tolerance=Tolerance(0.005))
    text = dump(baseline)
    assert baselines.parse(text, path) == baseline
    assert dump(baselines.parse(text, path)) == text


# ----------------------------------------------------------------------------- writing


def test_write_creates_directory_and_round_trips(path: Path) -> None:
    baseline = make_file(path, {KEY: ENTRY})
    write(baseline)
    assert path.read_bytes() == dump(baseline).encode()
    assert load(path) == baseline
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_write_keeps_the_file_mode(path: Path) -> None:
    write_text(path, EXAMPLE)
    path.chmod(0o640)
    write(make_file(path, {KEY: ENTRY}))
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_write_new_file_is_readable_by_others(path: Path) -> None:
    # tempfile.mkstemp would leave 0600; a baseline is shared in a repository.
    old = os.umask(0o022)
    try:
        write(make_file(path, {KEY: ENTRY}))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_old_file_and_no_temp_file(
    path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    write_text(path, EXAMPLE)

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, failing, boom)
    # An OSError becomes a BaselineError that names the file (the plugin reports it).
    with pytest.raises(BaselineError, match=r"cannot write the baseline file \(disk full"):
        write(make_file(path, {"tests/other.py::t": Entry(1, 2)}))
    monkeypatch.undo()
    assert path.read_text() == EXAMPLE
    assert list(path.parent.iterdir()) == [path]


def test_interrupted_write_leaves_old_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # KeyboardInterrupt mid-write (Ctrl-C during --vram-update) must not leave a torn file.
    write_text(path, EXAMPLE)
    real_fdopen = os.fdopen

    class Torn:
        def __init__(self, fd: int, mode: str) -> None:
            self.handle = real_fdopen(fd, mode)

        def __enter__(self) -> Torn:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> None:
            self.handle.write(data[:10])
            raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fdopen", Torn)
    with pytest.raises(KeyboardInterrupt):
        write(make_file(path, {"tests/other.py::t": Entry(1, 2)}))
    monkeypatch.undo()
    assert path.read_text() == EXAMPLE
    assert list(path.parent.iterdir()) == [path]


# ----------------------------------------------------------------------------- update

RECORDED = {"torch": "2.11.0+cu130", "device": "NVIDIA H200", "plugin": "0.1.0"}


def test_update_creates_the_file(path: Path) -> None:
    result = update(path, PROFILE, {KEY: ENTRY}, setup=RECORDED)
    assert result.written
    assert result.added == [Change(KEY, None, ENTRY)]
    assert (result.changed, result.unchanged, result.removed) == ([], [], [])
    assert load(path) == BaselineFile(path, PROFILE, {KEY: ENTRY}, RECORDED)


def test_update_with_nothing_measured_creates_nothing(path: Path) -> None:
    result = update(path, PROFILE, {}, setup=RECORDED)
    assert not result.written
    assert not path.exists()


def test_update_rewrites_exactly_the_measured_entries(path: Path) -> None:
    other = Entry(100, 200, params=7, tolerance=Tolerance(absolute=MiB))
    write(make_file(path, {KEY: ENTRY, "tests/other.py::t": other}, tolerance=Tolerance(0.005)))
    new = Entry(ENTRY.model_bytes, ENTRY.peak_bytes + MiB, params=ENTRY.params)
    added = Entry(1, 2)

    result = update(path, PROFILE, {KEY: new, "tests/new.py::t": added}, setup={"torch": "2.12"})

    assert result.written
    assert result.changed == [Change(KEY, ENTRY, new)]
    assert result.added == [Change("tests/new.py::t", None, added)]
    assert load(path) == BaselineFile(
        path,
        PROFILE,
        {KEY: new, "tests/other.py::t": other, "tests/new.py::t": added},
        {"torch": "2.12"},
        Tolerance(0.005),
    )


def test_update_keeps_an_entry_tolerance_override(path: Path) -> None:
    override = Tolerance(0.02)
    write(make_file(path, {KEY: Entry(1, 2, tolerance=override)}))
    result = update(path, PROFILE, {KEY: Entry(1, 3)}, setup=RECORDED)
    assert result.changed == [
        Change(KEY, Entry(1, 2, tolerance=override), Entry(1, 3, tolerance=override))
    ]
    loaded = load(path)
    assert loaded is not None
    assert loaded.entries[KEY].tolerance == override


def test_update_with_same_figures_leaves_the_file_byte_identical(path: Path) -> None:
    # Hand-written text (a comment, another order) stays as it is when nothing changed.
    text = "# reviewed in #42\n" + EXAMPLE.replace("tolerance: 0.5%\n", "") + "# end\n"
    write_text(path, text)
    mtime = path.stat().st_mtime_ns
    result = update(path, PROFILE, {KEY: ENTRY}, setup={"torch": "2.99"})
    assert not result.written
    assert result.unchanged == [KEY]
    assert (result.added, result.changed, result.removed) == ([], [], [])
    assert path.read_text() == text
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "text",
    [
        "profile: cuda-h200\nentries:\n  a: [1,\n",
        entry_text("model_bytes: 1\npeak_bytes: '5.8 GB'"),
        "profile: estimate\nentries: {}\n",
    ],
)
def test_update_refuses_a_malformed_file_and_leaves_it_alone(path: Path, text: str) -> None:
    write_text(path, text)
    with pytest.raises(BaselineError, match=re.escape(str(path))):
        update(path, PROFILE, {KEY: ENTRY}, setup=RECORDED)
    assert path.read_text() == text
    # Nothing but the file: no temporary file is left over.
    assert list(path.parent.iterdir()) == [path]


def test_update_refuses_a_profile_that_is_not_the_file_name(path: Path) -> None:
    with pytest.raises(BaselineError, match="cannot hold profile 'estimate'; use estimate.yaml"):
        update(path, "estimate", {KEY: ENTRY}, setup=RECORDED)
    assert not path.exists()


def test_update_prunes(path: Path) -> None:
    gone = Entry(5, 6)
    write(make_file(path, {KEY: ENTRY, "tests/x.py::gone": gone, "tests/x.py::kept": gone}))
    result = update(
        path,
        PROFILE,
        {KEY: ENTRY},
        setup=RECORDED,
        prune=["tests/x.py::gone", "tests/x.py::never-there", KEY],
    )
    assert result.written
    assert result.removed == [Change("tests/x.py::gone", gone, None)]
    assert result.unchanged == [KEY]  # measured wins over prune
    loaded = load(path)
    assert loaded is not None
    assert sorted(loaded.entries) == sorted(["tests/x.py::kept", KEY])


def test_update_prune_of_absent_keys_changes_nothing(path: Path) -> None:
    write_text(path, EXAMPLE)
    result = update(path, PROFILE, {}, setup=RECORDED, prune=["tests/x.py::nope"])
    assert not result.written
    assert path.read_text() == EXAMPLE


def test_update_then_update_again_is_a_no_op(path: Path) -> None:
    measured = {KEY: ENTRY, "tests/a.py::t": Entry(1, 2)}
    assert update(path, PROFILE, measured, setup=RECORDED).written
    first = path.read_bytes()
    again = update(path, PROFILE, measured, setup=RECORDED)
    assert not again.written
    assert again.unchanged == sorted(measured)
    assert path.read_bytes() == first


# ----------------------------------------------------------------------------- stale keys


def test_stale_keys(path: Path) -> None:
    entries = {
        "tests/a.py::test_one": Entry(1, 2),
        "tests/a.py::test_gone": Entry(1, 2),
        "tests/a.py::test_two::inference": Entry(1, 2),
        "tests/a.py::test_two::training": Entry(1, 2),
        "tests/b.py::test_not_collected": Entry(1, 2),
        "tests/a.py.bak::test": Entry(1, 2),
    }
    baseline = make_file(path, entries)
    produced = ["tests/a.py::test_one", "tests/a.py::test_two::inference"]
    assert stale_keys(baseline, produced, ["tests/a.py"]) == [
        "tests/a.py::test_gone",
        "tests/a.py::test_two::training",
    ]
    # A partial run says nothing about files it did not collect.
    assert stale_keys(baseline, produced, []) == []
    assert stale_keys(baseline, [], ["tests/b.py"]) == ["tests/b.py::test_not_collected"]


def test_yaml_module_is_still_the_safe_one() -> None:
    # Guard against a refactor that swaps the strict loader for a full one: both the libyaml
    # and the pure Python variant construct with SafeConstructor and nothing richer.
    for loader in (yaml_dialect.StrictLoader, yaml_dialect.PyLoader):
        assert issubclass(loader, yaml.constructor.SafeConstructor)
        assert not issubclass(loader, yaml.constructor.FullConstructor)


# --------------------------------------------------------------------------- keys


#: any character, lone surrogates (which st.characters never gives) and controls included
_KEY_CHARACTERS = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))


@settings(max_examples=300, deadline=None)
@given(st.text(_KEY_CHARACTERS, min_size=1, max_size=60))
def test_a_key_is_stored_as_given_or_refused_before_writing(key: str) -> None:
    # Any text: an update either writes a file the next run reads back with the same key,
    # or refuses the key before anything is written (a lone surrogate, a control character).
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"{PROFILE}.yaml"
        try:
            update(path, PROFILE, {key: Entry(1, 2)}, setup={})
        except BaselineError as exc:
            assert "cannot be stored" in str(exc) and not path.exists()
            assert unstorable(key) is not None
        else:
            assert unstorable(key) is None
            assert list(load(path).entries) == [key]


@pytest.mark.parametrize("key", ["t.py::a\ud800", "t.py::a\x85b", "t.py::\x1b[31mred"])
def test_a_key_the_next_run_could_not_read_back_is_refused(tmp_path: Path, key: str) -> None:
    path = tmp_path / f"{PROFILE}.yaml"
    update(path, PROFILE, {"t.py::kept": Entry(1, 2)}, setup={})
    before = path.read_bytes()
    with pytest.raises(BaselineError, match=r"entry .* cannot be stored: it holds "):
        update(path, PROFILE, {key: Entry(1, 2)}, setup={})
    assert path.read_bytes() == before
