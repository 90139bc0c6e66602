"""`pipelines/composable.py`, the plan of a call that edits, alternates or has AND: its
`fixed_prompt_arguments` called directly (which texts a call that starts partway into its
schedule, SDXL's `denoising_start`, reads as one fixed text, written out by hand from A1111's
rule: step s of n reads the edit's second text once s >= when x n), and the pipeline's images
and encoder calls where the plan has a reference that does not build one (diffusers' image of a
plain prompt, a one-image call, the same call without an argument that must change nothing).
Each test names the mutants it was written for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lora_pipeline import pair, saved_lora
from tiny_pipelines import build_sd, build_sdxl, sd_components

from clipcond import CLIPConditionedPipeline
from clipcond.pipelines.composable import EditSteps, fixed_prompt_arguments


def _ours(build) -> CLIPConditionedPipeline:
    """Our pipeline on a fresh tiny family pipeline's components (nothing cached yet), quiet."""
    pipe = CLIPConditionedPipeline.from_pipe(build())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_edit_done_before_the_first_step_the_call_runs_is_that_text() -> None:
    """`[cat:dog:0.25]` of 8 steps switches after step 1: a refiner from step 4 on reads
    "a dog" at every step, so its prompt is that text (found by mutation testing:
    `x__fixed_text__mutmut_12`, every text kept as written)."""
    steps = EditSteps(total=8, first=4)
    prompt, negative, second = fixed_prompt_arguments(steps, "a [cat:dog:0.25]", "[blurry:sharp:0.25]", "b [x:y:0.25]")
    assert (prompt, second) == ("a dog", "b y")
    assert negative == "sharp"  # a negative is read whole, and fixed the same way


def test_an_edit_still_to_come_and_and_prompts_are_kept_as_written() -> None:
    steps = EditSteps(total=8, first=4)
    later = "a [cat:dog:0.75]"  # switches after step 5: inside the steps the call runs
    parts = "a [cat:dog:0.25] AND a bird"  # each AND part is scheduled on its own
    assert fixed_prompt_arguments(steps, [later, parts], None) == ([later, parts], None)


def test_a_negative_with_and_is_read_whole_and_fixed_from_the_first_step() -> None:
    """In a negative prompt AND is text (A1111 reads negatives whole): a call from step 0 fixes
    `[blurry:sharp:0] AND dark` to "sharp AND dark", where a prompt's AND parts are each
    scheduled and kept as written (found by mutation testing: `x__fixed_text__mutmut_5`, `_8`,
    the negative flag dropped)."""
    steps = EditSteps(total=4, first=0)
    edited = "[blurry:sharp:0] AND dark"
    assert fixed_prompt_arguments(steps, edited, edited) == (edited, "sharp AND dark")


def test_a_negative_list_with_and_is_read_whole_in_a_call_that_starts_partway() -> None:
    """The same in a list, from step 4 of 8 (found by mutation testing:
    `x_fixed_prompt_arguments__mutmut_12`, a list's texts read as prompts)."""
    steps = EditSteps(total=8, first=4)
    edited = "[blurry:sharp:0.25] AND dark"
    assert fixed_prompt_arguments(steps, [edited], [edited, "plain"]) == ([edited], ["sharp AND dark", "plain"])


