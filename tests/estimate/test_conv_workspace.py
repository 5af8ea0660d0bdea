"""cuDNN convolution workspaces on the estimator (``kernels.convolution``).

The lookup is tested against a tiny table written by the test (keys computed from the
same tensors the test convolves, sizes chosen by the test), so nothing here depends on the
numbers measured on the H200; the shipped table is only checked for being there and
readable.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.estimate.kernels import convolution as cw  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402

MiB = 1 << 20
X_SHAPE, W_SHAPE = (8, 16, 32, 32), (32, 16, 3, 3)
PARAMS = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, ..., groups


def _meta(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _forward_key(x_shape: tuple[int, ...] = X_SHAPE, w_shape: tuple[int, ...] = W_SHAPE) -> str:
    return cw.forward_key((_meta(x_shape), _meta(w_shape), None, *PARAMS), {}, cw.flags())


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Write the table the estimator reads (for the emulated H200) with the given entries."""

    def write(entries: dict[str, int]) -> None:
        data = {"format": cw.TABLE_FORMAT, "entries": entries}
        name = cw.table_name(cw.EMULATED_ARCH, cw.EMULATED_CUDNN)
        with gzip.open(tmp_path / name, "wt") as f:
            json.dump(data, f)
        cw.load_table.cache_clear()

    monkeypatch.setattr(cw, "DATA_DIR", tmp_path)
    monkeypatch.setattr(cw, "gpu_visible", lambda: False)
    write({})
    yield write
    cw.load_table.cache_clear()


class _Transients:
    """An attribution observer that keeps only the transient buffers it is told of."""

    def __init__(self) -> None:
        self.sizes: list[list[int]] = []

    def allocated(self, key: int, size: int) -> None:
        pass

    def freed(self, key: int) -> None:
        pass

    def transient(self, sizes: list[int]) -> None:
        self.sizes.append(sizes)


def _run(
    fn: Callable[..., Any],
    *shapes: tuple[int, ...],
    observer: Any = None,
    recorded: dict[str, int] | None = None,
) -> Meter:
    backend = create("estimate")
    if observer is not None:
        backend.observe(observer)
    if recorded is not None:
        backend.use_workspaces(recorded, "baselines/cudnn-workspaces/recorded.yaml")
    meter = Meter(backend)
    meter.start()
    tensors = meter.build(lambda: [torch.empty(s, device="cuda") for s in shapes])
    meter.run(fn, *tensors)
    del tensors
    meter.finish()
    return meter


def _conv(x: torch.Tensor, w: torch.Tensor) -> None:
    F.conv2d(x, w, padding=1)


def test_a_convolution_in_the_table_holds_its_transient(table: Callable[..., None]) -> None:
    table({_forward_key(): 3 * MiB})
    with warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        record = _run(_conv, X_SHAPE, W_SHAPE).measurements[0]
    output = 8 * 32 * 32 * 32 * 4  # 1 MiB
    assert record.model_bytes == 8 * 16 * 32 * 32 * 4 + 32 * 16 * 9 * 4
    assert record.peak_bytes == record.model_bytes + output + 3 * MiB


def test_the_project_s_recorded_workspaces_come_before_the_shipped_table(
    table: Callable[..., None],
) -> None:
    strided = cw.forward_key(
        (_meta(X_SHAPE), _meta(W_SHAPE), None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1),
        {},
        cw.flags(),
    )
    table({_forward_key(): 1 * MiB})  # the stride-2 convolution is not in it

    def both(x: torch.Tensor, w: torch.Tensor) -> None:
        F.conv2d(x, w, padding=1)
        F.conv2d(x, w, padding=1, stride=2)

    recorded = {_forward_key(): 3 * MiB, strided: 7 * MiB}
    seen = _Transients()
    with warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        record = _run(both, X_SHAPE, W_SHAPE, observer=seen, recorded=recorded).measurements[0]
    assert seen.sizes == [[3 * MiB], [7 * MiB]]
    output, strided_output = 8 * 32 * 32 * 32 * 4, 8 * 32 * 16 * 16 * 4
    assert record.peak_bytes == record.model_bytes + strided_output + 7 * MiB
    assert record.peak_bytes > record.model_bytes + output + 3 * MiB  # the larger of the two


def test_a_backward_convolution_is_looked_up_with_autograd_s_mask(
    table: Callable[..., None],
) -> None:
    # the image needs no gradient: convolution_backward computes the weight's only
    go, x, w = _meta((8, 32, 32, 32)), _meta(X_SHAPE), _meta(W_SHAPE)
    args = (go, x, w, [0], *PARAMS, [False, True, False])
    table({_forward_key(): 0, cw.backward_key(args, {}, cw.flags()): 5 * MiB})

    def step(x: torch.Tensor, w: torch.Tensor) -> None:
        w.requires_grad_()
        out = F.conv2d(x, w, padding=1)
        out.backward(torch.empty_like(out))

    seen = _Transients()
    with warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        _run(step, X_SHAPE, W_SHAPE, observer=seen)
    assert [5 * MiB] in seen.sizes


