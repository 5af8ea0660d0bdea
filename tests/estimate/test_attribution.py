"""Attribution on the estimator: what was live at the peak, by module and category, with
bytes computed here from shapes (fake tensors: no real memory is used)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_vram.core.breakdown import growth  # noqa: E402
from pytest_vram.measure import attribution  # noqa: E402
from pytest_vram.measure.meter import Meter  # noqa: E402
from pytest_vram.render import artifacts  # noqa: E402
from pytest_vram.store import artifacts as artifact_files  # noqa: E402
from pytest_vram.store import breakdowns  # noqa: E402

MiB = 1 << 20
D = 1024  # a (D, D) fp32 weight is 4 MiB: a multiple of the allocator's 512 B


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(D, D, bias=False, device="meta")
        self.second = nn.Linear(D, D, bias=False, device="meta")
        self.register_buffer("scale", torch.empty(D, device="meta"))

    def forward(self, x: Any) -> Any:
        return self.second(self.first(x))


def build() -> Net:
    net = Net()
    net.to_empty(device="cuda")
    return net


def measured(backend: Any, work: Any, keep: bool = False) -> tuple[Any, Meter]:
    meter = Meter(backend, attribution=True)
    meter.start()
    net = meter.build(build)
    meter.run(work, net)
    record = meter.measurements[0]
    if not keep:
        del net
        meter.finish()
    return record, meter


def groups(breakdown: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(m, c): n for m, c, n in breakdown["groups"]}


def test_inference_peak_names_parameters_buffers_and_activations(backend: Any) -> None:
    x_bytes = 256 * D * 4  # (256, D) fp32 per activation: 1 MiB

    def work(net: Net) -> Any:
        with torch.no_grad():
            return net(torch.empty(256, D, device="cuda"))

    record, _ = measured(backend, work)
    found = groups(record.breakdown)
    assert found[("first", "parameters")] == D * D * 4
    assert found[("second", "parameters")] == D * D * 4
    assert found[("scale", "buffers")] == D * 4
    # At the peak the input, first's output and second's output are live.
    assert found[("first", "activations")] == x_bytes
    assert found[("second", "activations")] == x_bytes
    assert found[("(no module)", "inputs/other")] == x_bytes
    assert record.breakdown["peak_bytes"] == record.peak_bytes
    sites = {(s["op"], s["module"]) for s in record.breakdown["sites"]}
    assert ("mm.default", "first") in sites, sites
    forward_line = Net.forward.__code__.co_firstlineno + 1  # `return self.second(...)`
    source = f"test_attribution.py:{forward_line}"
    assert any(s["source"].endswith(source) for s in record.breakdown["sites"])


def test_gradients_and_optimizer_state_by_identity(backend: Any) -> None:
    def work(net: Net) -> Any:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        net(torch.empty(8, D, device="cuda")).sum().backward()
        optimizer.step()
        return optimizer  # its state lives on: it is part of the peak at the end

    record, meter = measured(backend, work)
    found = groups(record.breakdown)
    assert found[("first", "gradients")] == D * D * 4
    assert found[("second", "gradients")] == D * D * 4
    assert found[("first", "optimizer state")] == D * D * 4  # one momentum buffer each
    assert found[("second", "optimizer state")] == D * D * 4


def train_steps(backend: Any, zero_grad: str) -> list[dict[tuple[str, str], int]]:
    """Two AdamW steps on ``Net`` with ``opt.zero_grad()`` at the ``zero_grad`` end of the
    step; the breakdown of each."""
    meter = Meter(backend, attribution=True)
    meter.start()
    net = meter.build(build)
    opt = meter.build(torch.optim.AdamW, net.parameters())
    x = meter.build(torch.empty, 256, D, device="cuda")

    def step(net: Net, opt: Any, x: Any) -> None:
        if zero_grad == "start":
            opt.zero_grad()
        net(x).sum().backward()
        opt.step()
        if zero_grad == "end":
            opt.zero_grad()

    meter.run(step, net, opt, x, name="first")
    meter.run(step, net, opt, x, name="steady")
    del net, opt, x
    meter.finish()
    return [groups(m.breakdown) for m in meter.measurements]


def test_zero_grad_first_or_last_names_the_same_bytes_the_same(backend: Any) -> None:
    first = train_steps(backend, "start")
    last = train_steps(backend, "end")
    assert first == last
    weight = D * D * 4
    for found in last:  # the peak is in AdamW's step: its grouped update terms live
        for module in ("first", "second"):
            assert found[(module, "parameters")] == weight
            assert found[(module, "gradients")] == weight
            assert found[(module, "optimizer state")] == 2 * weight  # exp_avg, exp_avg_sq
            assert (module, "activations") not in found
        assert found[("(optimizer)", "temporaries")] == 2 * weight


def test_a_gradient_accumulated_by_backward_is_a_gradient(backend: Any) -> None:
    def work(net: Net) -> None:
        for _ in range(2):  # gradient accumulation: the second backward adds into .grad
            net(torch.empty(8, D, device="cuda")).sum().backward()
        net.zero_grad(set_to_none=True)  # the gradients are gone when the step ends

    record, _ = measured(backend, work)
    found = groups(record.breakdown)
    assert found[("first", "gradients")] == D * D * 4
    assert found[("second", "gradients")] == D * D * 4


def test_adamw_state_made_in_the_workload_is_optimizer_state(backend: Any) -> None:
    def work(net: Net) -> None:
        opt = torch.optim.AdamW(net.parameters())  # dies with the workload
        net(torch.empty(8, D, device="cuda")).sum().backward()
        opt.step()
        states = [opt.state[p] for p in net.parameters()]
        assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in states)
        opt.zero_grad()

    record, _ = measured(backend, work)
    found = groups(record.breakdown)
    for module in ("first", "second"):
        assert found[(module, "optimizer state")] == 2 * D * D * 4
        assert found[(module, "gradients")] == D * D * 4


def test_a_module_made_in_the_workload_has_parameters(backend: Any) -> None:
    def work(net: Net) -> Any:
        head = nn.Linear(D, D, bias=False, device="cuda")
        with torch.no_grad():
            return head(net(torch.empty(8, D, device="cuda")))

    record, _ = measured(backend, work)
    found = groups(record.breakdown)
    assert found[("Linear", "parameters")] == D * D * 4


def adamw_step(model: Any) -> Any:
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.empty(8, D, device="cuda")).sum().backward()
    optimizer.step()
    return optimizer  # its state lives on: it is part of the peak at the end


def test_a_compiled_module_made_in_the_workload_is_named_as_the_module(backend: Any) -> None:
    """``torch.compile(module)`` made in the workload: its wrapper stands for the module,
    whose submodules are named though no hook runs inside the compiled code, and the
    global hooks raise no warning of torch.compile's about firing once more."""

    def work(compiled: bool) -> Any:
        def step(net: Net) -> Any:
            head = nn.Sequential(nn.Linear(D, D, bias=False), nn.ReLU()).cuda()
            model = torch.compile(head, backend="eager") if compiled else head
            return adamw_step(model)

        return step

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, _ = measured(backend, work(True))
    assert not [w for w in caught if "global hooks" in str(w.message)]
    eager, _ = measured(backend, work(False))
    found = groups(compiled.breakdown)
    assert found == groups(eager.breakdown)
    for category in ("parameters", "gradients"):
        assert found[("Linear", category)] == D * D * 4
    assert found[("Linear", "optimizer state")] == 2 * D * D * 4


