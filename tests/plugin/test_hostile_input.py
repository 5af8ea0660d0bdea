"""Bounded YAML input and fuzzing.

Whatever a baseline file, a marker or a size/tolerance option holds, the answer is a value
or one of the plugin's own errors (BaselineError, MarkError, UnitError) that names what is
wrong: never another exception.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vram_scripted import MiB, ScriptedBackend

from pytest_vram.core import marks
from pytest_vram.core.units import UnitError, parse_size, parse_tolerance
from pytest_vram.measure.meter import Meter
from pytest_vram.store import baselines, yaml_dialect
from pytest_vram.store.baselines import BaselineError

PATH = Path("baselines/scripted.yaml")
LOADERS = [yaml_dialect.StrictLoader, yaml_dialect.PyLoader]


@pytest.fixture(params=LOADERS, ids=lambda loader: loader.__name__)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Each test runs with the libyaml parser and with the pure Python one."""
    monkeypatch.setattr(yaml_dialect, "StrictLoader", request.param)
    return request.param


def entry(value: str) -> str:
    return f"profile: scripted\nentries:\n  t.py::t:\n    model_bytes: 0\n    peak_bytes: {value}\n"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "2024-13-45",
            "peak_bytes must be a non-negative integer number of bytes, got '2024-13-45'",
        ),
        ('!!int "abc"', "line 5, column 17: invalid YAML: tag !!int is not allowed"),
        ("!!float abc", "tag !!float is not allowed"),
        ("!!timestamp x", "tag !!timestamp is not allowed"),
        ("!!python/name:os.system", "tag !!python/name:os.system is not allowed"),
        ("9" * 5000, "peak_bytes must be a non-negative integer number of bytes, got '99999"),
        (str(2**64), "peak_bytes must be a non-negative integer number of bytes below 2**64"),
        ("52:25:48", "got '52:25:48'"),  # YAML 1.1 base 60 would read 188748
        ("0x10", "got '0x10'"),
        ("1_000", "got '1_000'"),
    ],
)
def test_bad_values_name_the_file_and_the_entry(loader: type, value: str, message: str) -> None:
    with pytest.raises(BaselineError) as info:
        baselines.parse(entry(value), PATH)
    assert str(info.value).startswith(str(PATH))
    assert message in str(info.value)


def test_deep_nesting_is_refused(loader: type) -> None:
    text = "profile: scripted\nentries: " + "[" * 900 + "]" * 900 + "\n"
    with pytest.raises(BaselineError, match=r"nested deeper than 16 levels"):
        baselines.parse(text, PATH)


def test_alias_bomb_is_refused_at_the_first_anchor(loader: type) -> None:
    # 508 bytes that expand to 9**7 nodes: refused before any expansion happens.
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    with pytest.raises(BaselineError, match=r"line 1, column 4: invalid YAML: anchor &a"):
        baselines.parse("\n".join(lines) + "\n", PATH)


def test_alias_without_anchor_is_refused(loader: type) -> None:
    with pytest.raises(BaselineError, match=r"alias \*x is not allowed"):
        baselines.parse("profile: scripted\nentries: *x\n", PATH)


def test_file_over_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(baselines, "MAX_FILE_BYTES", 100)
    path = tmp_path / "scripted.yaml"
    path.write_text("profile: scripted\nentries: {}\n" + "# padding\n" * 20)
    with pytest.raises(BaselineError, match=r"scripted.yaml: larger than 0 MiB"):
        baselines.load(path)


def test_committed_baselines_read_the_same_with_both_loaders() -> None:
    # The bounded loaders accept everything the project records, with the same figures.
    root = Path(__file__).parents[2] / "baselines"
    for path in sorted(root.glob("*.yaml")):
        text = path.read_text()
        first = baselines.parse(text, path)
        assert baselines.dump(first) == text  # canonical: a no-change rewrite is byte-identical
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(yaml_dialect, "StrictLoader", yaml_dialect.PyLoader)
            assert baselines.parse(text, path) == first


