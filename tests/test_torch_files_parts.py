"""Reading a pickle-based torch file without running its code, on files made here: tensors
read (on the meta device too), a file needing a full unpickle told apart (with the globals
torch names), bytes that are no torch file (with torch's reason, cut short), and the
reasons taken from torch's own words when its message is of another shape."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from clipcond import torch_files
from clipcond.torch_files import NeedsUnpickling, NotATorchFile, load_weights_only


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_tensors_and_plain_containers_are_read(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(3.0), "names": ["a", "b"], "step": 7}, path)
    loaded = load_weights_only(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["names"] == ["a", "b"] and loaded["step"] == 7
    on_meta = load_weights_only(str(path), map_location="meta")
    assert on_meta["w"].device.type == "meta" and on_meta["w"].shape == (3,)


@pytest.mark.parametrize("zipped", [True, False])
def test_a_file_holding_other_objects_needs_unpickling_and_names_them(tmp_path, zipped) -> None:
    path = tmp_path / "namespace.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(NeedsUnpickling) as raised:
        load_weights_only(path)
    assert raised.value.names == ["argparse.Namespace"]
    assert raised.value.reason.startswith("Unsupported global: GLOBAL argparse.Namespace")
    assert str(raised.value) == raised.value.reason and len(raised.value.reason) <= 300
    assert isinstance(raised.value, NotATorchFile) and isinstance(raised.value, ValueError)
    assert isinstance(raised.value.__cause__, pickle.UnpicklingError)


def test_a_file_that_would_run_a_command_is_refused_without_running_it(tmp_path, capfd) -> None:
    path = tmp_path / "command.pt"
    torch.save({"payload": RunsACommand()}, path)
    with pytest.raises(NeedsUnpickling) as raised:
        load_weights_only(path)
    assert raised.value.names == [f"{os.system.__module__}.system"]
    assert (
        raised.value.reason
        == f"Trying to load unsupported GLOBAL {os.system.__module__}.system whose module {os.system.__module__} is blocked."
    )
    assert "must never run" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "data, reason",
    [(b"hello world", "KeyError(101)"), (b"", "EOFError()")],
)
def test_bytes_that_are_no_torch_file_give_torchs_reason(tmp_path, data, reason) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    with pytest.raises(NotATorchFile) as raised:
        load_weights_only(path)
    assert type(raised.value) is NotATorchFile and raised.value.reason == reason == str(raised.value)


def test_a_zip_cut_short_gives_torchs_reason_cut_to_200_characters(tmp_path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.ones(4)}, whole)
    path = tmp_path / "cut.pt"
    path.write_bytes(whole.read_bytes()[:50])
    with pytest.raises(NotATorchFile) as raised:
        load_weights_only(path)
    assert raised.value.reason.startswith("RuntimeError('PytorchStreamReader failed reading zip archive")
    assert len(raised.value.reason) == 200


def test_a_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_weights_only(tmp_path / "missing.pt")


def refused_with(monkeypatch, message: str) -> NotATorchFile:
    def load(*args, **kwargs):
        raise pickle.UnpicklingError(message)

    monkeypatch.setattr(torch_files.torch, "load", load)
    with pytest.raises(NotATorchFile) as raised:
        load_weights_only("any.pt")
    return raised.value


def test_the_reason_is_torchs_named_line_else_the_start_of_its_message(monkeypatch) -> None:
    error = refused_with(
        monkeypatch, "Weights only load failed.\n  WeightsUnpickler error: Unsupported operand 149  \nCheck the file."
    )
    assert type(error) is NotATorchFile and error.reason == "Unsupported operand 149"
    error = refused_with(
        monkeypatch,
        "Weights only load failed.\nTrying to load unsupported GLOBAL nt.system whose module nt is blocked.\n",
    )
    assert type(error) is NeedsUnpickling and error.names == ["nt.system"]
    assert error.reason == "Trying to load unsupported GLOBAL nt.system whose module nt is blocked."
    error = refused_with(monkeypatch, "x" * 500)
    assert type(error) is NotATorchFile and error.reason == "x" * 200
    error = refused_with(monkeypatch, "WeightsUnpickler error: " + "y" * 400)
    assert error.reason == "y" * 300
    error = refused_with(monkeypatch, "WeightsUnpickler error: \nthe rest")
    assert error.reason == "WeightsUnpickler error: \nthe rest"  # an empty named line: the message itself
    error = refused_with(monkeypatch, "WeightsUnpickler error: Unsupported global: GLOBAL a.B and GLOBAL c.D\n")
    assert type(error) is NeedsUnpickling and error.names == ["a.B"]
    error = refused_with(monkeypatch, "WeightsUnpickler error: Unsupported global: GLOBAL a.B " + "z" * 400)
    assert type(error) is NeedsUnpickling and len(error.reason) == 300 and error.reason.startswith("Unsupported global")
    error = refused_with(monkeypatch, "first\nWeightsUnpickler error without its colon\n")
    assert error.reason == "WeightsUnpickler error without its colon"  # the line itself


@pytest.mark.parametrize(
    "raised",
    [RuntimeError("r"), EOFError(), KeyError(3), IndexError("i"), ValueError("v"), TypeError("t"), AttributeError("a")],
)
def test_each_error_an_unpickler_stops_with_is_no_torch_file(monkeypatch, raised) -> None:
    def load(*args, **kwargs):
        raise raised

    monkeypatch.setattr(torch_files.torch, "load", load)
    with pytest.raises(NotATorchFile) as caught:
        load_weights_only("any.pt")
    assert caught.value.reason == repr(raised) and caught.value.__cause__ is raised


def test_a_struct_error_is_no_torch_file_and_other_errors_pass(monkeypatch) -> None:
    import struct

    for error, expected in (
        (struct.error("unpack requires a buffer of 4 bytes"), NotATorchFile),
        (MemoryError(), MemoryError),
    ):

        def load(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(torch_files.torch, "load", load)
        with pytest.raises(expected):
            load_weights_only("any.pt")


def test_the_call_is_torch_load_weights_only(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch_files.torch, "load", lambda *args, **kwargs: calls.append((args, kwargs)) or "read")
    assert load_weights_only("a.pt") == "read" and load_weights_only("b.pt", map_location="meta") == "read"
    assert calls == [
        (("a.pt",), {"map_location": "cpu", "weights_only": True}),
        (("b.pt",), {"map_location": "meta", "weights_only": True}),
    ]