def test_a_built_compiled_model_is_named_by_its_paths(backend: Any) -> None:
    meter = Meter(backend, attribution=True)
    meter.start()
    net = meter.build(lambda: torch.compile(build(), backend="eager"))
    meter.run(adamw_step, net)
    found = groups(meter.measurements[0].breakdown)
    del net
    meter.finish()
    for module in ("first", "second"):
        assert found[(module, "parameters")] == D * D * 4
        assert found[(module, "gradients")] == D * D * 4
    assert found[("scale", "buffers")] == D * 4
    assert not [group for group in found if "_orig_mod" in group[0]]


def test_attribution_does_not_change_the_figures(backend: Any) -> None:
    def work(net: Net) -> Any:
        net(torch.empty(64, D, device="cuda")).sum().backward()

    figures = []
    for on in (False, True):
        meter = Meter(backend, attribution=on)
        meter.start()
        net = meter.build(build)
        meter.run(work, net)
        del net
        meter.finish()
        m = meter.measurements[0]
        figures.append((m.model_bytes, m.peak_bytes, m.leaked_bytes))
    assert figures[0] == figures[1]


def test_growth_names_a_new_module_and_a_moved_one_is_not_new() -> None:
    stored = {"blocks.* (parameters)": 100, "blocks.*.attn (parameters)": 50}
    current = {
        "patterns": [
            ["blocks.*", "parameters", 100],
            ["blocks.*.attn.inner", "parameters", 50],  # moved: same name tail and bytes
            ["blocks.*.extra", "parameters", 30],
            ["blocks.*.extra.proj", "parameters", 10],  # inside the new module: counted in it
        ]
    }
    # "attn.inner" has another tail than "attn": only a same-named move is recognised.
    grown = growth(current, stored)
    assert grown[0] == ("blocks.*.attn.inner (parameters)", 0, 50)
    assert ("blocks.*.extra (parameters)", 0, 40) in grown
    moved = {
        "patterns": [["blocks.*.wrap.attn", "parameters", 50], ["blocks.*", "parameters", 100]]
    }
    assert growth(moved, stored) == []


