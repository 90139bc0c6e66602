"""`check_sdxl_components` and `check_added_width` called directly on stand-in UNets (a config and
an `add_embedding.linear_1` of some width): whether the UNet is a refiner is read from the room its
added embedding has for time ids, and each refusal's whole message, with the hint that says which
`requires_aesthetics_score` fits (found unguarded by mutation testing of sdxl_components.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tiny_pipelines import _small_vae

from clipcond.pipelines.sdxl_components import (
    check_added_width,
    check_sdxl_components,
    components_saved_as_none,
    decode_latents,
    resolve_recipe,
)

PER_ID = 8  # addition_time_embed_dim
POOLED = 32  # the second CLIP's projection_dim


def _unet(inputs: int) -> SimpleNamespace:
    config = SimpleNamespace(addition_time_embed_dim=PER_ID, get=lambda key, default=None: None)
    return SimpleNamespace(config=config, add_embedding=SimpleNamespace(linear_1=SimpleNamespace(in_features=inputs)))


class CLIPTextModelWithProjection:  # the check reads the class name and `config.projection_dim`
    config = SimpleNamespace(projection_dim=POOLED)


ENCODER = CLIPTextModelWithProjection()


@pytest.mark.parametrize("ids, refiner", [(6, False), (5, True)], ids=["base", "refiner"])
def test_the_number_of_time_ids_the_unet_has_room_for_says_refiner_or_base(ids, refiner) -> None:
    assert check_sdxl_components(_unet(ids * PER_ID + POOLED), None, ENCODER, None) is refiner
    assert check_sdxl_components(_unet(ids * PER_ID + POOLED), ENCODER, ENCODER, refiner) is refiner


@pytest.mark.parametrize(
    "given, fits", [(True, False), (False, True)], ids=["refiner_flag_on_base", "base_flag_on_refiner"]
)
def test_the_other_setting_is_named_when_it_would_fit(given, fits) -> None:
    ids, other = (5, 6) if given else (6, 5)
    inputs = other * PER_ID + POOLED
    with pytest.raises(ValueError) as refusal:
        check_added_width(_unet(inputs), POOLED, requires_aesthetics_score=given)
    assert str(refusal.value) == (
        f"the UNet's added embedding takes {inputs} inputs (unet.add_embedding.linear_1.in_features), but {ids} time "
        f"ids x addition_time_embed_dim {PER_ID} + the pooled text width {POOLED} = {ids * PER_ID + POOLED}; this "
        f"UNet reads {other} time ids: pass requires_aesthetics_score={fits}"
    )


def test_a_width_no_setting_fits_is_refused_pointing_at_both_widths() -> None:
    """7 ids' room: neither 5 nor 6 fits. A room that is no whole number of ids (43 inputs past
    the pooled width) is no refiner either: checked as a base model, 6 ids."""
    for inputs in (7 * PER_ID + POOLED, 5 * PER_ID + 3 + POOLED):
        with pytest.raises(ValueError) as refusal:
            check_sdxl_components(_unet(inputs), ENCODER, ENCODER, None)
        assert str(refusal.value) == (
            f"the UNet's added embedding takes {inputs} inputs (unet.add_embedding.linear_1.in_features), but 6 "
            f"time ids x addition_time_embed_dim {PER_ID} + the pooled text width {POOLED} = {6 * PER_ID + POOLED}; "
            "check `unet.config.addition_time_embed_dim` and `text_encoder_2.config.projection_dim`"
        )


def test_a_first_clip_without_the_second_is_refused_in_full() -> None:
    with pytest.raises(ValueError) as refusal:
        check_sdxl_components(_unet(6 * PER_ID + POOLED), ENCODER, None, None)
    assert str(refusal.value) == (
        "an SDXL UNet needs two CLIP text encoders (or `text_encoder_2` alone, as the refiner): got `text_encoder` "
        "but no `text_encoder_2` (a CLIPTextModelWithProjection) for the pooled embedding"
    )


def test_a_recipe_that_does_not_fit_the_unet_is_refused_in_full() -> None:
    with pytest.raises(ValueError) as refusal:
        resolve_recipe("sd3", None, None)
    assert str(refusal.value) == "`recipe` must be 'sd', 'sdxl' or 'custom' (rows of clipcond.families), got 'sd3'"
    text_unet = SimpleNamespace(config={"addition_embed_type": "text"})  # Kandinsky-style added text embedding
    with pytest.raises(ValueError) as refusal:
        resolve_recipe("sdxl", text_unet, None)
    assert str(refusal.value) == (
        "`recipe` 'sdxl' needs an SDXL-class UNet (addition_embed_type 'text_time'); this UNet's addition_embed_type "
        "is 'text': use recipe 'sd' or 'custom'"
    )


def test_a_second_clip_of_another_class_and_a_flag_of_another_kind_are_refused_in_full() -> None:
    """(found by mutation testing: `x_check_sdxl_components__mutmut_4`, `_14`, the messages)."""
    with pytest.raises(TypeError) as refusal:
        check_sdxl_components(_unet(6 * PER_ID + POOLED), ENCODER, SimpleNamespace(), None)
    assert str(refusal.value) == (
        "an SDXL UNet reads the pooled, projected text of its second CLIP: `text_encoder_2` must be a "
        "CLIPTextModelWithProjection, got SimpleNamespace"
    )
    with pytest.raises(TypeError) as refusal:
        check_sdxl_components(_unet(6 * PER_ID + POOLED), ENCODER, ENCODER, "yes")
    assert str(refusal.value) == "`requires_aesthetics_score` must be a bool or None, got 'yes'"


@pytest.mark.parametrize("flag", [True, False, None])
def test_without_a_unet_the_flag_is_what_was_given(flag) -> None:
    """A pipeline without a UNet (only `encode_prompt` is called on it) keeps the flag it was
    given, False for None (found by mutation testing: `x_check_sdxl_components__mutmut_28`)."""
    assert check_sdxl_components(None, ENCODER, ENCODER, flag) is bool(flag)


def test_a_vae_with_a_latents_mean_and_no_std_decodes_by_its_scaling_factor_alone() -> None:
    """As StableDiffusionXLPipeline: the statistics apply only when the VAE has both (found by
    mutation testing: `x_decode_latents__mutmut_14`, `or` for `and`)."""

    vae = _small_vae(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = vae.decode(latents / 0.5, return_dict=False)[0]
    assert torch.equal(decode_latents(vae, latents), expected)


def test_without_a_unet_the_second_encoder_says_the_recipe() -> None:
    """A pipeline without a UNet (for `encode_prompt`): a second CLIP with a projection makes it
    SDXL, anything else SD (found by mutation testing: `x_resolve_recipe__mutmut_9`, `_15`, `_16`)."""
    assert resolve_recipe(None, None, ENCODER) == "sdxl"
    assert resolve_recipe(None, None, None) == "sd"
    assert resolve_recipe(None, None, SimpleNamespace()) == "sd"


def test_a_hub_ids_index_is_read_with_the_callers_lookup_options(tmp_path) -> None:
    """A refiner saved on the hub, read offline from the cache folder the caller names
    (`cache_dir`, `local_files_only`, as `from_pretrained` passes them on; found by mutation
    testing: `x_components_saved_as_none__mutmut_6`, the options dropped)."""

    commit = "0" * 40
    repository = tmp_path / "models--someone--tiny-refiner"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(commit)
    snapshot = repository / "snapshots" / commit
    snapshot.mkdir(parents=True)
    index = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "tokenizer": [None, None]}
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (snapshot / "model_index.json").write_text(json.dumps(index))
    lookup = {"cache_dir": str(tmp_path), "local_files_only": True, "torch_dtype": "ignored"}
    names = ("text_encoder", "tokenizer", "unet")
    assert components_saved_as_none("someone/tiny-refiner", names, lookup) == ["text_encoder", "tokenizer"]
