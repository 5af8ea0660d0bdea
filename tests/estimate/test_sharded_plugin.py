"""``@pytest.mark.vram(world_size=N)`` through the plugin: keys, worlds, launched ranks.

Sub-sessions run on the estimator (a simulated world) and on the scripted backend of
tests/plugin (a real world: a one-rank gloo group in-process, or two gloo ranks under
torchrun, each rank scripting its own figures).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

PLUGIN_TESTS = Path(__file__).resolve().parents[1] / "plugin"
sys.path.insert(0, str(PLUGIN_TESTS))
from vram_testing import QUIET, REPO, SCRIPTED, plugin_args  # noqa: E402

MiB = 1024**2


@pytest.fixture
def sub(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("CI", "VRAM_SCRIPTED_PROFILE", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                 "MASTER_ADDR", "MASTER_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    paths = [str(PLUGIN_TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return pytester


def run(sub: pytest.Pytester, *args: str) -> pytest.RunResult:
    return sub.runpytest_subprocess(*plugin_args(), *QUIET, *args, timeout=300)


ESTIMATED = """
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

def build():
    model = nn.Sequential(*(nn.Linear(1024, 1024, device="meta", dtype=torch.float16)
                            for _ in range(2)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cuda")
    return model

def step(model):
    model(torch.ones(8, 1024, device="cuda", dtype=torch.float16)).sum().backward()

@pytest.mark.parametrize("n", [pytest.param(n, marks=pytest.mark.vram(world_size=n))
                               for n in (1, 4)])
def test_train(vram, n):
    assert dist.get_world_size() == n and dist.get_backend() == "fake"
    vram.run(step, vram.build(build))

def test_no_world_is_left_behind():
    assert not dist.is_initialized()
"""


def test_estimator_simulates_the_declared_world_and_keys_carry_it(sub: pytest.Pytester) -> None:
    sub.makepyfile(test_sharded=ESTIMATED)
    result = run(sub, "--vram-backend=estimate", "--vram-update", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    entries = yaml.safe_load((sub.path / "baselines" / "estimate.yaml").read_text())["entries"]
    keys = sorted(entries)
    assert keys == [
        "test_sharded.py::test_train[1]@world_size=1",
        "test_sharded.py::test_train[4]@world_size=4",
    ]
    one, four = (entries[k] for k in keys)
    assert four["model_bytes"] < one["model_bytes"]  # a quarter of the weights per rank
    # The recorded figures gate the next run: unchanged, it passes in strict mode.
    run(sub, "--vram-backend=estimate", "--vram-strict").assert_outcomes(passed=3)


def test_world_size_must_be_a_positive_int(sub: pytest.Pytester) -> None:
    sub.makepyfile(
        """
        import pytest

        @pytest.mark.vram(world_size=0)
        def test_x(vram):
            vram.run(lambda: None)
        """
    )
    result = run(sub, SCRIPTED)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_x: @pytest.mark.vram(world_size=...): world_size must be a positive int*got 0*"]
    )


def test_world_size_has_an_upper_bound(sub: pytest.Pytester) -> None:
    sub.makepyfile(
        """
        import pytest

        @pytest.mark.vram(world_size=10**12)
        def test_x(vram):
            vram.run(lambda: None)
        """
    )
    result = run(sub, SCRIPTED)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_x: @pytest.mark.vram(world_size=...): world_size must be a positive int (the "
         "number of ranks) of at most 1048576 (2**20), got 1000000000000"]
    )  # fmt: skip
    assert "TypeError" not in result.stdout.str()


REAL = """
import pytest
import torch.distributed as dist

@pytest.mark.vram(world_size=1)
def test_one(vram):
    assert dist.get_world_size() == 1 and dist.get_backend() == "gloo"
    block = vram.backend.alloc(10 * 2**20)
    vram.run(vram.backend.spike, 5 * 2**20)

@pytest.mark.vram(world_size=2)
def test_two(vram):
    vram.run(vram.backend.spike, 5 * 2**20)

def test_after():
    assert not dist.is_initialized()
"""


def test_world_of_one_runs_for_real_and_larger_worlds_name_the_launch(
    sub: pytest.Pytester,
) -> None:
    sub.makepyfile(test_real=REAL)
    result = run(sub, SCRIPTED, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*world_size=2 runs one process per GPU; run it with "
            "`torchrun --nproc-per-node=2 -m pytest test_real.py::test_two`*"
        ]
    )


@pytest.mark.parametrize("rank", ["0", "1"])
def test_launch_variables_left_in_the_environment_are_no_launch(
    sub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, rank: str
) -> None:
    """WORLD_SIZE and RANK without a launcher's MASTER_ADDR/MASTER_PORT: no rendezvous to
    join, so the session runs as any other (and, with RANK=1, still reports)."""
    sub.makepyfile(test_real=REAL)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    result = run(sub, SCRIPTED, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*world_size=2 runs one process per GPU; run it with "
            "`torchrun --nproc-per-node=2 -m pytest test_real.py::test_two` (or estimate it "
            f"with --vram-backend=estimate) (WORLD_SIZE='2', RANK='{rank}' are set but not "
            "MASTER_ADDR, MASTER_PORT: not a launched run, so they are ignored)",
        ]
    )
    assert "MASTER_ADDR expected" not in result.stdout.str()
    assert "VRAM" in result.stdout.str()  # this process reports: it is no secondary rank


LAUNCHED = """
import os
import pytest
import torch.distributed as dist

@pytest.mark.vram(world_size=2)
def test_two(vram):
    rank = int(os.environ["RANK"])
    assert dist.get_world_size() == 2 and dist.get_rank() == rank
    block = vram.backend.alloc((10 + rank) * 2**20)  # rank 1 holds 1 MiB more
    vram.run(vram.backend.spike, (5 + 3 * (1 - rank)) * 2**20)  # rank 0 peaks 3 MiB higher

@pytest.mark.vram(world_size=4)
def test_four(vram):
    vram.run(vram.backend.spike, 2**20)
"""

#: Each rank notes, once pytest is done with it, whether its default group is still alive.
GROUP_AT_EXIT = """
import os
import torch.distributed as dist

def pytest_unconfigure(config):
    with open(f"group-at-exit-{os.environ['RANK']}", "w") as f:
        f.write(str(dist.is_initialized()))
"""


def test_launched_ranks_gather_figures_and_rank_zero_writes_once(sub: pytest.Pytester) -> None:
    """Two gloo ranks under torchrun: the largest figures of any rank gate and are recorded,
    and each rank's process group is destroyed before the rank exits."""
    sub.makepyfile(test_launched=LAUNCHED)
    sub.makeconftest(GROUP_AT_EXIT)
    args = [*plugin_args(), *QUIET, SCRIPTED, "--vram-update", "--vram-json=out.json", "-rs"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        "pytest",
        *args,
    ]
    result = sub.run(*command, timeout=120)
    assert result.ret == 0, result.stdout.str()
    entries = yaml.safe_load((sub.path / "baselines" / "scripted.yaml").read_text())["entries"]
    assert entries == {
        "test_launched.py::test_two@world_size=2": {
            "model_bytes": 11 * MiB,  # rank 1's
            "peak_bytes": 18 * MiB,  # rank 0's: 10 + 8 (rank 1: 11 + 5 = 16)
            "activation_bytes": 7 * MiB,
        }
    }
    measured = json.loads((sub.path / "out.json").read_text())["measurements"]
    assert [m["context"]["ranks"] for m in measured] == [
        f"2 launched, peak per rank: {[18 * MiB, 16 * MiB]}"
    ]
    # Rank 0 alone reports: one VRAM table; the test of another world size is skipped there.
    assert result.stdout.str().count("VRAM") == 1
    result.stdout.fnmatch_lines(["*torchrun --nproc-per-node=4 -m pytest *::test_four*"])
    assert [(sub.path / f"group-at-exit-{rank}").read_text() for rank in (0, 1)] == [
        "False",
        "False",
    ]
