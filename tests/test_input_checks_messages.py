"""`CallInputChecks` on stand-ins (the attributes each check reads, no model), where the mutation
run of pipelines/input_checks.py (benchmarks/results/mutation.md) found it unguarded: the whole
message of refusals whose tests matched only a word of them, the SDXL advice of
`check_vae_decodes`, every output type diffusers takes, no CLIP window where a T5 adds its
tokens, the image sizes; and three inputs that failed inside torch, after the checks (pooled
embeddings of two widths, `prompt_embeds` without rows, a 0-d schedule). Milliseconds each."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from clipcond.pipelines.input_checks import CallInputChecks, image_size_fits, image_size_rule


class StandIn(CallInputChecks):
    """What `check_inputs` reads of a pipeline: its recipe and config (`config`: the keys
    `config.get` finds), components as given, no UNet to read widths from."""

    vae_scale_factor = 8
    unet = None

    def __init__(self, recipe: str = "sd", config: dict | None = None, **components) -> None:
        values = {"recipe": recipe, **(config or {})}
        self.config = SimpleNamespace(**values, get=lambda key, default=None: values.get(key, default))
        for name, value in components.items():
            setattr(self, name, value)

    def _guides(self, guidance_scale) -> bool:
        return guidance_scale > 1


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_every_output_type_of_diffusers_is_taken(output_type) -> None:
    assert StandIn().check_inputs("a", None, None, None, 64, 64, 7.5, 1, None, output_type) == 1


def test_text_without_any_encoder_names_every_missing_component_and_what_to_pass() -> None:
    expected = (
        "`prompt` is text, but this pipeline has no `text_encoder`, `tokenizer`, `text_encoder_2`, `tokenizer_2` "
        "to encode it; pass `prompt_embeds` (and `negative_prompt_embeds` under guidance) instead"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        StandIn("sdxl").check_text_encoders(True, True)


@pytest.mark.parametrize(
    "kwargs, error, expected",
    [
        (
            dict(prompt="a", negative_prompt="b", negative_prompt_embeds=torch.zeros(1, 77, 8)),
            ValueError,
            "give at most one of `negative_prompt` and `negative_prompt_embeds`",
        ),
        (
            dict(prompt="a", negative_prompt_embeds=torch.zeros(77, 8)),
            TypeError,
            "`negative_prompt_embeds` must be a (batch, seq, width) tensor",
        ),
    ],
    ids=["negative_text_and_embeds", "negative_embeds_2d"],
)
def test_negative_prompt_refusals_in_full(kwargs, error, expected) -> None:
    arguments = dict(prompt=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None) | kwargs
    with pytest.raises(error, match=f"^{re.escape(expected)}$"):
        StandIn().check_prompt_inputs(**arguments)


def test_a_half_vae_beside_sdxl_is_also_told_about_force_upcast() -> None:
    pipe = StandIn(
        "sdxl",
        vae=SimpleNamespace(dtype=torch.float16, config={"force_upcast": False}),
        unet=SimpleNamespace(dtype=torch.float32),
        reads_time_ids=True,
    )
    with pytest.raises(
        ValueError, match=re.escape(", or give the VAE `force_upcast=True` (SDXL then decodes it in float32)")
    ):
        pipe.check_vae_decodes("np")


def test_no_clip_window_where_a_t5_adds_its_own_tokens() -> None:
    """Recipe 'custom' with a T5 `text_encoder_2`: encoded text is no whole number of CLIP
    windows, so the window-length check of `prompt_embeds` beside a text negative is off."""
    assert StandIn("custom", text_encoder=object(), tokenizer=object(), text_encoder_2=object())._clip_window() is None


@pytest.mark.parametrize("negative", [3, ["b", 3]], ids=["not_text", "a_list_with_a_number"])
def test_a_negative_prompt_that_is_no_text_is_named(negative) -> None:
    with pytest.raises(TypeError, match=r"^`negative_prompt` must"):
        StandIn().check_prompt_inputs(["a", "b"], negative, None, None)


class WindowedStandIn(StandIn):
    def _clip_window(self) -> int:
        return 77


@pytest.mark.parametrize(
    "negative, named",
    [("b", "and the negative prompt would be encoded"), (None, 'and the missing negative prompt (read as "") would')],
    ids=["text", "missing"],
)
def test_short_prompt_embeds_beside_a_text_negative_name_which_negative(negative, named) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not a whole number of 77-token CLIP windows, {named}")):
        WindowedStandIn().check_negative_length(torch.zeros(1, 50, 8), negative, None, True)


@pytest.mark.parametrize("factor", [1, 2, 8])
def test_one_latent_cell_is_the_smallest_image(factor) -> None:
    assert image_size_fits(factor, factor)
    assert not image_size_fits(factor - 1, factor) or factor == 1 and not image_size_fits(0, factor)


@pytest.mark.parametrize(
    "value, fits", [(8, True), (16, True), (1024, True), (12, False), (4, False), (0, False), (-8, False)]
)
def test_sizes_fit_where_diffusers_takes_them(value, fits) -> None:
    assert image_size_fits(value, 8) is fits


@pytest.mark.parametrize("value", [True, 8.0, "8", None])
def test_only_an_int_is_a_size(value) -> None:
    assert not image_size_fits(value, 1)


def test_the_rule_in_words_names_the_factor_or_says_any_positive_int() -> None:
    assert image_size_rule(1) == "a positive int"
    assert image_size_rule(8) == "a positive multiple of 8 (the VAE's scale factor)"


def sdxl_stand_in() -> SimpleNamespace:
    return SimpleNamespace(reads_time_ids=True, config=SimpleNamespace(recipe="sdxl"))


@pytest.mark.parametrize("odd", ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"])
def test_pooled_embeddings_of_two_widths_are_refused_by_name(odd) -> None:
    tokens = torch.zeros(1, 77, 64)
    pooled = {"pooled_prompt_embeds": torch.zeros(1, 32), "negative_pooled_prompt_embeds": torch.zeros(1, 32)}
    pooled[odd] = torch.zeros(1, 35)
    with pytest.raises(ValueError) as refusal:  # diffusers fails in torch.cat
        CallInputChecks.check_pooled_inputs(sdxl_stand_in(), tokens, tokens, *pooled.values())
    negative, positive = pooled["negative_pooled_prompt_embeds"], pooled["pooled_prompt_embeds"]
    assert str(refusal.value) == (
        f"`negative_pooled_prompt_embeds` {tuple(negative.shape)} must have `pooled_prompt_embeds`' shape "
        f"{tuple(positive.shape)}"
    )


def test_prompt_embeds_without_rows_are_refused_as_an_empty_prompt_list_is() -> None:
    """`prompt=[]` is refused; no rows of embeddings reached the UNet, which failed in its attention."""
    with pytest.raises(ValueError) as refusal:
        CallInputChecks.check_prompt_inputs(SimpleNamespace(), None, None, torch.zeros(0, 77, 32), None)
    assert str(refusal.value) == "`prompt_embeds` has no rows; give one row per prompt"


@pytest.mark.parametrize("name", ["timesteps", "sigmas"])
def test_a_0d_tensor_is_no_schedule(name) -> None:
    """A 0-d tensor has `__len__` but no length: torch's "len() of a 0-d tensor" named nothing."""
    schedule = {"timesteps": None, "sigmas": None, name: torch.tensor(500.0)}
    with pytest.raises(ValueError) as refusal:
        CallInputChecks.check_sampling_inputs(
            SimpleNamespace(), None, schedule["timesteps"], schedule["sigmas"], 0.0, None, None, []
        )
    assert str(refusal.value) == f"`{name}` must be a non-empty list of numbers, got tensor(500.)"