def test_an_unknown_convolution_warns_once_per_test_naming_it(
    table: Callable[..., None],
) -> None:
    def two_convs(x: torch.Tensor, w: torch.Tensor) -> None:
        F.conv2d(x, w, padding=1)
        F.conv2d(x, w, padding=1, stride=2)

    with pytest.warns(cw.ConvWorkspaceUnknown) as caught:
        record = _run(two_convs, X_SHAPE, W_SHAPE).measurements[0]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "convolution of input float32[8, 16, 32, 32] (contiguous)" in message
    assert "weight [32, 16, 3, 3]" in message and "stride [1, 1], padding [1, 1]" in message
    assert "may be low" in message
    # the fix a user of the installed plugin can follow: record it on the GPU, commit it
    assert "pytest --vram-backend=cuda --vram-update" in message
    assert "test_an_unknown_convolution_warns_once_per_test_naming_it" in message
    assert f"cudnn-workspaces/{cw.EMULATED_ARCH}_cudnn{cw.EMULATED_CUDNN}.yaml" in message
    assert "make the estimate exact; commit that file" in message
    assert "Or measure this test with --vram-backend=cuda" in message
    assert caught[0].filename == __file__  # the user's line, not torch's or the plugin's
    # counted as nothing: the peak is the model and the larger output
    assert record.peak_bytes == record.model_bytes + 8 * 32 * 32 * 32 * 4
    with pytest.warns(cw.ConvWorkspaceUnknown) as again:  # the next test is told again
        _run(_conv, X_SHAPE, W_SHAPE)
    assert len(again) == 1


def test_no_workspace_off_the_gpu(table: Callable[..., None]) -> None:
    backend = create("estimate")
    meter = Meter(backend)
    meter.start()

    def on_cpu_and_meta() -> None:
        F.conv2d(torch.empty(X_SHAPE), torch.empty(W_SHAPE), padding=1)
        F.conv2d(_meta(X_SHAPE), _meta(W_SHAPE), padding=1)

    with warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        meter.run(on_cpu_and_meta)
    meter.finish()
    assert meter.measurements[0].peak_bytes == 0


def test_native_depthwise_holds_nothing(table: Callable[..., None]) -> None:
    # fp32 NCHW depthwise runs ATen's conv_depthwise2d, not cuDNN: no table needed
    def depthwise(x: torch.Tensor, w: torch.Tensor) -> None:
        F.conv2d(x, w, padding=1, groups=16)

    with warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        record = _run(depthwise, X_SHAPE, (16, 1, 3, 3)).measurements[0]
    assert record.peak_bytes == record.model_bytes + 8 * 16 * 32 * 32 * 4


def test_cudnn_disabled_holds_the_native_im2col_buffer(table: Callable[..., None]) -> None:
    # slow_conv2d unfolds one image: (C_in * 3 * 3) x (32 * 32) floats; the table (empty
    # here) is not asked
    with torch.backends.cudnn.flags(enabled=False), warnings.catch_warnings():
        warnings.simplefilter("error", cw.ConvWorkspaceUnknown)
        record = _run(_conv, X_SHAPE, W_SHAPE).measurements[0]
        pointwise = _run(lambda x, w: F.conv2d(x, w), X_SHAPE, (32, 16, 1, 1)).measurements[0]
    columns = 16 * 3 * 3 * 32 * 32 * 4
    assert record.peak_bytes == record.model_bytes + 8 * 32 * 32 * 32 * 4 + columns
    assert pointwise.peak_bytes == pointwise.model_bytes + 8 * 32 * 32 * 32 * 4


def test_cudnn_disabled_without_a_rule_warns(table: Callable[..., None]) -> None:
    with torch.backends.cudnn.flags(enabled=False), pytest.warns(cw.ConvWorkspaceUnknown):
        _run(lambda x, w: F.conv2d(x, w, padding=2, dilation=2), X_SHAPE, W_SHAPE)


@pytest.mark.parametrize("cudnn", [True, False])
def test_results_have_the_layout_cuda_gives_them(table: Callable[..., None], cudnn: bool) -> None:
    # cuDNN computes in channels-last when the input or the weight is, and so are its
    # output and its input and weight gradients; ATen's kernels (cuDNN off) are contiguous
    cl = torch.channels_last
    backend = create("estimate")
    backend.begin_test()
    with (
        torch.backends.cudnn.flags(enabled=cudnn),
        warnings.catch_warnings(),
        backend.scope(),
    ):
        warnings.simplefilter("ignore", cw.ConvWorkspaceUnknown)
        x = torch.empty(X_SHAPE, device="cuda").to(memory_format=cl)
        w = torch.empty(W_SHAPE, device="cuda")  # contiguous
        out = F.conv2d(x, w, padding=1)
        # the kernel's own results (autograd would then give a leaf's gradient the leaf's
        # layout, on the GPU as here)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            torch.empty_like(out), x, w, None, *PARAMS, [True, True, False]
        )
        layouts = [t.is_contiguous(memory_format=cl) for t in (out, grad_x, grad_w)]
    backend.end_test()
    assert layouts == [cudnn] * 3


