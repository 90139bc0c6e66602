"""Prompt editing where the denoising loop is not one call per step: PNDM's warm-up call (Stable
Diffusion 1.5's scheduler), SD3's skip-layer guidance pass, and what Flux and PixArt accept.
Each run is compared with diffusers fed, call by call, the embeddings diffusers' own
`encode_prompt` makes of the texts written out here for that call."""

from __future__ import annotations

import pytest
import torch

from clipcond import CLIPConditionedPipeline, TextConditioner

RED, BLUE = "a red circle", "a blue circle"


def _generator():
    return torch.Generator().manual_seed(0)


def _sd15_pndm():
    """PNDM as `stable-diffusion-v1-5/scheduler/scheduler_config.json` sets it (PLMS, no PRK;
    its `clip_sample` is not a PNDM argument):
    N steps are N + 1 UNet calls, the first timestep twice (step 0's warm-up)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def _sd_context(pipe, text, negative="blurry"):
    """(2, seq, width): diffusers' encode_prompt of `text` under guidance, negative first."""
    with torch.no_grad():
        positive, negative_embeds = pipe.encode_prompt(text, "cpu", 1, True, negative)
    return torch.cat([negative_embeds, positive])


def _unet_fed_per_call(pipe, contexts, **call):
    """`pipe(**call)` (diffusers) with the UNet's k-th call given `contexts[k]`; also returns
    how many calls it made."""
    made = []

    def hook(module, args, kwargs):
        kwargs["encoder_hidden_states"] = contexts[len(made)]
        made.append(True)
        return args, kwargs

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        images = pipe(prompt_embeds=contexts[0][1:], negative_prompt_embeds=contexts[0][:1], **call).images
    finally:
        handle.remove()
    return images, len(made)


# (prompt, steps, the text of each UNet call). A1111's per-step texts are written out first;
# under PNDM step 0 makes two calls (diffusers' warm-up; A1111's PLMS counts both as its first).
PNDM_CASES = {
    "edit": ("a [red:blue:0.5] circle", 4, [RED, RED] + [RED, RED, BLUE]),  # steps: red, red, red, blue
    "alternation": ("a [red|blue] circle", 6, [RED, RED] + [RED, BLUE, RED, BLUE, RED]),  # r, r, b, r, b, r
}


@pytest.fixture(scope="module")
def sd_pndm(sd_pipe):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**sd_pipe.components, "scheduler": _sd15_pndm()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("case", PNDM_CASES)
def test_pndm_warm_up_call_belongs_to_step_0_through_pipeline_kwargs(sd_pndm, case):
    """Before: pipeline_kwargs refused SD 1.5's scheduler at the first callback ("the pipeline
    runs 5 denoising steps but the prompt's schedule was made for 4")."""
    prompt, steps, per_call = PNDM_CASES[case]
    cond = TextConditioner.from_pipeline(sd_pndm)
    call = dict(num_inference_steps=steps, output_type="latent")
    got = sd_pndm(**cond.pipeline_kwargs(prompt, "blurry", num_inference_steps=steps), generator=_generator(), **call)
    contexts = [_sd_context(sd_pndm, text) for text in per_call]
    reference, calls = _unet_fed_per_call(sd_pndm, contexts, generator=_generator(), **call)
    assert calls == steps + 1
    assert torch.equal(got.images, reference)


@pytest.mark.parametrize("case", PNDM_CASES)
def test_pndm_warm_up_call_belongs_to_step_0_in_clip_conditioned_pipeline(sd_pipe, sd_pndm, case):
    """Before: every step after the warm-up read the next step's text (the edit switched a
    step early, the alternation ran one step out of phase)."""
    prompt, steps, per_call = PNDM_CASES[case]
    pipe = CLIPConditionedPipeline(
        **{**CLIPConditionedPipeline.from_pipe(sd_pipe).components, "scheduler": _sd15_pndm()}
    )
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=steps, output_type="latent")
    got = pipe(prompt, negative_prompt="blurry", generator=_generator(), **call).images
    contexts = [_sd_context(sd_pndm, text) for text in per_call]
    reference, _ = _unet_fed_per_call(sd_pndm, contexts, generator=_generator(), **call)
    assert torch.equal(got, reference)


