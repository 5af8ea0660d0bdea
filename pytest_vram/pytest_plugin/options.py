"""The ``vram`` options: command line and ini keys, validated once at configure into
:class:`Settings`; and what the memory job (``pytest -m vram``) changes before collection
(``vram_numprocesses``, ``vram_testpaths``)."""

from __future__ import annotations

import inspect
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import pytest

try:
    from _pytest.config.findpaths import determine_setup
except ImportError:  # pytest's internals moved: no rootdir check rather than no plugin
    determine_setup = None

from pytest_vram.backends import ALLOCATOR_MODES, CHOICES
from pytest_vram.backends.cards import CARDS, Card, CardError
from pytest_vram.core.units import Tolerance, UnitError, parse_tolerance
from pytest_vram.store import artifacts as artifact_files
from pytest_vram.store import baselines, breakdowns, files, workspaces
from pytest_vram.store.baselines import BaselineError

#: ``vram_tolerance``'s default: no deviation allowed
TOLERANCE_DEFAULT = "0"

#: ``--vram-emulate``: the emulated card answers inside vram tests, or for the whole session
EMULATE_CHOICES = ("test", "session")

#: the ini keys of type bool (their errors say "write true or false")
_BOOL_KEYS: set[str] = set()

_BACKEND_HELP = ", ".join(CHOICES) + ", or a custom backend as 'package.module:ClassName'"


