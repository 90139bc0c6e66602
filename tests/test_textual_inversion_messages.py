"""The whole messages of textual inversion's refusals, and the edges of its offload handling,
that mutation testing of clipcond/textual_inversion.py found unasserted: which part of a pair
holds NaN, widths that fit no encoder or several, a token already added, prompt-syntax words,
an encoder on the meta device with no hook, or offloaded to disk, accelerate's SequentialHook,
and the length warning of a long prompt's expansion."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import cpu_offload, disk_offload
from accelerate.hooks import ModelHook, add_hook_to_module
from tiny_pipelines import build_sd, build_sdxl

from clipcond import TextConditioner
from clipcond.textual_inversion import expand_tokens, multi_vector_tokens, placements, read_textual_inversion
from clipcond.tokenization import clip_tokenizer

CPU = torch.device("cpu")
ENCODER_1 = "CLIP encoder 1 (CLIPTextModel, width 32)"
ENCODER_2 = "CLIP encoder 2 (CLIPTextModelWithProjection, width 32)"


def _vectors(count: int, width: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def _refusal(call, error=ValueError) -> str:
    with pytest.raises(error) as refusal:
        call()
    return str(refusal.value)


def test_the_part_of_a_pair_holding_nan_is_named():
    pair = {"clip_l": _vectors(1), "clip_g": torch.full((1, 32), float("nan"))}
    message = _refusal(lambda: read_textual_inversion(pair, token="<t>"))
    assert message == "the state dict (`clip_g`) holds NaN or infinite values (a damaged file?)"


def test_a_source_of_another_type_is_named_by_its_type():
    message = _refusal(lambda: read_textual_inversion(3.5), TypeError)
    assert message == "`path_or_state_dict` must be a file or folder path, a state dict or a tensor, got float"


def test_a_prompt_syntax_word_as_token_names_every_such_word():
    message = _refusal(lambda: read_textual_inversion(_vectors(1), token="BREAK"))
    assert message == (
        "the state dict names the token 'BREAK', which no prompt could use (a token is one word without spaces, "
        "not BREAK or AND): pass another `token=`"
    )


def test_no_clip_encoder_is_refused():
    embedding = read_textual_inversion(_vectors(1), token="<t>")
    message = _refusal(lambda: placements(embedding, []))
    assert message == "textual inversion needs a CLIP encoder; this conditioner has none (T5 reads no embeddings)"


def test_widths_that_fit_no_encoder_are_listed_with_every_encoder():
    sd = TextConditioner.from_pipeline(build_sd())
    pair = {"clip_l": _vectors(1, 7), "clip_g": _vectors(1, 9)}
    assert _refusal(lambda: sd.load_textual_inversion(pair, token="<p>")) == (
        f"the state dict holds vectors of width 7 (`clip_l`) and 9 (`clip_g`), which fits none of the encoders: "
        f"{ENCODER_1}"
    )
    sdxl = TextConditioner.from_pipeline(build_sdxl())
    assert _refusal(lambda: sdxl.load_textual_inversion(_vectors(1, 9), token="<q>")) == (
        f"the state dict holds vectors of width 9, which fits none of the encoders: {ENCODER_1}, {ENCODER_2}"
    )


def test_a_width_that_fits_both_encoders_asks_for_a_pair():
    sdxl = TextConditioner.from_pipeline(build_sdxl())
    assert _refusal(lambda: sdxl.load_textual_inversion(_vectors(1), token="<q>")) == (
        f"the state dict fits several encoders ({ENCODER_1}, {ENCODER_2}): it does not say which one it was made "
        "for; save it as a {'clip_l': ..., 'clip_g': ...} pair, one set per encoder"
    )


def test_a_token_loaded_twice_is_refused_naming_the_tokenizer():
    conditioner = TextConditioner.from_pipeline(build_sd())
    conditioner.load_textual_inversion(_vectors(1), token="<ok>")
    assert _refusal(lambda: conditioner.load_textual_inversion(_vectors(1), token="<ok>")) == (
        f"the state dict: the token(s) ['<ok>'] are already in the tokenizer of {ENCODER_1}; pass another `token=`"
    )


def test_an_embedding_table_on_the_meta_device_with_no_hook_is_refused_unchanged():
    pipe = build_sd()
    conditioner = TextConditioner.from_pipeline(pipe)
    pipe.text_encoder.get_input_embeddings().to("meta")
    size = len(pipe.tokenizer)
    assert _refusal(lambda: conditioner.load_textual_inversion(_vectors(1), token="<t>")) == (
        f"the input embeddings of {ENCODER_1} are on the meta device and no accelerate offload hook holds their "
        "values: load the model's weights before loading an embedding"
    )
    assert len(pipe.tokenizer) == size


def test_an_encoder_offloaded_to_disk_is_refused_with_the_remedy(tmp_path):
    pipe = build_sd()
    disk_offload(pipe.text_encoder, tmp_path / "offload", execution_device=CPU, offload_buffers=True)
    conditioner = TextConditioner.from_pipeline(pipe)
    assert _refusal(lambda: conditioner.load_textual_inversion(_vectors(1), token="<t>")) == (
        f"{ENCODER_1} is offloaded by accelerate in a way other than `cpu_offload` / "
        "`enable_sequential_cpu_offload` (to disk, or by a device map), which loading an embedding could not put "
        "back as it was: load the embedding before offloading the model"
    )


def test_offload_hooks_inside_a_sequential_hook_are_found():
    """accelerate chains a hook added to a module that has one into a SequentialHook: the
    offload hook inside it still holds the weights, and the embedding loads through it."""
    plain, chained = build_sd(), build_sd()
    cpu_offload(chained.text_encoder, CPU, offload_buffers=True)
    for module in list(chained.text_encoder.modules()):
        if "_hf_hook" in module.__dict__:
            add_hook_to_module(module, ModelHook(), append=True)
    assert type(chained.text_encoder.get_input_embeddings()._hf_hook).__name__ == "SequentialHook"
    encodes = []
    for pipe in (plain, chained):
        conditioner = TextConditioner.from_pipeline(pipe)
        conditioner.load_textual_inversion(_vectors(2), token="<toy>")
        with torch.no_grad():
            encodes.append(conditioner.encode(["a photo of <toy>"]).tokens)
    assert torch.equal(*encodes)


def test_expanding_a_long_prompt_logs_no_length_warning():
    """The expansion tokenizes the whole prompt, which transformers warns about past 77 tokens;
    clipcond windows long prompts, so the warning would be false. It is still shown later."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        tokenizer = clip_tokenizer()
        tokenizer.add_tokens(["<a>", "<a>_1"])
        long_prompt = "a <a> " + "word " * 100
        assert expand_tokens(long_prompt, tokenizer, multi_vector_tokens(tokenizer)).startswith("a <a> <a>_1 word")
        assert not [record for record in records if "sequence length" in record.getMessage()]
        tokenizer.tokenize(long_prompt)
        assert [record for record in records if "sequence length" in record.getMessage()]
    finally:
        logger.removeHandler(handler)