def test_pndm_img2img_counts_the_warm_up_within_the_steps_that_run(sd_pipe):
    """img2img at strength 0.5 of 8 steps runs 4 steps in 5 calls (the tail of the schedule,
    warm-up first): a schedule made for 4 steps runs, one made for 8 is refused."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**{**sd_pipe.components, "scheduler": _sd15_pndm()})
    pipe.set_progress_bar_config(disable=True)
    cond = TextConditioner.from_pipeline(pipe)
    call = dict(image=torch.rand(1, 3, 32, 32, generator=_generator()), strength=0.5, num_inference_steps=8)
    call["output_type"] = "latent"
    with pytest.raises(ValueError, match="runs 4 denoising steps but .* made for 8"):
        pipe(**cond.pipeline_kwargs("a [red:blue:0.5] circle", "blurry", num_inference_steps=8), **call)
    kwargs = cond.pipeline_kwargs("a [red:blue:0.5] circle", "blurry", num_inference_steps=4)
    got = pipe(**kwargs, generator=_generator(), **call).images
    contexts = [_sd_context(pipe, text) for text in [RED, RED, RED, RED, BLUE]]
    reference, calls = _unet_fed_per_call(pipe, contexts, generator=_generator(), **call)
    assert calls == 5
    assert torch.equal(got, reference)


# SD3 with skip-layer guidance: each step's texts, written out (6 steps).
SD3_PROMPTS = ["a [red:blue:0.5] cat", "a [house|tree] at dusk"]
SD3_NEGATIVES = ["blurry", "[dark:bright:2]"]
SD3_PER_STEP = [
    (["a red cat", "a house at dusk"], ["blurry", "dark"]),
    (["a red cat", "a house at dusk"], ["blurry", "dark"]),
    (["a red cat", "a tree at dusk"], ["blurry", "dark"]),
    (["a red cat", "a house at dusk"], ["blurry", "bright"]),
    (["a blue cat", "a tree at dusk"], ["blurry", "bright"]),
    (["a blue cat", "a house at dusk"], ["blurry", "bright"]),
]
SLG = dict(skip_guidance_layers=[0], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)


@pytest.fixture(scope="module")
def sd3_two_layers(sd3_pipe):
    """The tiny SD3 with a two-layer transformer: skipping layer 0 leaves one that reads the
    text tokens (with one layer, the skip-layer pass reads the pooled vectors only)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel.from_config({**sd3_pipe.transformer.config, "num_layers": 2})
    pipe = StableDiffusion3Pipeline(**{**sd3_pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd3_call(**extra):
    return dict(num_inference_steps=len(SD3_PER_STEP), guidance_scale=5.0, output_type="latent", **SLG, **extra)


def _sd3_per_step_reference(pipe):
    """SD3 with every transformer call given its step's embeddings from diffusers'
    encode_prompt: the guided pass negatives then prompts, the skip-layer pass the prompts."""
    steps = []
    with torch.no_grad():
        for prompts, negatives in SD3_PER_STEP:
            steps.append(pipe.encode_prompt(prompts, None, None, negative_prompt=negatives))
    step = []

    def hook(module, args, kwargs):
        if kwargs.get("skip_layers") is None:
            step.append(True)  # a guided pass opens a step
        prompt, negative, pooled, negative_pooled = steps[len(step) - 1]
        if kwargs.get("skip_layers") is None:
            prompt, pooled = torch.cat([negative, prompt]), torch.cat([negative_pooled, pooled])
        kwargs["encoder_hidden_states"], kwargs["pooled_projections"] = prompt, pooled
        return args, kwargs

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        prompt, negative, pooled, negative_pooled = steps[0]
        return pipe(
            prompt_embeds=prompt,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            generator=_generator(),
            **_sd3_call(),
        ).images
    finally:
        handle.remove()


@pytest.mark.parametrize("layers", ["one", "two"])
def test_sd3_skip_layer_guidance_pass_reads_each_steps_prompts(sd3_pipe, sd3_two_layers, layers):
    """Before: diffusers' skip-layer pass reads the embeddings it was given (step 0's) at every
    step, out of the callback's reach; the latents differed from the per-step reference."""
    pipe = sd3_pipe if layers == "one" else sd3_two_layers
    cond = TextConditioner.from_pipeline(pipe)
    hooks = len(pipe.transformer._forward_pre_hooks)
    kwargs = cond.pipeline_kwargs(SD3_PROMPTS, SD3_NEGATIVES, num_inference_steps=len(SD3_PER_STEP))
    with torch.no_grad():
        got = pipe(**kwargs, generator=_generator(), **_sd3_call()).images
    assert len(pipe.transformer._forward_pre_hooks) == hooks  # the pass's hook is gone
    assert torch.equal(got, _sd3_per_step_reference(pipe))


def test_sd3_skip_layer_hook_left_by_a_call_that_raised_goes_before_acting(sd3_pipe):
    """A call that raises mid-loop leaves the hook on the transformer; the next call sets the
    scheduler anew, and the hook removes itself at the transformer's first call without acting:
    that call's skip-layer pass still reads the embeddings it was given, though a callback
    halves the guided pass's (which the hook, acting, would have put in; the tiny transformer's
    one layer is skipped, so that pass reads the pooled vectors only)."""
    cond = TextConditioner.from_pipeline(sd3_pipe)

    def halve_after_the_first_step(pipe, iteration, timestep, tensors):
        return {name: tensor * 0.5 for name, tensor in tensors.items()} if iteration == 0 else {}

    plain = dict(
        prompt=["a red cat", "a house"],
        negative_prompt=["blurry", "dark"],
        callback_on_step_end=halve_after_the_first_step,
        callback_on_step_end_tensor_inputs=["prompt_embeds", "pooled_prompt_embeds"],
        **_sd3_call(),
    )
    with torch.no_grad():
        before = sd3_pipe(generator=_generator(), **plain).images
    hooks = len(sd3_pipe.transformer._forward_pre_hooks)
    calls = []

    def fail_at_the_fourth_call(module, args, kwargs):
        calls.append(True)
        if len(calls) == 4:  # the guided pass of iteration 2 (the skip-layer pass starts at 1)
            raise RuntimeError("stopped")

    handle = sd3_pipe.transformer.register_forward_pre_hook(fail_at_the_fourth_call, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="stopped"), torch.no_grad():
            sd3_pipe(**cond.pipeline_kwargs(SD3_PROMPTS, SD3_NEGATIVES, num_inference_steps=6), **_sd3_call())
    finally:
        handle.remove()
    assert len(sd3_pipe.transformer._forward_pre_hooks) == hooks + 1  # left behind
    with torch.no_grad():
        after = sd3_pipe(generator=_generator(), **plain).images
    assert len(sd3_pipe.transformer._forward_pre_hooks) == hooks
    assert torch.equal(after, before)


def test_flux_takes_an_edit_in_the_t5_text_only(flux_pipe, pixart_pipe):
    """Flux's callback replaces the T5 tokens, not the CLIP's pooled vector nor a negative:
    an edit in `prompt_2` runs and switches where it says; one in `prompt` or a negative is
    refused by pipeline_kwargs, naming what cannot change. PixArt has no callback at all.
    Before: PixArt's refusal of an edit in the negative alone named "the prompt embeddings"."""
    cond = TextConditioner.from_pipeline(flux_pipe)
    call = dict(num_inference_steps=4, guidance_scale=3.5, output_type="latent", height=16, width=16)
    kwargs = cond.pipeline_kwargs("a cat", prompt_2="a [red:blue:0.5] cat", num_inference_steps=4)
    with torch.no_grad():
        got = flux_pipe(**kwargs, generator=_generator(), **call).images
        red = flux_pipe.encode_prompt("a cat", "a red cat")
        blue = flux_pipe.encode_prompt("a cat", "a blue cat")
    per_step = [red, red, red, blue]  # 0.5 x 4 = 2: steps 0-2 read "a red cat"
    made = []

    def hook(module, args, kwargs):
        kwargs["encoder_hidden_states"] = per_step[len(made)][0]
        made.append(True)
        return args, kwargs

    handle = flux_pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            reference = flux_pipe(
                prompt_embeds=red[0], pooled_prompt_embeds=red[1], generator=_generator(), **call
            ).images
    finally:
        handle.remove()
    assert torch.equal(got, reference)
    with pytest.raises(ValueError, match="changes the pooled vector between steps.*'flux'"):
        cond.pipeline_kwargs("a [red:blue:0.5] cat", num_inference_steps=4)
    with pytest.raises(ValueError, match="changes the negative prompt's embeddings between steps.*'flux'"):
        cond.pipeline_kwargs("a cat", "a [red:blue:0.5] dog", num_inference_steps=4)
    pixart = TextConditioner.from_pipeline(pixart_pipe)
    with pytest.raises(ValueError, match="changes the prompt embeddings between steps.*'pixart'"):
        pixart.pipeline_kwargs("a [red:blue:0.5] cat", num_inference_steps=4)
    with pytest.raises(ValueError, match="changes the negative prompt's embeddings between steps.*'pixart'"):
        pixart.pipeline_kwargs("a cat", "a [red:blue:0.5] dog", num_inference_steps=4)