def add_options(parser: pytest.Parser) -> None:
    """The command-line options and ini keys (each option has an ini key of the same name)."""
    group = parser.getgroup("vram", "GPU memory measurement (pytest-vram)")

    def option(
        *names: str, ini: str, ini_type: str | None, default: Any, help: str, **kw: Any
    ) -> None:
        group.addoption(
            *names, dest=ini, default=None, help=f"{help.replace('%', '%%')} [ini: {ini}]", **kw
        )
        parser.addini(ini, help=help, type=ini_type, default=default)
        if ini_type == "bool":
            _BOOL_KEYS.add(ini)

    option(
        "--vram-backend",
        ini="vram_backend",
        ini_type="string",
        default="auto",
        metavar="NAME",
        help=f"measuring backend: {_BACKEND_HELP} (default: auto)",
    )
    option(
        "--vram-allocator",
        ini="vram_allocator",
        ini_type="string",
        default="expandable",
        metavar="MODE",
        help="which allocator figure to measure: 'expandable' (expandable segments: the sum "
        "of 512-B-rounded live requests, the same whatever ran before; default) or "
        "'default' (the allocator's default settings: depends on allocation history and "
        "can change with test order)",
    )
    option(
        "--vram-card",
        ini="vram_card",
        ini_type="string",
        default="",
        metavar="CARD",
        help="the GPU every vram test runs on unless its marker declares another: a name ("
        + ", ".join(CARDS)
        + ") or a capacity such as '8GiB'; an allocation it could not serve raises "
        "torch.OutOfMemoryError (the estimator enforces its capacity, the cuda backend caps a "
        "larger GPU to it); the figures do not depend on it (default: none)",
    )
    option(
        "--vram-update",
        ini="vram_update",
        ini_type="bool",
        default=False,
        action="store_true",
        help="rewrite the baseline entries of the measured tests (and nothing else)",
    )
    option(
        "--vram-prune",
        ini="vram_prune",
        ini_type="bool",
        default=False,
        action="store_true",
        help="with --vram-update: delete stale entries that no collected test produces",
    )
    option(
        "--vram-update-new-only",
        ini="vram_update_new_only",
        ini_type="bool",
        default=False,
        action="store_true",
        help="record entries only for measurements without a baseline; existing entries are "
        "judged as usual and never rewritten",
    )
    option(
        "--vram-stale-warn",
        ini="vram_stale_warn",
        ini_type="bool",
        default=False,
        action="store_true",
        help="in strict mode, only list stale baseline entries instead of failing the session",
    )
    option(
        "--vram-fail-improvements",
        ini="vram_fail_improvements",
        ini_type="bool",
        default=False,
        action="store_true",
        help="fail a measurement below its baseline minus tolerance until it is recorded",
    )
    option(
        "--vram-strict",
        ini="vram_strict",
        ini_type="bool",
        default=None,
        action="store_true",
        help="fail measurements without a baseline (default: on when the CI environment "
        "variable is set, e.g. CI=true)",
    )
    group.addoption(
        "--vram-no-strict",
        dest="vram_strict",
        action="store_false",
        default=None,
        help="switch strict mode off, also under CI",
    )
    option(
        "--vram-tolerance",
        ini="vram_tolerance",
        ini_type="string",
        default=TOLERANCE_DEFAULT,
        metavar="TOL",
        help="allowed deviation from a baseline, e.g. '0.5%', '4MiB', '0.5% + 4MiB' "
        "(default 0; a baseline file, an entry or the marker may set their own)",
    )
    option(
        "--vram-profile",
        ini="vram_profile",
        ini_type="string",
        default="",
        metavar="NAME",
        help="baseline profile name instead of the backend's own",
    )
    option(
        "--vram-baselines",
        ini="vram_baselines",
        ini_type="string",
        default="baselines",
        metavar="DIR",
        help="directory of the baseline files, relative to rootdir (default: baselines)",
    )
    option(
        "--vram-json",
        ini="vram_json",
        ini_type="string",
        default="",
        metavar="PATH",
        help="write every measurement and verdict to this JSON file",
    )
    option(
        "--vram-attribution",
        ini="vram_attribution",
        ini_type="string",
        default="auto",
        metavar="WHEN",
        help="collect what is live at each peak by module and category: on, off, or auto "
        "(on for the estimate backend, off for cuda, where it costs time; see docs/attribution.md)",
    )
    option(
        "--vram-emulate",
        ini="vram_emulate",
        ini_type="string",
        default="test",
        metavar="WHEN",
        help="where no GPU is usable, when the estimator's emulated card answers torch.cuda's "
        "queries (is_available() and the device properties): 'test', inside each vram test "
        "(from its fixtures' setup to their teardown), or 'session', also from pytest's "
        "configuration on, so that code run when test modules are imported (DEVICE = "
        "'cuda' if torch.cuda.is_available() else 'cpu') sees the card (default: test)",
    )
    option(
        "--vram-artifacts",
        ini="vram_artifacts",
        ini_type="string",
        default="",
        metavar="DIR",
        help="write a breakdown, an image of memory over the run (needs matplotlib: "
        "pip install 'pytest-vram[plot]') and on cuda a torch memory snapshot for each "
        "failing test (or each test, with --vram-artifacts-all) into DIR",
    )
    option(
        "--vram-artifacts-all",
        ini="vram_artifacts_all",
        ini_type="bool",
        default=False,
        action="store_true",
        help="with --vram-artifacts: write them for every measured test, not only failing ones",
    )
    option(
        "--vram-markdown",
        ini="vram_markdown",
        ini_type="string",
        default="",
        metavar="PATH",
        help="write the VRAM table to this Markdown file",
    )
    parser.addini(
        "vram_numprocesses",
        type="string",
        default="",
        help="run `pytest -m vram` on this many pytest-xdist workers ('auto': one per CPU) "
        "when -n is not given; figures are the same in any process (default: one process)",
    )
    parser.addini(
        "vram_testpaths",
        type="paths",
        default=[],
        help="where `pytest -m vram` collects when no paths are given (instead of testpaths), "
        "so that the memory job does not import the rest of the test tree",
    )


def selects_only_vram(config: pytest.Config) -> bool:
    expression = " ".join(str(config.option.markexpr or "").split())
    return expression == "vram" or expression.startswith("vram and ")


def apply_numprocesses(config: pytest.Config) -> None:
    """``vram_numprocesses``: the memory job on pytest-xdist workers unless ``-n`` is given
    (with ``--dist worksteal`` unless ``--dist`` is given)."""
    workers = str(config.getini("vram_numprocesses")).strip()
    if (
        workers
        and getattr(config.option, "numprocesses", "missing") is None  # xdist there, no -n
        and not os.environ.get("PYTEST_XDIST_WORKER")
        and selects_only_vram(config)
    ):
        if workers not in ("auto", "logical") and not workers.isdigit():
            raise pytest.UsageError(
                f"vram_numprocesses = {workers!r}: give a number of workers or 'auto'"
            )
        config.option.numprocesses = workers if not workers.isdigit() else int(workers)
        if getattr(config.option, "dist", "no") == "no" and _xdist_steals():
            # The memory job's tests differ a hundredfold in length: with xdist's default
            # "load" one worker is left with the last long ones while the other idles;
            # "worksteal" hands them over.
            config.option.dist = "worksteal"


