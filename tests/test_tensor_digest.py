"""The digest of named tensors (clipcond.tensor_digest) against a CRC-32 computed here from
what its docstring says it covers (each name, dtype, shape and bytes, in name order), and what
a file's recorded digest says of the tensors read back."""

from __future__ import annotations

import zlib

import pytest
import torch

from clipcond.tensor_digest import DIGEST_METADATA_KEY, digest_problem, tensor_digest


def _reference(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8", "surrogatepass")
        crc = zlib.crc32(header + bytes(tensor.reshape(-1).view(torch.uint8).tolist()), crc)
    return format(crc, "08x")


TENSORS = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.tensor([1, -2])}


def test_the_digest_is_the_crc32_of_names_dtypes_shapes_and_bytes_in_name_order() -> None:
    digest = tensor_digest(TENSORS)
    assert digest == _reference(TENSORS) and len(digest) == 8
    assert tensor_digest(dict(reversed(TENSORS.items()))) == digest
    assert tensor_digest({}) == "00000000"


def test_strides_do_not_change_the_digest_but_every_part_of_a_tensor_does() -> None:
    transposed = torch.arange(6, dtype=torch.float32).reshape(3, 2).t()
    assert not transposed.is_contiguous()
    assert tensor_digest({"x": transposed}) == tensor_digest({"x": transposed.contiguous()})
    base = tensor_digest({"x": torch.zeros(2, 3)})
    flipped = torch.zeros(2, 3)
    flipped.reshape(-1).view(torch.uint8)[5] = 1
    for other in (
        {"y": torch.zeros(2, 3)},
        {"x": torch.zeros(2, 3, dtype=torch.int32)},
        {"x": torch.zeros(3, 2)},
        {"x": flipped},
    ):
        assert tensor_digest(other) != base


def test_a_name_with_an_unpaired_surrogate_is_digested() -> None:
    tensors = {"bad\udc80name": torch.ones(2)}
    assert tensor_digest(tensors) == _reference(tensors)


@pytest.mark.parametrize("recorded", [None, 123, b"0000"])
def test_a_file_without_a_digest_says_so(recorded) -> None:
    assert digest_problem(TENSORS, recorded) == "it records no digest of its tensors"


def test_bytes_that_do_not_match_the_recorded_digest_say_so() -> None:
    assert digest_problem(TENSORS, tensor_digest(TENSORS)) is None
    changed = {**TENSORS, "a.bias": torch.tensor([1, -3])}
    assert digest_problem(changed, tensor_digest(TENSORS)) == "its tensor bytes do not match the digest it records"
    assert DIGEST_METADATA_KEY == "tensor_digest"
