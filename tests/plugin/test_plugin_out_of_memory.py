"""A workload that runs out of device memory: a clear failure, and the next tests unharmed."""

from __future__ import annotations

from pytest_vram.measure.meter import is_out_of_memory

OUT_OF_MEMORY = """
    import pytest
    from vram_scripted import WARMUP_BYTES, ScriptedOutOfMemory

    MiB = 1024**2

    def forward(backend, layers):
        activations = [backend.alloc(30 * MiB) for _ in range(layers)]  # held by this frame
        return activations

    def test_a_runs_out(vram):
        vram.backend.capacity = vram.backend.allocated() + 100 * MiB
        model = vram.build(vram.backend.alloc, 40 * MiB)
        vram.run(forward, vram.backend, 3, name="train")  # 40 + 30 + 30 MiB, then no room

    def test_b_build_runs_out(vram):
        vram.backend.capacity = vram.backend.allocated() + 100 * MiB
        vram.build(vram.backend.alloc, 200 * MiB)

    def test_c_caught_by_the_test(vram):
        vram.backend.capacity = vram.backend.allocated() + 10 * MiB
        with pytest.raises(ScriptedOutOfMemory):
            vram.run(forward, vram.backend, 1)

    def test_d_measures_as_usual(vram):
        # Nothing of the failed tests is still allocated, and the peak starts over.
        assert vram.backend.allocated() == WARMUP_BYTES
        vram.backend.capacity = None
        model = vram.build(vram.backend.alloc, 10 * MiB)
        vram.run(vram.backend.spike, 5 * MiB)
"""


def test_out_of_memory_fails_the_test_with_figures_and_the_fix(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_oom=OUT_OF_MEMORY)
    result = run_vram("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_runs_out _*",
            "test_oom.py::test_a_runs_out: out of memory on scripted:0 in "
            "vram.run(forward, name='train'): 40.0 MiB (41943040 B) were allocated when it "
            "started and it had reached 100.0 MiB (104857600 B) when an allocation failed.",
            "ScriptedOutOfMemory: out of memory. Tried to allocate 30.00 MiB; "
            "0.00 MiB free of 132.00 MiB",
            "Measure a smaller workload (batch, sequence length, model size), run it on a GPU "
            "with more free memory*--vram-backend=estimate*budget=*",
            "*_ test_b_build_runs_out _*",
            "test_oom.py::test_b_build_runs_out: out of memory on scripted:0 in "
            "vram.build(ScriptedBackend.alloc): 0 B (0 B) were allocated when it started and "
            "it had reached 0 B (0 B) when an allocation failed.",
        ]
    )
    result.stdout.fnmatch_lines(["test_oom.py::test_d_measures_as_usual * 10.0 MiB * 15.0 MiB *"])
    result.stdout.no_fnmatch_line("leak: *")


def test_torch_out_of_memory_error_is_recognised_without_importing_torch_for_it(torch):
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access"))


def test_out_of_memory_writes_the_artifacts(vram_pytester, run_vram):
    vram_pytester.makepyfile(test_oom=OUT_OF_MEMORY)
    result = run_vram("-p", "no:randomly", "--vram-artifacts=art")
    result.assert_outcomes(passed=2, failed=2)
    written = sorted(p.parent.name for p in (vram_pytester.path / "art").glob("*/breakdown.txt"))
    # The two that ran out of memory, not the passing ones.
    assert written == ["test_oom.py_test_a_runs_out", "test_oom.py_test_b_build_runs_out"]
    result.stdout.fnmatch_lines(["*- vram artifacts -*", "art/test_oom.py_test_a_runs_out/*"])
