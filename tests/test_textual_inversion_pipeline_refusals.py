"""`CLIPConditionedPipeline.load_textual_inversion` on what diffusers' own loader takes and then
half-writes: a `token` of another type (it grew the text encoder's embedding table, then failed
inside the tokenizer: 3 rows more than tokens after a `token` of 1.5, 0 or a tuple), a 3-D
tensor (its token added, then a failure writing the row) and NaN vectors (loaded silently).
Each is refused, naming the argument or the token, with the tokenizer and the table as they
were; the loads diffusers takes still equal its (tests/test_textual_inversion.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_pipelines import build_sd, build_sdxl

from clipcond import CLIPConditionedPipeline

WIDTH = 32  # the tiny first CLIP's width


def _pipeline(sdxl: bool) -> CLIPConditionedPipeline:
    pipe = CLIPConditionedPipeline.from_pipe(build_sdxl() if sdxl else build_sd())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(pipe) -> tuple[int, int, torch.Tensor]:
    table = pipe.text_encoder.get_input_embeddings().weight
    return len(pipe.tokenizer), table.shape[0], table.detach().clone()


def _unchanged(pipe, before) -> bool:
    size, rows, table = _state(pipe)
    return size == before[0] and rows == before[1] and torch.equal(table, before[2])


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize(
    "token", [1.5, 0, ("<a>",), np.zeros(1), [], ["<a>", 2]], ids=["float", "int", "tuple", "array", "empty", "mixed"]
)
def test_a_token_of_another_type_is_refused_with_nothing_changed(sdxl, token) -> None:
    pipe = _pipeline(sdxl)
    before = _state(pipe)
    with pytest.raises(TypeError, match=r"^`token` must be a string, a non-empty list of strings \(one per source\)"):
        pipe.load_textual_inversion(torch.randn(3, WIDTH), token=token)
    assert _unchanged(pipe, before)


@pytest.mark.parametrize("source", [object(), 1.5, (torch.randn(1, WIDTH),)], ids=["object", "float", "tuple"])
def test_a_source_of_another_type_is_refused_naming_the_argument(source) -> None:
    pipe = _pipeline(sdxl=False)
    before = _state(pipe)
    with pytest.raises(TypeError, match=r"^`pretrained_model_name_or_path` must be a path or hub id, a state dict"):
        pipe.load_textual_inversion(source, token="<a>")
    assert _unchanged(pipe, before)


def _nan_vectors() -> torch.Tensor:
    vectors = torch.randn(2, WIDTH)
    vectors[1, 3] = float("nan")
    return vectors


@pytest.mark.parametrize(
    "source, message",
    [
        (torch.randn(1, 2, WIDTH), r"must hold vectors of shape \(vectors, width\) or \(width,\), got \(1, 2, 32\)$"),
        (torch.zeros(0, WIDTH), r"must hold vectors of shape \(vectors, width\) or \(width,\), got \(0, 32\)$"),
        (_nan_vectors(), r"holds NaN or infinite values \(a damaged file\?\)$"),
        ({"<toy>": torch.full((WIDTH,), float("inf"))}, r"holds NaN or infinite values \(a damaged file\?\)$"),
        (torch.ones(1, WIDTH, dtype=torch.int64), "must hold a float tensor of vectors"),
    ],
    ids=["3d", "no_vectors", "nan", "inf_state_dict", "integers"],
)
def test_vectors_no_encoder_can_take_are_refused_naming_the_token(source, message) -> None:
    pipe = _pipeline(sdxl=False)
    before = _state(pipe)
    with pytest.raises(ValueError, match=r"^the textual-inversion source for token '<toy>' " + message):
        pipe.load_textual_inversion(source, token="<toy>")
    assert _unchanged(pipe, before)


def test_a_file_holding_nan_is_refused_before_its_token_is_added(tmp_path) -> None:
    """A diffusers-format file read by diffusers' own loader; the check sees its vectors."""
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<toy>": _nan_vectors()}, str(path))
    pipe = _pipeline(sdxl=False)
    before = _state(pipe)
    with pytest.raises(ValueError, match=r"^the textual-inversion source for token '<toy>' holds NaN or infinite"):
        pipe.load_textual_inversion(path)
    assert _unchanged(pipe, before)
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<toy>")  # the name is still free
    assert pipe.tokenizer.convert_tokens_to_ids(["<toy>", "<toy>_1"]) == [before[0], before[0] + 1]


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize(
    "tokens", [[], {}, 0, ("<toy>", 1), torch.zeros(1)], ids=["empty_list", "empty_dict", "int", "mixed", "tensor"]
)
def test_unloading_tokens_of_another_kind_is_refused_with_every_token_kept(sdxl, tokens) -> None:
    """diffusers' `unload_textual_inversion` read an empty list (or dict, or a zero tensor) as
    None and unloaded every token; here only None means every token."""
    pipe = _pipeline(sdxl)
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<toy>")
    before = _state(pipe)
    with pytest.raises(TypeError, match=r"^`tokens` must be a token, a non-empty list of tokens, or None"):
        pipe.unload_textual_inversion(tokens)
    assert _unchanged(pipe, before)
    pipe.unload_textual_inversion(["<toy>"])
    assert len(pipe.tokenizer) == before[0] - 2


def test_a_token_in_one_clip_of_two_unloads_from_it_and_an_unknown_one_changes_nothing() -> None:
    """SDXL with `<toy>` in its first CLIP only: unloading it by name runs diffusers' unloader on
    that CLIP alone (run on the second, diffusers' raised "No tokens to remove found" after the
    first had unloaded). A token no CLIP holds is refused before either changes."""
    pipe = _pipeline(sdxl=True)
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<toy>")
    second = len(pipe.tokenizer_2)
    before = _state(pipe)
    with pytest.raises(ValueError, match=r"^`tokens`: no textual-inversion token '<cat>' is loaded"):
        pipe.unload_textual_inversion("<cat>")
    assert _unchanged(pipe, before)
    pipe.unload_textual_inversion("<toy>")
    assert len(pipe.tokenizer) == before[0] - 2 and len(pipe.tokenizer_2) == second
    assert "<toy>" not in pipe.tokenizer.get_vocab()


def test_a_truncated_file_is_refused_with_nothing_changed(tmp_path) -> None:
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<toy>": torch.randn(2, WIDTH)}, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    pipe = _pipeline(sdxl=False)
    before = _state(pipe)
    with pytest.raises(OSError, match="Unable to load weights from checkpoint file"):  # diffusers' reader
        pipe.load_textual_inversion(path)
    assert _unchanged(pipe, before)