@pytest.mark.parametrize("text", ["８GiB", "٨GiB", "8\u2003GiB"])
def test_non_ascii_digits_and_spaces_are_not_sizes(text: str) -> None:
    with pytest.raises(UnitError, match="is not a size"):
        parse_size(text)


def test_nested_run_keeps_the_enclosing_peak() -> None:
    backend = ScriptedBackend()
    meter = Meter(backend)
    meter.start()

    def outer() -> None:
        backend.spike(10 * MiB)
        block = meter.build(backend.alloc, MiB)  # a build inside the workload resets the peak
        meter.run(backend.spike, MiB, name="inner")  # its model bytes: the 1 MiB block
        del block

    meter.run(outer, name="outer")
    peaks = {m.name: m.peak_bytes for m in meter.measurements}
    assert peaks == {"inner": 2 * MiB, "outer": 10 * MiB}


@dataclasses.dataclass
class CountingBackend(ScriptedBackend):
    collections: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def collect_garbage(self) -> None:
        self.collections += 1


def test_the_backend_decides_about_garbage_collection() -> None:
    backend = CountingBackend()
    meter = Meter(backend)
    meter.start()
    meter.run(backend.spike, MiB)
    meter.finish()
    assert backend.collections == 2  # before the first and the last reading of the counters


# --------------------------------------------------------------------------- fuzzing

_YAML_ATOMS = st.sampled_from(
    [
        "profile",
        "entries",
        "model_bytes",
        "peak_bytes",
        "activation_bytes",
        "tolerance",
        "params",
        "recorded_with",
        "scripted",
        ":",
        ": ",
        "\n",
        "  ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "!!int ",
        "!!python/object ",
        "'",
        '"',
        "#",
        "0",
        "1",
        "-1",
        "2024-13-45",
        "52:25:48",
        "0.5%",
        "4MiB",
        "~",
        "null",
        "yes",
        "---",
        "...",
        "?",
        "%YAML 1.1\n",
        "\t",
        "9" * 30,
        ".inf",
        ".nan",
        "0x1F",
        "\u00e9",
        "\ufeff",
    ]
)
_yaml_text = st.one_of(
    st.lists(_YAML_ATOMS, max_size=40).map("".join),
    st.text(max_size=200),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_text)
def test_fuzz_any_yaml_document_gives_a_baseline_or_a_baseline_error(text: str) -> None:
    for loader in LOADERS:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(yaml_dialect, "StrictLoader", loader)
            try:
                baselines.parse(text, PATH)
            except BaselineError as exc:
                assert str(exc).startswith(str(PATH))


_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from(["8GiB", "0.5%", "0.5% + 4MiB", "nan%", "８GiB", "9" * 5000 + "B", "1e9B"]),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*marks.OPTIONS, "budjet", "tol"]), _values, max_size=3))
def test_fuzz_marker_options_give_a_mark_or_a_mark_error(options: dict[str, object]) -> None:
    try:
        marks._parse("t.py::t", options)
    except marks.MarkError as exc:
        assert str(exc).startswith("t.py::t: @pytest.mark.vram")


@settings(max_examples=300, deadline=None)
@given(_values)
def test_fuzz_size_and_tolerance_values_give_a_value_or_a_unit_error(value: object) -> None:
    for parse in (parse_size, parse_tolerance):
        try:
            parse(value, what="--vram-x")  # type: ignore[arg-type]
        except UnitError as exc:
            assert "--vram-x" in str(exc) or "Tolerance" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), _values))
def test_fuzz_profile_names_give_a_path_or_a_baseline_error(name: object) -> None:
    # --vram-profile, ini vram_profile and a backend's profile() all go through this check.
    try:
        path = baselines.profile_path(Path("baselines"), name)  # type: ignore[arg-type]
    except BaselineError as exc:
        assert "is not a safe file name" in str(exc)
    else:
        assert path.parent == Path("baselines") and path.name == f"{name}.yaml"