def test_the_shipped_table_is_readable() -> None:
    name = cw.table_name(cw.EMULATED_ARCH, cw.EMULATED_CUDNN)
    cw.load_table.cache_clear()
    entries = cw.load_table(name)
    assert entries and all(isinstance(n, int) and n >= 0 for n in entries.values())


USER_TEST = """
import torch
import torch.nn.functional as F


def test_dilated(vram):
    x, w = vram.build(lambda: (torch.empty(2, 4, 9, 9, device=vram.device),
                               torch.empty(4, 4, 3, 3, device=vram.device)))
    vram.run(lambda: F.conv2d(x, w, dilation=3), name="dilated-3")
    vram.run(lambda: F.conv2d(x, w, dilation=2), name="dilated-2")
"""


def test_a_user_sees_one_warning_per_test_in_the_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:xdist"
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert out.count("ConvWorkspaceUnknown:") == 1
    line = 1 + USER_TEST.strip().splitlines().index(
        '    vram.run(lambda: F.conv2d(x, w, dilation=3), name="dilated-3")'
    )
    assert f"test_user.py:{line}: ConvWorkspaceUnknown" in out
    assert "dilation [3, 3]" in out
    arch, cudnn = cw.current_setup()
    assert f"baselines/cudnn-workspaces/{arch}_cudnn{cudnn}.yaml" in out
    assert "pytest --vram-backend=cuda --vram-update 'test_user.py::test_dilated'" in out


def _recorded_file(directory: Path, entries: dict[str, int]) -> Path:
    """The project's workspace file for the setup the estimate models, written by hand as
    ``pytest --vram-backend=cuda --vram-update`` writes it."""
    arch, cudnn = cw.current_setup()
    path = directory / "baselines" / "cudnn-workspaces" / f"{arch}_cudnn{cudnn}.yaml"
    path.parent.mkdir(parents=True)
    lines = ["format: 1", f"arch: {arch}", f"cudnn: {cudnn}", "entries:"]
    lines += [f"  {key}: {size}" for key, size in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _dilated_key(dilation: int) -> str:
    x, w = _meta((2, 4, 9, 9)), _meta((4, 4, 3, 3))
    params = ([1, 1], [0, 0], [dilation] * 2, False, [0, 0], 1)
    return cw.forward_key((x, w, None, *params), {}, cw.flags())


def test_a_convolution_recorded_in_the_project_is_counted_exactly(
    pytester: pytest.Pytester,
) -> None:
    # both convolutions are outside the shipped table (the test above warns of them)
    _recorded_file(pytester.path, {_dilated_key(3): 2 * MiB, _dilated_key(2): 0})
    pytester.makepyfile(test_user=USER_TEST)
    report = pytester.path / "vram.json"
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", f"--vram-json={report}", "-p", "no:cacheprovider",
        "-p", "no:xdist", "-W", "error::pytest_vram.backends.estimate.ConvWorkspaceUnknown",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert "ConvWorkspaceUnknown" not in result.stdout.str()
    figures = {m["key"]: m for m in json.loads(report.read_text())["measurements"]}
    model = 3072 + 1024  # x (2592 B) and w (576 B), each rounded up to 512 B
    # the outputs: 2 x 4 x 3 x 3 and 2 x 4 x 5 x 5 floats (288 B and 800 B, rounded up)
    assert {key.rsplit("::", 1)[1]: m["peak_bytes"] for key, m in figures.items()} == {
        "dilated-3": model + 512 + 2 * MiB,
        "dilated-2": model + 1024,
    }
    assert all(m["model_bytes"] == model for m in figures.values())


def test_a_malformed_workspace_file_fails_the_test_naming_it(pytester: pytest.Pytester) -> None:
    path = _recorded_file(pytester.path, {_dilated_key(3): 2 * MiB})
    path.write_text(path.read_text().replace(str(2 * MiB), "2 MiB"))
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "--vram-backend=estimate", "-p", "no:cacheprovider", "-p", "no:xdist"
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"{path.relative_to(pytester.path)}: entry 'fwd float32 x=2,4,9,9" in out
    assert "must be a non-negative integer of bytes" in out and "got a string '2 MiB'" in out
    assert "Traceback" not in out