def test_a_negative_prompt_list_beside_and_is_read_as_its_text() -> None:
    """`negative_prompt=["dark"]` beside an AND prompt gives the image of `negative_prompt="dark"`
    (found by mutation testing: `x_plan_for_call__mutmut_19`, the list replaced by the argument's
    name as text); a negative list of another length is refused naming `negative_prompt`."""
    pipe = CLIPConditionedPipeline(**sd_components())
    pipe.set_progress_bar_config(disable=True)

    def image(negative):
        return pipe(
            "a red circle AND a blue square",
            negative_prompt=negative,
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    assert np.array_equal(image(["dark"]), image("dark"))
    with pytest.raises(ValueError, match="negative_prompt"):
        image(["dark", "ugly"])


def test_and_with_two_images_per_prompt_gives_each_image_its_own_run() -> None:
    """Two AND prompts, `num_images_per_prompt=2`, one generator per image: each image is the
    image a one-image call of its prompt with its generator makes (the parts' rows of each image
    read that image's latents; found by mutation testing: `x_build_plan__mutmut_50`, `_53`,
    `- copy` for `+ copy`, and `_54`, `prompt_index / n`, which only a second prompt shows)."""
    pipe = CLIPConditionedPipeline(**sd_components())
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle :1.2 AND a blue square :0.8", "a green star AND a grey sky :0.5"]
    settings = dict(negative_prompt="dark", num_inference_steps=2, height=32, width=32, output_type="np")
    seeds = [0, 1, 2, 3]  # images 0, 1 of the first prompt, then 0, 1 of the second
    batch = pipe(
        prompts, **settings, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in seeds]
    )
    for index, seed in enumerate(seeds):
        alone = pipe(prompts[index // 2], **settings, generator=torch.Generator().manual_seed(seed)).images[0]
        np.testing.assert_allclose(batch.images[index], alone, rtol=0, atol=1e-5)  # a batch vs 1: 1.8e-7 here


def _encoded_rows(pipe, **call) -> list[int]:
    """The rows each text-encoder forward of the call took, for every CLIP of the pipeline."""
    rows: list[int] = []
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]

    def count(module, args, kwargs) -> None:
        rows.append(len(kwargs["input_ids"] if "input_ids" in kwargs else args[0]))

    hooks = [encoder.register_forward_pre_hook(count, with_kwargs=True) for encoder in encoders if encoder is not None]
    try:
        pipe(**call, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def test_without_guidance_an_edited_calls_negatives_are_not_encoded() -> None:
    """`guidance_scale=1` reads no unconditional rows, and diffusers' `encode_prompt` then
    encodes no negative: neither does the plan of an edited prompt, on SD nor on SDXL with
    `negative_prompt_2` (found by mutation testing: `x_build_plan__mutmut_20`, `_21`, `_35`,
    the negatives scheduled and encoded, never read). Each call on a pipeline of its own:
    nothing in its embedding cache yet."""
    for build, negatives in [(build_sd, {}), (build_sdxl, {"negative_prompt_2": "grey"})]:
        call = dict(prompt="a [red:blue:0.5] circle", guidance_scale=1.0)
        alone = _encoded_rows(_ours(build), **call)
        assert alone and _encoded_rows(_ours(build), **call, negative_prompt="dark", **negatives) == alone


def test_one_text_twice_at_half_weight_is_that_text_once_with_guidance_rescale() -> None:
    """`a red circle :0.5 AND a red circle :0.5` composes to uncond + g (cond - uncond), the
    guided prediction of the plain prompt, and its text-only prediction (what
    `guidance_rescale` reads) to cond: the image equals StableDiffusionPipeline's of "a red
    circle" with `guidance_rescale`, to 1.5e-7 here (found by mutation testing:
    `xǁDenoisingPlanǁcombine__mutmut_51`, the text-only prediction divided by the weights:
    8.5e-3 apart)."""
    peer, ours = pair()
    settings = dict(negative_prompt="dark", num_inference_steps=3, guidance_rescale=0.7, output_type="np")
    plain = peer("a red circle", **settings, generator=torch.Generator().manual_seed(0)).images
    halves = ours("a red circle :0.5 AND a red circle :0.5", **settings, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(halves.images, plain, rtol=0, atol=1e-5)


def test_negative_embeddings_beside_an_edited_prompt_are_refused_saying_what_to_give() -> None:
    """(found by mutation testing: `x_plan_for_call__mutmut_55`, `_56`, `_58`, `_59`, the
    message's words)."""
    pipe = _ours(build_sd)
    negative = torch.zeros(1, 77, pipe.text_encoder.config.hidden_size)
    message = (
        r"^`negative_prompt_embeds` cannot go with a prompt that edits, alternates or has AND: give "
        r"`negative_prompt` as text$"
    )
    for prompt in ("a [red:blue:0.5] circle", "a red circle AND a blue square"):
        with pytest.raises(ValueError, match=message):
            pipe(prompt, negative_prompt_embeds=negative, num_inference_steps=2, output_type="latent")


def test_an_and_prompt_reads_a_text_encoder_lora_at_the_calls_scale(tmp_path) -> None:
    """`cross_attention_kwargs={"scale": 0.5}` sets a text-encoder LoRA's scale for the parts'
    encoding too: one text twice at half weight equals StableDiffusionPipeline's image of it
    with the same LoRA at the same scale (found by mutation testing:
    `x_plan_for_call__mutmut_67`, the plan encoded at the LoRA's full scale)."""
    peer, ours = pair()
    lora = saved_lora(tmp_path / "lora")
    settings = dict(num_inference_steps=2, cross_attention_kwargs={"scale": 0.5}, output_type="np")
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora)
    plain = peer("a red circle", **settings, generator=torch.Generator().manual_seed(0)).images
    halves = ours("a red circle :0.5 AND a red circle :0.5", **settings, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(halves.images, plain, rtol=0, atol=1e-5)


def test_a_plan_gives_a_bfloat16_unet_rows_in_its_dtype_from_a_float32_text_encoder() -> None:
    """Text encoder in float32, UNet in bfloat16: the plan's rows are cast to the UNet's dtype
    as the plain path casts them, and one text twice at half weight is the plain prompt's
    image to bfloat16's precision (equal here; found by mutation testing: `xǁDenoisingPlanǁrows__mutmut_30`,
    `_32`, the rows left in float32)."""
    pipe = _ours(build_sd)
    pipe.unet.to(torch.bfloat16)
    pipe.vae.to(torch.bfloat16)
    settings = dict(num_inference_steps=2, output_type="latent")
    plain = pipe("a red circle", **settings, generator=torch.Generator().manual_seed(0)).images
    halves = pipe("a red circle :0.5 AND a red circle :0.5", **settings, generator=torch.Generator().manual_seed(0))
    assert halves.images.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(halves.images, plain, rtol=0, atol=1e-2)


def test_without_guidance_an_sdxl_plan_gives_every_row_the_prompts_time_ids() -> None:
    """`guidance_scale=1`: no unconditional rows, so negative sizes change nothing, as in
    diffusers (found by mutation testing: `xǁDenoisingPlanǁunconditional_rows__mutmut_2`, `_5`,
    a row counted unconditional that the plan does not have)."""
    pipe = _ours(build_sdxl)
    call = dict(prompt="a [red:blue:0.5] circle", guidance_scale=1.0, num_inference_steps=2, output_type="latent")
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    sizes = dict(negative_original_size=(16, 16), negative_target_size=(16, 16), negative_crops_coords_top_left=(4, 4))
    assert torch.equal(pipe(**call, **sizes, generator=torch.Generator().manual_seed(0)).images, plain)


def test_and_weights_are_read_in_double_precision_for_a_float64_unet() -> None:
    """0.1 + 0.9 is 1 in float64, not in float32: in a float64 pipeline one text at weights 0.1
    and 0.9 is the plain prompt's latents to float64's rounding (1.8e-15 here), which weights
    kept in float32 miss by 1.3e-7 (found by mutation testing: `x_build_plan__mutmut_83`,
    `_85`, the weights' float64 dropped)."""
    pipe = _ours(build_sd).to(torch.float64)
    settings = dict(negative_prompt="dark", num_inference_steps=2, output_type="latent")
    plain = pipe("a red circle", **settings, generator=torch.Generator().manual_seed(0)).images
    parts = pipe("a red circle :0.1 AND a red circle :0.9", **settings, generator=torch.Generator().manual_seed(0))
    assert parts.images.dtype == torch.float64
    torch.testing.assert_close(parts.images, plain, rtol=0, atol=1e-12)
