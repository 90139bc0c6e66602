"""A clipcond pipeline's `load_textual_inversion` / `unload_textual_inversion`
(clipcond.pipelines.textual_inversion_loading) in the parts the equality tests reach only in
passing: an SDXL pair read from each kind of file in one call, what is not a pair going to
diffusers' loader as it is (loading options included, errors diffusers' own), the refusals
whole, and unloading by name or from one CLIP given by the caller."""

from __future__ import annotations

import pickle

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file
from tiny_pipelines import WIDTH, build_sd, build_sdxl

from clipcond import CLIPConditionedPipeline
from clipcond.tokenization import clip_tokenizer


def _pipeline(sdxl: bool = True) -> CLIPConditionedPipeline:
    return CLIPConditionedPipeline.from_pipe(build_sdxl() if sdxl else build_sd())


def _rows(encoder, tokenizer, token: str, count: int) -> torch.Tensor:
    """The embedding rows of `token` and its extra vectors (`token_1`, ...)."""
    names = [token] + [f"{token}_{index}" for index in range(1, count)]
    ids = tokenizer.convert_tokens_to_ids(names)
    return encoder.get_input_embeddings().weight[ids].detach()


def _pair() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"clip_l": torch.randn(2, WIDTH, generator=generator), "clip_g": torch.randn(2, WIDTH, generator=generator)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_an_sdxl_pair_file_of_each_kind_loads_into_both_clips_in_one_call(suffix, tmp_path) -> None:
    pair = _pair()
    path = tmp_path / f"pair{suffix}"
    if suffix == ".safetensors":
        save_file(pair, path)
    else:
        torch.save(pair, path)
    pipe = _pipeline()
    pipe.load_textual_inversion(path, token="<pair>")
    assert torch.equal(_rows(pipe.text_encoder, pipe.tokenizer, "<pair>", 2), pair["clip_l"])
    assert torch.equal(_rows(pipe.text_encoder_2, pipe.tokenizer_2, "<pair>", 2), pair["clip_g"])


def test_a_file_that_needs_full_unpickling_is_not_run_while_looking_for_a_pair(tmp_path) -> None:
    """Whether a `.pt` file holds a pair is read with `weights_only=True`: a pickle that would
    run code is refused (by diffusers' loader, which reads it the same way), never run."""
    ran = tmp_path / "ran"

    class Runs:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    path = tmp_path / "bad.pt"
    with open(path, "wb") as file:
        pickle.dump({"clip_l": Runs(), "clip_g": torch.zeros(1, WIDTH)}, file, protocol=2)
    with pytest.raises(Exception):  # noqa: B017 - whichever error diffusers' loader gives
        _pipeline().load_textual_inversion(path, token="<bad>")
    assert not ran.exists()


def _error(call) -> tuple[type, str]:
    with pytest.raises(Exception) as raised:  # noqa: B017 - compared with diffusers' own below
        call()
    return type(raised.value), str(raised.value)


@pytest.mark.parametrize("where", ["empty_folder", "missing_file", "nested_lists"])
def test_what_is_not_a_pair_fails_in_diffusers_loader_as_in_diffusers(where, tmp_path) -> None:
    """Nothing to read, or a `.pt` file that holds no dict (lists of lists, which no set takes)."""
    source = tmp_path / "folder"
    source.mkdir()
    if where == "missing_file":
        source = source / "missing.safetensors"
    elif where == "nested_lists":
        source = source / "lists.pt"
        torch.save([[1.0, 2.0]], source)
    ours = _error(lambda: _pipeline().load_textual_inversion(source, token="<x>"))
    sdxl = build_sdxl()
    theirs = _error(
        lambda: StableDiffusionXLPipeline.load_textual_inversion(
            sdxl, source, token="<x>", tokenizer=sdxl.tokenizer, text_encoder=sdxl.text_encoder
        )
    )
    assert ours == theirs


def test_loading_options_reach_diffusers_loader(tmp_path) -> None:
    vector = torch.randn(1, WIDTH)
    save_file({"<w>": vector}, tmp_path / "mine.safetensors")
    pipe = _pipeline(sdxl=False)
    pipe.load_textual_inversion(tmp_path, weight_name="mine.safetensors")
    assert torch.equal(_rows(pipe.text_encoder, pipe.tokenizer, "<w>", 1), vector)


