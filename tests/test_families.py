"""The family table: one row per pipeline family, and every reader agrees with it."""

from __future__ import annotations

import inspect
import shutil

import diffusers
import pytest
import torch
import yaml

from clipcond import TextConditioner
from clipcond.conditioner_config import ConditionerConfig
from clipcond.families import FAMILIES, custom_recipe, get_recipe


@pytest.mark.parametrize("name", [name for name in FAMILIES if name != "custom"])
def test_each_row_names_real_diffusers_classes_and_their_keywords(name: str) -> None:
    """Every class of a row exists in diffusers, and its __call__ takes the keyword names the
    row gives for what the recipe returns (pooled vector, attention mask), with negatives."""
    family = FAMILIES[name]
    expected = [family.embeds_keyword]
    if family.recipe.pooled != "none":
        expected.append(family.pooled_keyword)
    if family.recipe.return_mask:
        expected.append(family.mask_keyword)
    for class_name in family.pipeline_classes:
        parameters = inspect.signature(getattr(diffusers, class_name).__call__).parameters
        # Flux's negatives are optional: its Control, Fill and ControlNet img2img / inpaint
        # pipelines take none (as `negative_prompt` there, so a negative is refused by both)
        negatives = "negative_prompt" in parameters or not family.recipe.negative_optional
        for keyword in expected:
            assert keyword in parameters, (class_name, keyword)
            assert f"negative_{keyword}" in parameters or not negatives, (class_name, keyword)
        # the components the row reads are components of the class
        components = inspect.signature(getattr(diffusers, class_name).__init__).parameters
        for slot in family.slots:
            assert slot.model in components and slot.tokenizer in components, (class_name, slot)


def test_built_in_recipes_are_the_rows() -> None:
    for name, family in FAMILIES.items():
        if name != "custom":
            assert get_recipe(name) is family.recipe


def test_one_default_for_every_custom_setting(tiny_clip_text_path, tiny_t5_encoder_path, tmp_path) -> None:
    """t5_attention_mask and the T5 budget mean the same from Python, from YAML and in the
    pipeline: the custom row's values (the YAML default used to be True, Python's False)."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    row = FAMILIES["custom"].recipe
    assert row.t5_attention_mask is False and row.t5_max_length == 256
    clip = (CLIPTextModel.from_pretrained(tiny_clip_text_path), AutoTokenizer.from_pretrained(tiny_clip_text_path))
    t5 = (T5EncoderModel.from_pretrained(tiny_t5_encoder_path), AutoTokenizer.from_pretrained(tiny_t5_encoder_path))
    from_python = TextConditioner("custom", clip=[clip], t5=t5, projection_dim=16).recipe
    path = tmp_path / "custom.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "clip": [{"path": str(tiny_clip_text_path)}],
                "t5": {"path": str(tiny_t5_encoder_path)},
                "projection_dim": 16,
            }
        )
    )
    from_yaml = TextConditioner.from_config(path).recipe
    assert from_python == from_yaml == custom_recipe(True, True)
    assert from_yaml.t5_attention_mask == row.t5_attention_mask and from_yaml.t5_max_length == row.t5_max_length
    # and the mask setting changes what T5 returns when prompts are padded (so the pin matters)
    masked = TextConditioner(custom_recipe(True, True, t5_attention_mask=True), clip=[clip], t5=t5, projection_dim=16)
    masked.projection.load_state_dict(TextConditioner.from_config(path).projection.state_dict())
    plain = TextConditioner.from_config(path)
    plain.projection.load_state_dict(masked.projection.state_dict())
    with torch.no_grad():
        assert not torch.allclose(masked.encode("a red circle").tokens, plain.encode("a red circle").tokens)


def test_a_tokenizer_that_fails_to_load_is_an_error_not_a_fallback(tiny_clip_text_path, tmp_path) -> None:
    """A CLIP folder whose tokenizer cannot be loaded used to get OpenAI's tokenizer silently
    (the wrong pad token for OpenCLIP-style encoders); now it is an error naming the place,
    and the bundled tokenizer is there when asked for by name."""
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_clip_text_path, folder)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    config = ConditionerConfig(recipe="sd", clip=[_source(str(folder))])
    with pytest.raises(ValueError, match="(?s)could not load the clip tokenizer from .*builtin-clip"):
        TextConditioner.from_config(config)
    config.clip = [_source(str(folder), tokenizer="builtin-clip")]
    conditioner = TextConditioner.from_config(config)
    assert conditioner.clip[0].tokenizer.pad_token == "<|endoftext|>"
    assert conditioner.encode("a red circle").tokens.shape == (1, 77, 32)


def _source(path: str, **kwargs):
    from clipcond.conditioner_config import EncoderSource

    return EncoderSource(path=path, **kwargs)


def test_the_diffusion_training_setup_reads_the_custom_row(tiny_clip_text_path, tiny_t5_encoder_path, tmp_path):
    """A run with a T5 and no `t5_max_length` takes the custom row's budget and mask setting,
    and stores the budget in its pipeline; a CLIP alone takes the sd row's recipe. Both read
    captions truncated to one CLIP window (`caption_window_split`'s default)."""
    import dataclasses

    from test_train_diffusion import tiny_config

    from clipcond.training.diffusion.setup import build_diffusion_models

    with_t5 = build_diffusion_models(
        tiny_config(tiny_clip_text_path, tmp_path / "a", t5_encoder=str(tiny_t5_encoder_path), projection_dim=24)
    )
    assert with_t5.conditioner.recipe == dataclasses.replace(
        FAMILIES["custom"].recipe, combine="concat_sequence", window_split="truncate"
    )
    assert with_t5.recipe == "custom" and with_t5.t5_max_length == FAMILIES["custom"].recipe.t5_max_length
    clip_alone = build_diffusion_models(tiny_config(tiny_clip_text_path, tmp_path / "b"))
    assert clip_alone.recipe == "sd"
    assert clip_alone.conditioner.recipe == dataclasses.replace(get_recipe("sd"), window_split="truncate")


def test_max_sequence_length_is_checked_as_the_familys_call_checks_it(flux_pipe, sd3_pipe, pixart_pipe) -> None:
    """Flux's and SD3's `check_inputs` refuse more than 512 T5 tokens; 0 or 1 leave no room for a
    token before EOS. Before: 513 and more were taken, and 0 silently meant the default."""
    for pipe in (flux_pipe, sd3_pipe):
        with pytest.raises(ValueError, match="cannot be greater than 512"):
            TextConditioner.from_pipeline(pipe, max_sequence_length=513)
        assert TextConditioner.from_pipeline(pipe, max_sequence_length=512).recipe.t5_max_length == 512
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="`max_sequence_length` must be an int >= 2"):
            TextConditioner.from_pipeline(flux_pipe, max_sequence_length=bad)
    assert TextConditioner.from_pipeline(pixart_pipe, max_sequence_length=600).recipe.t5_max_length == 600


def test_window_split_without_a_clip_is_refused(pixart_pipe) -> None:
    """PixArt has no CLIP: the setting would do nothing (it was taken silently)."""
    with pytest.raises(ValueError, match=r"`window_split` \('word'\) says how CLIP windows are cut.* no CLIP"):
        TextConditioner.from_pipeline(pixart_pipe, window_split="word")
    assert TextConditioner.from_pipeline(pixart_pipe).recipe.window_split == "word"  # the row's, unread


def test_max_sequence_length_without_a_t5_is_refused(sd_pipe, sdxl_pipe) -> None:
    """Before: taken silently by SD and SDXL, which have no T5 (where `clean_caption` was refused)."""
    for pipe in (sd_pipe, sdxl_pipe):
        with pytest.raises(ValueError, match="`max_sequence_length` is the T5's token budget; .* has no T5"):
            TextConditioner.from_pipeline(pipe, max_sequence_length=77)