def test_store_round_trips_and_an_unchanged_update_leaves_the_file(tmp_path: Path) -> None:
    path = breakdowns.path_for(tmp_path / "estimate.yaml")
    assert path == tmp_path / "breakdowns" / "estimate.yaml"
    breakdown = {"patterns": [["blocks.*", "parameters", 2048], ["lm_head", "activations", 512]]}
    assert breakdowns.write(path, {"t.py::a": breakdown})
    before = path.read_bytes()
    assert not breakdowns.write(path, {"t.py::a": breakdown})
    assert path.read_bytes() == before
    assert breakdowns.load(path) == {
        "t.py::a": {"blocks.* (parameters)": 2048, "lm_head (activations)": 512}
    }


def test_artifacts_breakdown_and_image(backend: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    def work(net: Net) -> Any:
        net(torch.empty(64, D, device="cuda")).sum().backward()

    record, meter = measured(backend, work, keep=True)

    class Probe:
        _meter = meter
        out_of_memory = None

    class Rec:
        key = "t.py::test_x"
        breakdown = record.breakdown

    written = artifact_files.write(
        tmp_path, "t.py::test_x", artifacts.contents("t.py::test_x", Probe(), [Rec()])
    )
    meter.finish()
    assert [p.name for p in written] == ["breakdown.txt", "memory.png"]
    text = written[0].read_text()
    assert "first (parameters)" in text and "by category:" in text
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dispatch_tracker_on_real_tensors() -> None:
    """The GPU's way of collecting (a dispatch mode on real tensors), here on the CPU."""
    collector = attribution.Collector()
    tracker = attribution._DispatchTracker(collector, device_type="cpu")
    with tracker.active(), collector.following("build"):
        net = Net().to_empty(device="cpu")
    collector.add_model(net)
    mark = collector.mark()
    with tracker.active(), collector.following("run"):
        x = torch.zeros(256, D)
        y = net(x)
        y.sum().backward()
    found = groups(collector.breakdown(mark))
    assert found[("first", "parameters")] == D * D * 4
    assert found[("second", "parameters")] == D * D * 4
    assert found[("first", "gradients")] == D * D * 4
    assert found[("(no module)", "inputs/other")] >= 256 * D * 4  # x, y kept by this frame
    before = len(collector.events)
    del x, y
    released = collector.events[before:]
    assert [n for _key, n, _ctx in released] == [-1, -1]  # x and y: reported released


def test_backward_nodes_are_named_by_the_module_whose_forward_made_them() -> None:
    collector = attribution.Collector()
    net = Net().to_empty(device="cpu")
    collector.add_model(net)
    x = torch.zeros(4, D, requires_grad=True)
    with collector.following("run"):
        y = net(x)
        z = y.sum()  # outside any module
    key = attribution._Modules._KEY
    assert key not in z.grad_fn.metadata
    mm_second = y.grad_fn  # second's mm (no bias)
    assert mm_second.metadata[key] == "second"
    # Its inputs: first's output (made in first's forward) and second's transposed weight.
    inner = [n for n, _ in mm_second.next_functions if n is not None and n.next_functions]
    assert sorted(n.metadata.get(key) for n in inner) == ["first", "second"]


def test_store_drops_pruned_keys(tmp_path: Path) -> None:
    path = breakdowns.path_for(tmp_path / "estimate.yaml")
    breakdown = {"patterns": [["lm_head", "activations", 512]]}
    breakdowns.write(path, {"t.py::a": breakdown, "t.py::gone": breakdown})
    assert breakdowns.write(path, {}, remove=["t.py::gone"])
    assert set(breakdowns.load(path)) == {"t.py::a"}
    assert not breakdowns.write(tmp_path / "none" / "x.yaml", {}, remove=["t.py::a"])