def _xdist_steals() -> bool:
    """Whether the installed pytest-xdist has ``--dist worksteal`` (3.2 on)."""
    try:
        major, minor = (int(p) for p in version("pytest-xdist").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (3, 2)


def narrow_collection(config: pytest.Config) -> None:
    """``pytest -m vram`` with no paths collects ``vram_testpaths`` instead of testpaths.

    Only when the mark expression selects nothing but vram tests (``vram``, or ``vram and
    ...``) and the paths came from testpaths: explicit paths are the user's, and another
    expression may select tests the narrower paths do not hold.
    """
    paths = config.getini("vram_testpaths")
    if not paths or config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return
    if not selects_only_vram(config):
        return
    config.args[:] = [str(path) for path in paths]


class Settings(NamedTuple):
    """The validated ``vram`` options of one run (a named tuple: ``_replace`` makes the
    variants a unit test needs)."""

    backend: str
    allocator: str
    update: bool
    prune: bool
    strict: bool
    update_new_only: bool
    stale_warn: bool
    fail_improvements: bool
    tolerance: Tolerance
    profile: str | None
    baselines: Path
    json_path: Path | None
    markdown_path: Path | None
    attribution: str = "auto"
    artifacts: Path | None = None
    artifacts_all: bool = False
    #: when the emulated card answers: "test" (inside vram tests) or "session"
    emulate: str = "test"
    #: the card every vram test runs on unless its marker declares one (its key), or None
    card: str | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Read options (command line first, then ini) and raise UsageError on bad values."""
        backend = str(_value(config, "vram_backend")).strip()
        if backend not in CHOICES and not _looks_like_target(backend):
            raise pytest.UsageError(
                f"{source(config, 'vram_backend')}: unknown backend {backend!r}; "
                f"valid values: {_BACKEND_HELP}"
            )
        allocator = str(_value(config, "vram_allocator")).strip()
        if allocator not in ALLOCATOR_MODES:
            raise pytest.UsageError(
                f"{source(config, 'vram_allocator')}: unknown allocator mode {allocator!r}; "
                f"valid values: {', '.join(ALLOCATOR_MODES)}"
            )
        try:
            tolerance = parse_tolerance(
                _value(config, "vram_tolerance"), what=source(config, "vram_tolerance")
            )
        except UnitError as exc:
            raise pytest.UsageError(str(exc)) from None
        update, prune = bool(_value(config, "vram_update")), bool(_value(config, "vram_prune"))
        if prune and not update:
            raise pytest.UsageError(
                "--vram-prune only works together with --vram-update: "
                "run `pytest --vram-update --vram-prune`"
            )
        update_new_only = bool(_value(config, "vram_update_new_only"))
        if update_new_only and update:
            raise pytest.UsageError(
                "--vram-update-new-only records only missing entries and --vram-update "
                "rewrites every measured one: use one of them"
            )
        strict = _value(config, "vram_strict")
        profile = str(_value(config, "vram_profile") or "") or None
        if profile is not None:
            try:
                baselines.check_profile_name(profile)
            except BaselineError as exc:
                raise pytest.UsageError(f"{source(config, 'vram_profile')}: {exc}") from None
        if not str(_value(config, "vram_baselines")).strip():
            raise pytest.UsageError(
                f"{source(config, 'vram_baselines')} is empty, which would mean the rootdir "
                f"itself; give the directory of the baseline files, e.g. 'baselines'"
            )
        attribution = str(_value(config, "vram_attribution")).strip().lower()
        if attribution not in ("auto", "on", "off"):
            raise pytest.UsageError(
                f"{source(config, 'vram_attribution')}: expected on, off or auto, "
                f"got {attribution!r}"
            )
        emulate = str(_value(config, "vram_emulate")).strip().lower()
        if emulate not in EMULATE_CHOICES:
            raise pytest.UsageError(
                f"{source(config, 'vram_emulate')}: expected {' or '.join(EMULATE_CHOICES)}, "
                f"got {emulate!r}"
            )
        artifacts_all = bool(_value(config, "vram_artifacts_all"))
        artifacts = _output_path(config, "vram_artifacts", "DIR", "vram-artifacts")
        if artifacts is None and config.getoption("vram_artifacts_all"):
            # From an ini file it is a preference for the runs that ask for artefacts.
            raise pytest.UsageError(
                "--vram-artifacts-all says which tests get artefacts, but no directory is "
                "given: add --vram-artifacts=DIR (or leave --vram-artifacts-all out)"
            )
        card = str(_value(config, "vram_card") or "").strip() or None
        if card is not None:
            try:
                card = Card.parse(card).key
            except CardError as exc:
                raise pytest.UsageError(f"{source(config, 'vram_card')}: {exc}") from None
        settings = cls(
            card=card,
            attribution=attribution,
            emulate=emulate,
            artifacts=artifacts,
            artifacts_all=artifacts_all,
            backend=backend,
            allocator=allocator,
            update=update,
            prune=prune,
            strict=_ci() if strict is None else bool(strict),
            update_new_only=update_new_only,
            stale_warn=bool(_value(config, "vram_stale_warn")),
            fail_improvements=bool(_value(config, "vram_fail_improvements")),
            tolerance=tolerance,
            profile=profile,
            baselines=_path(config, "vram_baselines", config.rootpath),
            json_path=_output_path(config, "vram_json", "PATH", "vram.json"),
            markdown_path=_output_path(config, "vram_markdown", "PATH", "vram.md"),
        )
        _check_report_paths(config, settings)
        _check_artifacts_path(config, settings)
        return settings


def _value(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    if value is not None:
        return value
    try:
        value = config.getini(name)
    except (ValueError, pytest.UsageError) as exc:
        # An ini bool such as `vram_update = maybe`: pytest < 9.2 raises a ValueError,
        # 9.2 on a UsageError; neither names the key in an ini file.
        fix = "write true or false" if name in _BOOL_KEYS else "write the value as a string"
        raise pytest.UsageError(f"{name} (ini): {exc}; {fix} (or leave the key out)") from None
    return _unquote(value) if isinstance(value, str) else value


def _unquote(value: str) -> str:
    # An ini file keeps quotes as part of the value: `vram_tolerance = '0.5%'` would read
    # as the 6-character string "'0.5%'". Nothing here ever means the quotes.
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return value


def source(config: pytest.Config, name: str) -> str:
    """How the user spelled the setting: ``--vram-x`` or ``vram_x (ini)``."""
    if config.getoption(name) is not None:
        return "--" + name.replace("_", "-")
    return f"{name} (ini)"


def _check_report_paths(config: pytest.Config, settings: Settings) -> None:
    """Refuse report files that would overwrite a stored file (a baseline file, a
    breakdowns store, a workspace file) or each other."""
    if settings.json_path is None and settings.markdown_path is None:
        return
    baseline_dir = files.real_path(settings.baselines)
    seen: dict[Path, str] = {}
    for name, path in (
        ("vram_json", settings.json_path),
        ("vram_markdown", settings.markdown_path),
    ):
        if path is None:
            continue
        real = files.real_path(path)
        stored = _stored_file(real, baseline_dir)
        if stored is not None:
            raise pytest.UsageError(
                f"{source(config, name)}={_shown(config, path)} would overwrite {stored} in "
                f"{_shown(config, settings.baselines)}; write the report elsewhere (e.g. "
                f"vram-report.json)"
            )
        if real in seen:
            raise pytest.UsageError(
                f"{source(config, name)} and {seen[real]} both name {path}; give each "
                f"report its own file"
            )
        seen[real] = source(config, name)


def _stored_file(real: Path, baseline_dir: Path) -> str | None:
    """What file of the baselines directory ``real`` (symlinks resolved) is or would be:
    ``"a baseline file"``, ``"a breakdowns store"``, ``"a convolution workspace file"``;
    None for a path of no stored file."""
    if real.suffix.lower() not in (".yaml", ".yml"):
        return None
    return {
        baseline_dir: "a baseline file",
        baseline_dir / breakdowns.STORE_DIR: "a breakdowns store",
        baseline_dir / workspaces.STORE_DIR: "a convolution workspace file",
    }.get(real.parent)


def _check_artifacts_path(config: pytest.Config, settings: Settings) -> None:
    """Refuse an artefacts directory that is a file, a device or lies under a file, or
    that would be created over a baseline file or a report file."""
    root = settings.artifacts
    if root is None:
        return
    shown = f"{source(config, 'vram_artifacts')}={_shown(config, root)}"
    problem = artifact_files.check_root(root)
    if problem is not None:
        raise pytest.UsageError(f"{shown}: {problem}; give a directory (it is created if missing)")
    real = files.real_path(root)
    stored = _stored_file(real, files.real_path(settings.baselines))
    if stored is not None:
        raise pytest.UsageError(
            f"{shown} would take the place of {stored} in "
            f"{_shown(config, settings.baselines)}; "
            f"write the artefacts elsewhere (e.g. --vram-artifacts=vram-artifacts)"
        )
    for name, path in (
        ("vram_json", settings.json_path),
        ("vram_markdown", settings.markdown_path),
    ):
        if path is not None and files.real_path(path) == real:
            raise pytest.UsageError(
                f"{shown} and {source(config, name)} name one path; give the artefacts a "
                f"directory of their own"
            )


def _shown(config: pytest.Config, path: Path) -> str:
    """``path`` relative to the rootdir when it lies inside it, for messages."""
    try:
        return str(path.relative_to(config.rootpath))
    except ValueError:
        return str(path)


def _looks_like_target(name: str) -> bool:
    module, sep, cls = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and cls.isidentifier()


def _ci() -> bool:
    """Strict by default on CI: the CI variable is set to something other than 0/false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _path(config: pytest.Config, name: str, ini_base: Path) -> Path:
    # Command-line paths are relative to where pytest was started (like --junitxml);
    # ini paths to the rootdir, so they mean the same from any working directory.
    value = str(_value(config, name))
    base = config.invocation_params.dir if config.getoption(name) is not None else ini_base
    return (base / value).resolve()


def _output_path(config: pytest.Config, name: str, metavar: str, example: str) -> Path | None:
    """Where a report or the artefacts go; None when not asked for.

    Absolute, but symlinks are not resolved: ``/dev/stdout`` must stay ``/dev/stdout``
    (resolved, it is ``/proc/<pid>/fd/pipe:[...]``, which no one can open), and a symlinked
    report is written through its link.
    """
    value = _value(config, name)
    given = config.getoption(name) is not None
    if given and not str(value).strip():
        option = "--" + name.replace("_", "-")
        raise pytest.UsageError(
            f"{option} is empty; give a {metavar}, e.g. {option}={example}, or leave the option out"
        )
    if not value or not str(value).strip():
        return None  # an empty ini value is the default: not asked for
    base = config.invocation_params.dir if given else config.rootpath
    return Path(os.path.abspath(base / str(value)))


def check_rootdir(config: pytest.Config) -> None:
    """Refuse a rootdir that pytest chose from a ``--vram-*`` value given as its own word.

    pytest finds the rootdir and the ini file before it loads plugins, so in
    ``--vram-json /tmp/run.json`` it takes ``/tmp/run.json``, if that file exists (a report
    of an earlier run), for a test path: the rootdir moves, the project's configuration
    (testpaths, baselines) is not read, and every measurement is "without a baseline".
    ``--vram-json=/tmp/run.json`` is unambiguous. Found by asking pytest's own rootdir
    finder with and without those words; skipped if that internal API changes.
    """
    args = [str(a) for a in config.invocation_params.args or ()]
    ours = [
        i + 1
        for i, (option, value) in enumerate(zip(args, args[1:], strict=False))
        if option.startswith("--vram-") and "=" not in option and not value.startswith("-")
    ]
    if not ours or determine_setup is None:
        return
    try:
        # pytest 9 added override_ini (the -o values can name the ini file's options)
        extra = (
            {"override_ini": config.option.override_ini}
            if "override_ini" in inspect.signature(determine_setup).parameters
            else {}
        )

        def rootdir(words: list[str]) -> Path:
            return determine_setup(
                inifile=config.option.inifilename,
                args=words,
                rootdir_cmd_arg=config.option.rootdir,
                invocation_dir=Path(config.invocation_params.dir),
                **extra,
            )[0]

        without = [a for i, a in enumerate(args) if i not in ours]
        moved = rootdir(args) != rootdir(without)
    except Exception:  # noqa: BLE001 - pytest's internals moved: no check rather than a crash
        return
    if moved:
        option, value = args[ours[0] - 1], args[ours[0]]
        raise pytest.UsageError(
            f"{option} {value}: pytest chose the rootdir ({config.rootpath}) from this value, "
            f"before it knew that {option} takes one, so the project's configuration was not "
            f"read; write {option}={value}"
        )
