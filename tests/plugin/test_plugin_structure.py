"""How the plugin is put together: markers evaluated once, verdicts that keep their kind,
hook classes registered once at configure, no torch at import, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_vram
from pytest_vram.core import marks
from pytest_vram.core.records import Record
from pytest_vram.core.verdicts import Kind


def test_markers_are_evaluated_once_per_test(vram_pytester, run_vram, monkeypatch):
    calls: list[str] = []
    evaluate = marks.evaluate

    def counting(item: pytest.Item) -> marks.VramMark | None:
        calls.append(item.nodeid)
        return evaluate(item)

    monkeypatch.setattr(marks, "evaluate", counting)
    vram_pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.vram(budget="1GiB")
        def test_a(vram):
            vram.run(vram.backend.spike, 1)

        def test_b(vram):
            vram.run(vram.backend.spike, 1)
        """
    )
    run_vram().assert_outcomes(passed=2)
    assert sorted(calls) == ["test_m.py::test_a", "test_m.py::test_b"]


def test_a_record_reads_its_verdict_back_as_a_kind():
    record = Record.from_dict(
        {
            "key": "t.py::a", "nodeid": "t.py::a", "name": None, "profile": "p",
            "baseline_path": "b", "params": None, "model_bytes": 0, "peak_bytes": 1,
            "context": {}, "tolerance": "0B", "budget": None, "baseline_model_bytes": 0,
            "baseline_peak_bytes": 2,
            "verdicts": [{"kind": "over budget", "summary": "", "detail": "", "fails": True}],
        }
    )  # fmt: skip
    assert record.kind is Kind.OVER_BUDGET


HOOKS = (
    "vram-collection",
    "vram-session",
    "vram-measure",
    "vram-garbage",
    "vram-benchmark",
    "vram-worker",
    "vram-aggregate",
    "vram-controller",
    "vram-claims",
    "vram-reports",
)

REGISTERED_PROBE = f"""
import os

import pytest

NAMES = {HOOKS!r}

def registered(config, when):
    manager = config.pluginmanager
    found = "+".join(n for n in NAMES if manager.get_plugin(n) is not None)
    role = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(config.rootpath / f"registered-{{role}}.txt", "a") as out:
        out.write(f"{{when}} {{found}}\\n")

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    registered(config, "configure")

def pytest_collection_finish(session):
    registered(session.config, "collected")

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    registered(session.config, "finish")
"""


def registered(pytester: pytest.Pytester, role: str = "main") -> list[str]:
    """What the probe saw at configure, after collection and at the session's end, and
    forget it for the next run."""
    path = pytester.path / f"registered-{role}.txt"
    lines = path.read_text().splitlines()
    path.unlink()
    return lines


def names(*left_out: str) -> str:
    return "+".join(n for n in HOOKS if n not in left_out)


def test_hooks_are_registered_once_at_configure(vram_pytester):
    # Whatever the run holds (plain tests, vram tests, claims, report files), the same hook
    # classes are registered at configure and stay until the end: each acts on what there is.
    vram_pytester.makeconftest(REGISTERED_PROBE)
    vram_pytester.makepyfile(test_x="def test_x(): pass")
    from vram_testing import QUIET, SCRIPTED, plugin_args

    args = (*plugin_args(), *QUIET, "--vram-no-strict", SCRIPTED)
    single = names("vram-worker", "vram-benchmark")
    every_phase = [f"configure {single}", f"collected {single}", f"finish {single}"]
    vram_pytester.runpytest(*args, "-p", "no:benchmark").assert_outcomes(passed=1)
    assert registered(vram_pytester) == every_phase
    vram_pytester.makepyfile(
        test_m="def test_m(vram): vram.run(vram.backend.spike, 1)",
        test_declared="""
        from pytest_vram.claims import Claim, peak

        vram_claims = [Claim.at_most("c", peak("test_m.py::test_m"), "1MiB")]
        """,
    )
    measured = vram_pytester.runpytest(*args, "-p", "no:benchmark", "--vram-json=r.json")
    measured.assert_outcomes(passed=3)
    assert registered(vram_pytester) == every_phase
    pytest.importorskip("pytest_benchmark")
    vram_pytester.runpytest(*args).assert_outcomes(passed=3)
    assert registered(vram_pytester)[0] == f"configure {names('vram-worker')}"


def test_an_xdist_worker_sends_its_collection_instead_of_aggregating(vram_pytester):
    pytest.importorskip("xdist")
    vram_pytester.makeconftest(REGISTERED_PROBE)
    vram_pytester.makepyfile(test_m="def test_m(vram): vram.run(vram.backend.spike, 1)")
    from vram_testing import QUIET, SCRIPTED, plugin_args

    args = (*plugin_args(), *QUIET, "--vram-no-strict", SCRIPTED, "-p", "no:benchmark")
    vram_pytester.runpytest_subprocess(*args, "-n", "1").assert_outcomes(passed=1)
    controller = names("vram-worker", "vram-benchmark")
    worker = names("vram-aggregate", "vram-controller", "vram-benchmark")
    assert set(registered(vram_pytester)) == {f"configure {controller}", f"finish {controller}"}
    assert registered(vram_pytester, "gw0") == [
        f"configure {worker}",
        f"collected {worker}",
        f"finish {worker}",
    ]


def test_importing_the_plugin_imports_neither_torch_nor_a_backend(vram_pytester):
    # A project with the plugin installed and no vram test pays nothing for torch: the
    # backend module (and torch with it) is imported at the first measurement.
    vram_pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            chosen = ("pytest_vram.backends.cuda", "pytest_vram.backends.estimate")
            print("BACKENDS", sorted(m for m in sys.modules if m.startswith(chosen)))
            print("TORCH", sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
        """
    )
    vram_pytester.makepyfile(test_x="def test_x(): pass")
    from vram_testing import QUIET, plugin_args

    result = vram_pytester.runpytest_subprocess(*plugin_args(), *QUIET, "-s", "-p", "no:xdist")
    result.stdout.fnmatch_lines(["BACKENDS []", "TORCH []"])


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, ...]]:
    """What ``module`` imports, anywhere in its code (function-local imports and
    ``TYPE_CHECKING`` blocks included): per import, the names it could mean, most specific
    first (``from a import b`` is the module ``a.b`` if there is one, else a name in ``a``)."""
    found: list[tuple[str, ...]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.extend((f"{base}.{alias.name}", base) for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """The package's import graph: module -> the package's modules it imports.

    A package's ``__init__`` runs before any of its modules, but that is no edge: an
    ``__init__`` that imports its own modules is how a package presents them.
    """
    root = Path(pytest_vram.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path

    def resolve(candidates: tuple[str, ...]) -> str | None:
        for name in candidates:
            while name:
                if name in files:
                    return name
                name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found = {resolve(c) for c in _imports(tree, module, path.name == "__init__.py")}
        graph[module] = {m for m in found if m is not None and m != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert "pytest_vram.pytest_plugin.entry" in graph  # the walk found the package
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_a_measurement_the_collection_did_not_announce_is_still_judged(vram_pytester, run_vram):
    # The fixture requested at run time: no marker, no `vram` argument at collection.
    vram_pytester.makepyfile(
        test_model="""
        MiB = 1024**2

        def test_model(request):
            vram = request.getfixturevalue("vram")
            model = vram.build(vram.backend.alloc, 100 * MiB)
            vram.run(vram.backend.spike, 50 * MiB)
        """
    )
    result = run_vram("-v", "--vram-json=out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_model PASSED (peak 150.0 MiB)*", "*= VRAM =*"])
