"""SDXL step callbacks and decoding, against diffusers' SDXL pipelines and clipcond's own.

- `TextConditioner.pipeline_kwargs` prompt editing across diffusers' base (`denoising_end`) +
  refiner (`denoising_start`) hand-off, given the whole schedule's `num_inference_steps` on both
  sides: each step reads what one model running the whole schedule reads, as clipcond's own
  pipelines do on the same hand-off. Which text a step reads is recorded by a UNet forward
  pre-hook matching the step's prompt row against each candidate text's embeddings.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from tiny_pipelines import build_sdxl

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedPipeline, TextConditioner

STEPS = 8
COLOURS = ("red", "blue")


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    """(diffusers' SDXL base, diffusers' SDXL img2img on the same modules, ours of each, the
    conditioner of the base)."""
    base = quiet(StableDiffusionXLPipeline(**dict(build_sdxl().components), add_watermarker=False))
    refiner = quiet(StableDiffusionXLImg2ImgPipeline(**base.components))
    ours = quiet(CLIPConditionedPipeline.from_pipe(base))
    ours_refiner = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(ours))
    return base, refiner, ours, ours_refiner, TextConditioner.from_pipeline(base)


def read(pipe, cond, with_kwargs: bool, prompt: str, **kwargs) -> tuple[list[str], torch.Tensor]:
    """(the colour of "a <colour> circle" each UNet call's prompt row reads, "?" for none; the
    output latents). `with_kwargs`: the prompt goes through `cond.pipeline_kwargs(prompt,
    num_inference_steps=STEPS)` (diffusers' pipelines); else as `prompt` (ours)."""
    texts = {colour: cond.pipeline_kwargs(f"a {colour} circle")["prompt_embeds"] for colour in COLOURS}
    seen: list[str] = []

    def hook(module, args, hook_kwargs):
        row = hook_kwargs["encoder_hidden_states"][-1:]  # the prompt's row (after the negative's)
        seen.append(next((colour for colour, tokens in texts.items() if torch.equal(row, tokens)), "?"))

    given = cond.pipeline_kwargs(prompt, num_inference_steps=STEPS) if with_kwargs else {"prompt": prompt}
    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        latents = pipe(
            **given,
            num_inference_steps=STEPS,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        ).images
    finally:
        handle.remove()
    return seen, latents


def hand_off(base, refiner, cond, with_kwargs: bool, prompt: str, split: float) -> list[str]:
    """The colours the base reads up to `split`, then the refiner from there."""
    first, latents = read(base, cond, with_kwargs, prompt, denoising_end=split)
    second, _ = read(refiner, cond, with_kwargs, prompt, image=latents, denoising_start=split)
    return first + second


@pytest.mark.parametrize(
    "prompt, split",
    [("a [red:blue:0.5] circle", 0.5), ("a [red:blue:0.5] circle", 0.3), ("a [red|blue] circle", 0.3)],
)
def test_pipeline_kwargs_with_the_whole_schedule_reads_one_models_texts_across_the_hand_off(sdxl, prompt, split):
    base, refiner, ours, _, cond = sdxl
    one_model, _ = read(ours, cond, False, prompt)
    assert "?" not in one_model and len(set(one_model)) == 2  # the edit switches within the schedule
    if prompt == "a [red:blue:0.5] circle":  # A1111's rule: step i reads red while i <= int(0.5 x 8)
        assert one_model == ["red"] * 5 + ["blue"] * 3
    assert hand_off(base, refiner, cond, True, prompt, split) == one_model


def test_pipeline_kwargs_given_the_steps_one_side_runs_is_refused_with_the_whole_schedule_named(sdxl):
    base, refiner, _, _, cond = sdxl
    prompt = "a [red:blue:0.5] circle"
    kwargs = cond.pipeline_kwargs(prompt, num_inference_steps=4)  # the steps each side runs at split 0.5
    settings = dict(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"schedule has 8 denoising steps \(`denoising_end` 0.5.*give `pipeline_kw"):
        base(**kwargs, **settings, denoising_end=0.5)
    image = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"schedule has 8 denoising steps \(`denoising_start` 0.5.*whole schedule"):
        refiner(**kwargs, **settings, image=image, denoising_start=0.5)


def test_a_refiner_whose_first_step_reads_another_text_than_step_0_is_refused(sdxl):
    """`pipeline_kwargs` gives step 0's embeddings and a callback runs only after a step: a
    refiner starting where the text differs from step 0's cannot read the right one there."""
    base, refiner, ours, ours_refiner, cond = sdxl
    prompt = "a [blue:red:0.25] circle"  # step 4, where the refiner starts at 0.5, reads red
    seen, latents = read(base, cond, True, prompt, denoising_end=0.5)
    assert seen == ["blue"] * 3 + ["red"]
    with pytest.raises(ValueError, match="starts at step 4 of the prompt's 8.*'a red circle', where step 0 reads"):
        read(refiner, cond, True, prompt, image=latents, denoising_start=0.5)
    # clipcond's own refiner starts on step 4's text: the pair reads what one model reads
    assert hand_off(ours, ours_refiner, cond, False, prompt, 0.5) == read(ours, cond, False, prompt)[0]