def test_a_source_of_another_type_is_refused_whole() -> None:
    with pytest.raises(TypeError) as raised:
        _pipeline().load_textual_inversion(3.5, token="<x>")
    assert str(raised.value) == (
        "`pretrained_model_name_or_path` must be a path or hub id, a state dict or a tensor of vectors (or a list of "
        "them), got float"
    )


def test_a_token_of_another_type_is_refused_whole() -> None:
    with pytest.raises(TypeError) as raised:
        _pipeline().load_textual_inversion(torch.zeros(1, WIDTH), token=1.5)
    assert str(raised.value) == (
        "`token` must be a string, a non-empty list of strings (one per source) or None (the name the source gives), "
        "got 1.5"
    )


def test_a_list_of_tokens_for_one_pair_is_refused_whole() -> None:
    pipe = _pipeline()
    with pytest.raises(TypeError) as raised:
        pipe.load_textual_inversion(_pair(), token=["<a>"])
    assert str(raised.value) == "`token` for one `clip_l`/`clip_g` pair must be a string or None, got ['<a>']"
    assert "<a>" not in pipe.tokenizer.get_vocab()


def test_unloading_a_token_by_name_keeps_the_others() -> None:
    pipe = _pipeline(sdxl=False)
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<a>")
    pipe.load_textual_inversion(torch.randn(1, WIDTH), token="<b>")
    pipe.unload_textual_inversion("<a>")
    vocabulary = pipe.tokenizer.get_vocab()
    assert "<a>" not in vocabulary and "<a>_1" not in vocabulary and "<b>" in vocabulary


@pytest.mark.parametrize("given", ["both", "text_encoder", "tokenizer"])
def test_unloading_from_the_clip_given_takes_the_other_half_from_the_pipeline(given) -> None:
    """As diffusers: the one of `tokenizer` and `text_encoder` not given is the pipeline's first."""
    pipe = _pipeline()
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<a>")
    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    kwargs = {
        "both": dict(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder),
        "text_encoder": dict(text_encoder=pipe.text_encoder),
        "tokenizer": dict(tokenizer=pipe.tokenizer),
    }[given]
    pipe.unload_textual_inversion("<a>", **kwargs)
    assert "<a>" not in pipe.tokenizer.get_vocab()
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows - 2


def test_unloading_from_the_second_clip_given_leaves_the_first() -> None:
    pipe = _pipeline()
    first_rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    second = dict(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<a>", **second)
    second_rows = pipe.text_encoder_2.get_input_embeddings().weight.shape[0]
    pipe.unload_textual_inversion("<a>", **second)
    assert "<a>" not in pipe.tokenizer_2.get_vocab()
    assert pipe.text_encoder_2.get_input_embeddings().weight.shape[0] == second_rows - 2
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == first_rows


@pytest.mark.parametrize("given", ["text_encoder", "tokenizer"])
def test_unloading_with_half_a_clip_from_a_pipeline_without_a_first_one_is_refused_whole(given) -> None:
    sdxl = build_sdxl()
    refiner_like = CLIPConditionedPipeline.from_pipe(sdxl, text_encoder=None, tokenizer=None)
    half = {"text_encoder": sdxl.text_encoder_2, "tokenizer": sdxl.tokenizer_2}[given]
    missing = "tokenizer" if given == "text_encoder" else "text_encoder"
    with pytest.raises(ValueError) as raised:
        refiner_like.unload_textual_inversion("<a>", **{given: half})
    assert str(raised.value) == (
        f"`{missing}` is needed beside the `{given}` given: this pipeline has no `{missing}` to take it from"
    )


def test_unloading_everything_skips_a_tokenizer_without_its_encoder() -> None:
    """A pipeline holding a second tokenizer but no second encoder: every token goes from the
    first CLIP, and the lone tokenizer is not paired with the first encoder."""
    sd = build_sd()
    pipe = CLIPConditionedPipeline(
        **{name: sd.components[name] for name in ("unet", "scheduler", "vae", "text_encoder", "tokenizer")},
        text_encoder_2=None,
        tokenizer_2=clip_tokenizer(),
    )
    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    pipe.tokenizer_2.add_tokens(["<only-here>"])
    pipe.load_textual_inversion(torch.randn(2, WIDTH), token="<a>")
    pipe.unload_textual_inversion()
    assert "<a>" not in pipe.tokenizer.get_vocab() and "<only-here>" in pipe.tokenizer_2.get_vocab()
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows
