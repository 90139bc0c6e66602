"""convert_openai_state_dict where its mutation run (benchmarks/results/mutation.md) found it unguarded:
the refusals' whole messages, a shape check of every tensor, heads given as 1 or of another type,
the special token ids and the image tower's projection. References: the messages as the module documents them,
hand-made state dicts, OpenAI's forward pass re-expressed in tests/reference_openai_clip.py.
Cheap: tiny OpenAI-layout CLIPs (text width 32), about 1 s for the file."""

from __future__ import annotations

import re

import pytest
import torch
from reference_openai_clip import OpenAIStyleCLIP, tiny_openai_clip
from transformers import CLIPModel

from clipcond.models import convert_openai_state_dict


def _state(text_heads: int = 2, seed: int = 0) -> tuple[dict[str, torch.Tensor], OpenAIStyleCLIP]:
    """A tiny OpenAI-layout CLIP (text width 32, vision width 64: one head by OpenAI's rule): its
    state dict, and it."""
    model = tiny_openai_clip(vision_width=64, vision_heads=1, text_heads=text_heads, seed=seed)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}, model


def test_a_clipa_checkpoint_is_refused_with_the_whole_reason() -> None:
    state, _ = _state()
    clipa = {key: value for key, value in state.items() if not key.startswith("visual.ln_pre.")}
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(clipa, text_heads=2)
    assert str(error.value) == (
        "missing 'visual.ln_pre.weight': an open_clip CLIPA model (no_ln_pre, and its towers pool "
        "by average and at the last token), which a transformers CLIPModel cannot hold; it does not convert"
    )


def test_a_missing_required_tensor_is_named_with_no_hint() -> None:
    state, _ = _state()
    del state["logit_scale"]
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(state, text_heads=2)
    assert str(error.value) == "not an OpenAI / open_clip ViT CLIP state dict: missing ['logit_scale']"


def test_a_resnet_checkpoint_gets_the_whole_resnet_hint() -> None:
    state, _ = _state()
    resnet_like = {key: value for key, value in state.items() if not key.startswith("visual.")}
    resnet_like["visual.layer1.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(resnet_like, text_heads=2)
    assert str(error.value) == (
        "not an OpenAI / open_clip ViT CLIP state dict: missing ['visual.conv1.weight', 'visual.class_embedding', "
        "'visual.positional_embedding', 'visual.proj'] (this is a ResNet CLIP; only ViT checkpoints convert to CLIPModel)"
    )


@pytest.mark.parametrize("prefix", ["text_model.", "vision_model."])
def test_a_transformers_single_tower_state_dict_is_recognised(prefix: str) -> None:
    """A hub CLIPTextModel's weights (an SD text_encoder/model.safetensors) or a CLIPVisionModel's: the
    hint says what it is, whichever tower it holds (key names as transformers saves them)."""
    weights = {
        f"{prefix}embeddings.position_embedding.weight": torch.zeros(4, 8),
        f"{prefix}post_layernorm.weight": torch.ones(8),
    }
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(weights)
    assert str(error.value).endswith(" (this already is a transformers CLIPModel state dict)"), str(error.value)


def test_missing_residual_blocks_are_named_with_the_indices_found() -> None:
    state, _ = _state()
    gap = {key: value for key, value in state.items() if not key.startswith("transformer.resblocks.0.")}
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(gap, text_heads=2)
    assert str(error.value) == (
        "expected residual blocks transformer.resblocks.0, transformer.resblocks.1, ...; found indices [1]"
    )


# (key, dimension) that convert_openai_state_dict reads a size from (its "sizes, from shapes"): damaging
# one changes that size, and the refusal names whichever other tensor or size then disagrees
_OTHERS = "but the sizes the checkpoint's other tensors give need"
SIZE_SOURCES = {
    ("visual.conv1.weight", 0): "vision width 65 is not a multiple of 64",
    ("visual.conv1.weight", 3): f"'visual.conv1.weight' has shape (64, 3, 8, 9), {_OTHERS} (64, 3, 9, 9)",
    ("visual.positional_embedding", 0): "visual.positional_embedding must hold 1 + grid * grid positions",
    ("token_embedding.weight", 0): "token_embedding.weight has 49409 rows, not CLIP's BPE vocabulary of 49408",
    ("token_embedding.weight", 1): "text_heads (--text-heads) 2 does not divide the text width 33",
    ("text_projection", 1): f"'visual.proj' has shape (64, 24), {_OTHERS} (64, 25)",
    (
        "transformer.resblocks.0.mlp.c_fc.weight",
        0,
    ): f"'transformer.resblocks.0.mlp.c_fc.bias' has shape (128,), {_OTHERS} (129,)",
    ("visual.transformer.resblocks.0.mlp.c_fc.weight", 0): (
        f"'visual.transformer.resblocks.0.mlp.c_fc.bias' has shape (256,), {_OTHERS} (257,)"
    ),
}


def test_every_tensor_of_a_wrong_shape_is_refused_naming_its_key() -> None:
    """Each tensor in turn one longer along each of its dimensions: refused before the load, naming the key
    and its shape (a size source: the tensor or size that then disagrees, in `SIZE_SOURCES`). Not `logit_scale` (any one number) nor the rows of
    `positional_embedding` (they are the text context)."""
    state, _ = _state()
    for key, value in state.items():
        for dim in range(value.dim()):
            if key == "logit_scale" or (key, dim) == ("positional_embedding", 0):
                continue
            shape = list(value.shape)
            shape[dim] += 1
            damaged = torch.zeros(shape)
            expected = SIZE_SOURCES.get((key, dim), f"{key!r} has shape {tuple(shape)}")
            with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
                convert_openai_state_dict({**state, key: damaged}, text_heads=2)


# the sizes' sources with one dimension too few, and the layout each refusal names
LAYOUTS = {
    "visual.conv1.weight": "(vision width, 3, patch, patch)",
    "visual.positional_embedding": "(1 + grid * grid, vision width)",
    "token_embedding.weight": "(vocabulary, text width)",
    "positional_embedding": "(context, text width)",
    "text_projection": "(text width, embed dim)",
    "transformer.resblocks.0.mlp.c_fc.weight": "(MLP width, text width)",
    "visual.transformer.resblocks.0.mlp.c_fc.weight": "(MLP width, vision width)",
}


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_a_size_source_of_too_few_dimensions_is_refused_naming_its_layout(key: str) -> None:
    state, _ = _state()
    flat = state[key].flatten(0, 1)
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict({**state, key: flat}, text_heads=2)
    assert str(error.value) == f"{key!r} has shape {tuple(flat.shape)}; expected {LAYOUTS[key]}"


def test_text_heads_that_do_not_divide_the_width_are_refused_naming_the_text_tower() -> None:
    state, _ = _state()
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(state, text_heads=3)
    assert str(error.value) == "text_heads (--text-heads) 3 does not divide the text width 32"
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(state)  # width 32: no 64-wide heads
    assert str(error.value) == (
        "text width 32 is not a multiple of 64, so OpenAI's heads = width // 64 rule does not apply; "
        "pass text_heads (--text-heads)"
    )


def test_long_clip_tables_of_only_the_kept_20_positions_are_refused() -> None:
    """Long-CLIP keeps rows 0-19 of `positional_embedding` and reads `positional_embedding_res` from row 20
    on: a pair of 20-row tables has nothing to fold (the refusal asks for more than 20 positions)."""
    state, _ = _state()
    state = {**state, "positional_embedding": torch.randn(20, 32), "positional_embedding_res": torch.randn(20, 32)}
    with pytest.raises(ValueError, match=r"positional_embedding_res has shape \(20, 32\).*more than 20 positions"):
        convert_openai_state_dict(state, text_heads=2)


def test_one_given_head_per_tower_converts_and_matches_the_reference() -> None:
    state, reference = _state(text_heads=1)  # vision: 1 head by the width // 64 rule; text: 1 given
    config, weights = convert_openai_state_dict(state, text_heads=1, vision_heads=1)
    assert (config.text_config.num_attention_heads, config.vision_config.num_attention_heads) == (1, 1)
    model = CLIPModel(config).eval()
    model.load_state_dict(weights, strict=True)
    ids = torch.tensor([[49406, 320, 1929, 49407, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        features = model.get_text_features(input_ids=ids)  # transformers 5: an output whose pooler_output it is
        features = features if torch.is_tensor(features) else features.pooler_output
        torch.testing.assert_close(features, reference.encode_text(ids), rtol=0, atol=1e-5)


def test_a_non_square_image_position_table_is_refused() -> None:
    state, _ = _state()
    eighteen = torch.zeros(18, 64)  # 1 + 17 patches: no square grid
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict({**state, "visual.positional_embedding": eighteen}, text_heads=2)
    assert str(error.value) == "visual.positional_embedding must hold 1 + grid * grid positions for a square image"


def test_a_shape_mismatch_is_refused_in_the_documented_words() -> None:
    state, _ = _state()
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict({**state, "ln_final.bias": torch.zeros(33)}, text_heads=2)
    assert str(error.value) == (
        "'ln_final.bias' has shape (33,), but the sizes the checkpoint's other tensors give need (32,) "
        "(a damaged or mixed-up checkpoint)"
    )


def test_leftover_tensors_are_refused_naming_the_first_four() -> None:
    state, _ = _state()
    extra = {f"visual.attn_pool.{name}": torch.zeros(1) for name in "abcdef"}  # six with no place
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict({**state, **extra}, text_heads=2)
    names = [f"visual.attn_pool.{name}" for name in "abcd"]
    assert str(error.value) == (
        f"6 checkpoint tensors have no place in a transformers CLIPModel, e.g. {names}; "
        "only OpenAI-layout ViT CLIP models are supported (not ResNet towers, attention-pooled or "
        "SigLIP-style open_clip variants)"
    )


def test_the_converted_text_config_has_clips_special_token_ids() -> None:
    """bos <|startoftext|> 49406, eos and pad <|endoftext|> 49407: the ids of the tokenizer the converted
    folder gets (clip_tokenizer(): pad <|endoftext|>), counted by hand from the 49408-token vocabulary."""
    state, _ = _state()
    config, _ = convert_openai_state_dict(state, text_heads=2)
    text = config.text_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id, text.vocab_size) == (49406, 49407, 49407, 49408)


def test_the_converted_image_tower_loads_as_a_projection_model() -> None:
    """CLIPVisionModelWithProjection (an IP-Adapter image encoder) is built from `config.vision_config` alone:
    its projection must be the checkpoint's embed dim, and its image_embeds OpenAI's encode_image."""
    from transformers import CLIPVisionModelWithProjection

    state, reference = _state()
    config, weights = convert_openai_state_dict(state, text_heads=2)
    vision = CLIPVisionModelWithProjection(config.vision_config).eval()
    vision.load_state_dict(
        {key: value for key, value in weights.items() if key.startswith(("vision_model.", "visual_projection."))},
        strict=True,
    )
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            vision(pixel_values=pixels).image_embeds, reference.encode_image(pixels), rtol=0, atol=1e-5
        )


def test_another_vocabulary_is_refused_with_the_whole_reason() -> None:
    state, _ = _state()
    other = {**state, "token_embedding.weight": state["token_embedding.weight"][:1000]}
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(other, text_heads=2)
    assert str(error.value) == (
        "token_embedding.weight has 1000 rows, not CLIP's BPE vocabulary of 49408: this text tower reads another "
        "tokenizer (as open_clip's *-worldwide and CLIPA models do) and pools at its own end token, while the "
        "converted folder gets CLIP's tokenizer and pools at <|endoftext|>; only CLIP-BPE text towers convert"
    )


@pytest.mark.parametrize("heads", [2.0, True, "2", [2]])
@pytest.mark.parametrize("tower", ["text", "vision"])
def test_heads_that_are_no_int_are_a_type_error_naming_the_argument(tower: str, heads) -> None:
    """A float, bool, str or list of heads: a TypeError naming the argument (not transformers' config
    validation error from deep inside, which is neither a TypeError nor a ValueError)."""
    state, _ = _state()
    given = {"text_heads": 2, "vision_heads": 1, f"{tower}_heads": heads}
    with pytest.raises(TypeError) as error:
        convert_openai_state_dict(state, **given)
    assert str(error.value) == (f"{tower}_heads must be an int (attention heads of the {tower} tower), got {heads!r}")


def test_numpy_integer_heads_read_as_the_ints_they_hold() -> None:
    import numpy as np

    state, _ = _state()
    config, _ = convert_openai_state_dict(state, text_heads=np.int64(2), vision_heads=np.int32(1))
    text, vision = config.text_config.num_attention_heads, config.vision_config.num_attention_heads
    assert (text, vision) == (2, 1) and type(text) is int and type(vision) is int


def test_a_lone_text_tower_saved_by_transformers_gets_the_hint(tmp_path) -> None:
    """The weights file of a CLIPTextModel that transformers itself saved (an SD folder's
    text_encoder/model.safetensors: keys without a `text_model.` prefix in transformers 5)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    CLIPTextModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(load_file(tmp_path / "model.safetensors"))
    assert str(error.value).endswith(" (this already is a transformers CLIPModel state dict)"), str(error.value)


@pytest.mark.parametrize("tower", ["transformer", "visual.transformer"])
def test_a_block_without_its_mlp_is_refused_naming_the_tensor(tower: str) -> None:
    """The MLP width is read from block 0's `mlp.c_fc.weight`: without it the key is named
    (found by mutation testing: `x__shape_reader__mutmut_2`, the key dropped from the message)."""
    state, _ = _state()
    key = f"{tower}.resblocks.0.mlp.c_fc.weight"
    del state[key]
    with pytest.raises(ValueError) as error:
        convert_openai_state_dict(state, text_heads=2)
    assert str(error.value) == f"missing {key!r}, which every OpenAI-layout ViT CLIP has"


def test_keys_that_carry_no_weights_are_skipped_wherever_they_stand() -> None:
    """OpenAI's checkpoints hold `input_resolution`, `context_length`, `vocab_size` and the text
    mask `attn_mask` beside the weights: skipped first in the order as last, the conversion is
    the same (found by mutation testing: `x__openai_keys__mutmut_11`, `break` for `continue`)."""
    state, _ = _state()
    skipped_first = {"attn_mask": torch.zeros(3, 3), "context_length": torch.tensor(77), **state}
    config, expected = convert_openai_state_dict(state, text_heads=2)
    got_config, got = convert_openai_state_dict(skipped_first, text_heads=2)
    assert got_config.to_dict() == config.to_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[key], expected[key]) for key in expected)
