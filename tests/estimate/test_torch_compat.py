"""The check of the torch internals the estimator overrides or calls, at backend creation:
a missing name, a changed signature or a missing field is named with the fix."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from packaging.requirements import Requirement  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorConverter, FakeTensorMode  # noqa: E402

from pytest_vram.backends import create  # noqa: E402
from pytest_vram.backends.base import BackendUnavailable  # noqa: E402
from pytest_vram.backends.estimate import torch_compat  # noqa: E402


def test_this_torch_has_every_internal_with_its_signature() -> None:
    assert torch_compat.missing(cpu_only=True) == []
    assert torch_compat.changed() == []


def test_a_changed_signature_of_an_overridden_method_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _prep_args_for_hash(self: Any, result: Any, args: Any, state: Any) -> None: ...

    monkeypatch.setattr(FakeTensorMode, "_prep_args_for_hash", _prep_args_for_hash)
    with pytest.raises(BackendUnavailable) as caught:
        create("estimate")
    message = str(caught.value)
    assert (
        "torch._subclasses.fake_tensor.FakeTensorMode._prep_args_for_hash (overridden): "
        "expected (self, result, args, state, id_hashed_objects), "
        "found (self, result, args, state)"
    ) in message
    assert "changed: " in message and torch.__version__ in message
    assert torch_compat.SUPPORTED_TORCH in message and "--vram-backend=cuda" in message


def test_a_called_function_whose_signature_no_longer_takes_the_call_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _get_memo(self: Any, t: Any, *, memo: Any) -> None: ...

    monkeypatch.setattr(FakeTensorConverter, "_get_memo", _get_memo)
    with pytest.raises(BackendUnavailable) as caught:
        create("estimate")
    assert (
        "torch._subclasses.fake_tensor.FakeTensorConverter._get_memo (called as (self, t)): "
        "found (self, t, *, memo)"
    ) in str(caught.value)


def test_a_missing_overridden_method_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(FakeTensorMode, "may_turn_const")
    with pytest.raises(BackendUnavailable, match=r"lacks: .*FakeTensorMode\.may_turn_const"):
        create("estimate")


def test_a_missing_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = (*torch_compat.FIELDS, (torch_compat.FIELDS[1][0], ("is_neg", "no_such_field")))
    monkeypatch.setattr(torch_compat, "FIELDS", fields)
    assert torch_compat.missing(cpu_only=False) == [
        "torch._subclasses.fake_tensor.TensorMetadata.no_such_field"
    ]


def test_the_internals_of_sharded_training_are_checked_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fsdp_param = pytest.importorskip("torch.distributed.fsdp._fully_shard._fsdp_param")
    assert torch_compat.check_distributed() is None

    def alloc_storage(tensor: Any, nbytes: int) -> None: ...

    monkeypatch.setattr(fsdp_param, "alloc_storage", alloc_storage)
    problem = torch_compat.check_distributed()
    assert problem is not None
    assert "_fsdp_param.alloc_storage (called as (tensor)): found (tensor, nbytes)" in problem


def test_the_supported_range_is_the_one_the_package_declares() -> None:
    declared = [
        Requirement(r)
        for r in importlib.metadata.requires("pytest-vram") or []
        if Requirement(r).name == "torch"
    ]
    assert [r.specifier for r in declared] == [Requirement(torch_compat.SUPPORTED_TORCH).specifier]
