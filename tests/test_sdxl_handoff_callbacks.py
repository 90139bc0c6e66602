"""SDXL step callbacks and decoding, against diffusers' SDXL pipelines and clipcond's own.

- `TextConditioner.pipeline_kwargs` prompt editing across diffusers' base (`denoising_end`) +
  refiner (`denoising_start`) hand-off, given the whole schedule's `num_inference_steps` on both
  sides: each step reads what one model running the whole schedule reads, as clipcond's own
  pipelines do on the same hand-off. Which text a step reads is recorded by a UNet forward
  pre-hook matching the step's prompt row against each candidate text's embeddings.
- A `negative_prompt_embeds` that `callback_on_step_end` returns is written into the guided
  batch's unconditional rows, in SD and SDXL, text to image, img2img and inpaint (one loop):
  equal to diffusers' pipeline given the same edit in `prompt_embeds`' first half. Where no such
  rows run, a new value is refused, never dropped.
- A VAE whose dtype cannot decode the UNet's latents (a float16 "fp16-fix" VAE, `force_upcast`
  False, in a float32 pipeline) is refused before any step, where diffusers fails inside the VAE
  after every step; SDXL's float16 VAE with `force_upcast`, and `output_type="latent"`, still run
  and equal diffusers'.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from test_img2img_inpaint import box_mask
from test_sdxl_handoff_editing import COLOURS, STEPS, quiet
from tiny_pipelines import _small_vae, build_sdxl, sd_components

from clipcond import (
    CLIPConditionedImg2ImgPipeline,
    CLIPConditionedInpaintPipeline,
    CLIPConditionedPipeline,
    TextConditioner,
)


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


def negative_to_fives(pipe, index, timestep, tensors):
    """After step 0, the negative prompt's embeddings become 5.0 everywhere."""
    return {"negative_prompt_embeds": torch.full_like(tensors["negative_prompt_embeds"], 5.0)} if index == 0 else {}


def first_half_to_fives(pipe, index, timestep, tensors):
    """The same edit through the guided batch: its first half (the negatives) becomes 5.0."""
    if index:
        return {}
    rows = tensors["prompt_embeds"].clone()
    rows[: len(rows) // 2] = 5.0
    return {"prompt_embeds": rows}


def sd_peer():
    return quiet(
        StableDiffusionPipeline(
            **sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    )


def peers(task: str):
    """(diffusers' pipeline, ours from it, the task's extra arguments)."""
    if task == "sd":
        peer = sd_peer()
    elif task == "sd_img2img":
        peer = quiet(StableDiffusionImg2ImgPipeline(**sd_peer().components))
    elif task == "sdxl":
        peer = quiet(StableDiffusionXLPipeline(**dict(build_sdxl().components), add_watermarker=False))
    else:
        parts = dict(build_sdxl().components)
        peer_class = StableDiffusionXLImg2ImgPipeline if task == "sdxl_img2img" else StableDiffusionXLInpaintPipeline
        peer = quiet(peer_class(**parts, add_watermarker=False))
    ours_class = {"img2img": CLIPConditionedImg2ImgPipeline, "inpaint": CLIPConditionedInpaintPipeline}
    ours = quiet(ours_class.get(task.split("_")[-1], CLIPConditionedPipeline).from_pipe(peer))
    extra = {}
    if "img2img" in task or "inpaint" in task:
        extra["image"] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        extra["strength"] = 1.0  # both steps run
    if "inpaint" in task:
        extra["mask_image"] = box_mask()
    return peer, ours, extra


def run(pipe, callback=None, names=None, **kwargs):
    return pipe(
        prompt=kwargs.pop("prompt", "a red circle"),
        negative_prompt="blurry",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=names,
        **{"output_type": "np", **kwargs},
    ).images


@pytest.mark.parametrize("task", ["sd", "sd_img2img", "sdxl", "sdxl_img2img", "sdxl_inpaint"])
def test_a_returned_negative_is_written_into_the_unconditional_rows(task):
    peer, ours, extra = peers(task)
    expected = run(peer, first_half_to_fives, ["prompt_embeds"], **extra)
    assert not (expected == run(peer, **extra)).all()  # the edit shows
    got = run(ours, negative_to_fives, ["negative_prompt_embeds"], **extra)
    assert (got == expected).all()


@pytest.mark.parametrize(
    "task, settings",
    [("sd", {"guidance_scale": 1.0}), ("sdxl", {"prompt": "a [red:blue:0.5] circle"})],
    ids=["no_guidance", "prompt_editing"],
)
def test_a_new_negative_where_no_rows_read_it_is_refused_and_an_unchanged_one_is_fine(task, settings):
    peer, ours, _ = peers(task)
    names = ["negative_prompt_embeds"]
    returned = {}

    def fives(pipe, index, timestep, tensors):
        given = tensors["negative_prompt_embeds"]
        returned[index] = given
        return {"negative_prompt_embeds": torch.full((1, 77, 32), 5.0) if given is None else given + 5.0}

    with pytest.raises(ValueError, match="returned a new `negative_prompt_embeds`, which no rows of this step read"):
        run(ours, fives, names, **settings)
    assert list(returned) == [0]  # refused at the first step's callback
    unchanged = run(ours, lambda pipe, index, timestep, tensors: tensors, names, **settings)
    assert (unchanged == run(ours, **settings)).all()


@pytest.mark.parametrize("task", ["sd", "sdxl", "sdxl_img2img"])
def test_a_vae_that_cannot_decode_the_unets_latents_is_refused_before_any_step(task):
    peer, ours, extra = peers(task)
    half_vae = _small_vae(force_upcast=False).to(torch.float16)
    for pipe in (peer, ours):  # (`from_pipe` would cast it to float32)
        pipe.register_modules(vae=half_vae)
    calls: list[int] = []  # the UNet, shared by both
    peer.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(RuntimeError, match="Input type"):  # diffusers: inside the VAE
        run(peer, **extra)
    assert len(calls) == (0 if "img2img" in task else 2)  # t2i: after both steps; img2img: encoding
    calls.clear()
    with pytest.raises(ValueError, match=r"the `vae` is torch.float16 but the `unet`.* is torch.float32: .*vae.to"):
        run(ours, **extra)
    assert calls == []
    # nothing to decode: runs, as diffusers does
    if "img2img" not in task:
        assert (run(ours, output_type="latent", **extra) == run(peer, output_type="latent", **extra)).all()


def test_sdxl_decodes_a_float16_vae_with_force_upcast_in_float32_as_diffusers():
    peer, ours, _ = peers("sdxl")
    half_vae = _small_vae(force_upcast=True).to(torch.float16)
    for pipe in (peer, ours):
        pipe.register_modules(vae=half_vae)
    assert (run(ours) == run(peer)).all()


def test_a_refiner_starting_on_another_text_is_refused_with_the_whole_message(sdxl) -> None:
    """The refusal of `StepSwap._check_first_step` in full: which step, which text, why, and both
    ways out (found by mutation testing: `xǁStepSwapǁ_check_first_step__mutmut_49` and the other
    message mutants pass the existing test, which matches the message's first half)."""
    base, refiner, _, _, cond = sdxl
    prompt = "a [blue:red:0.25] circle"
    _, latents = read(base, cond, True, prompt, denoising_end=0.5)
    with pytest.raises(ValueError) as refusal:
        read(refiner, cond, True, prompt, image=latents, denoising_start=0.5)
    assert str(refusal.value) == (
        "this call starts at step 4 of the prompt's 8 (`denoising_start` 0.5), which reads 'a red circle', where "
        "step 0 reads 'a blue circle', but it was given step 0's embeddings, as `pipeline_kwargs` returns them, and "
        "a step callback runs only after a step: run this part with CLIPConditionedImg2ImgPipeline (or its inpaint "
        "sibling), which starts on that step's text, or give the call step 4's embeddings "
        "(`TextConditioner.schedule(...).embeds_at(4)`)"
    )


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "PNDMScheduler"])
def test_denoising_end_on_a_scheduler_without_a_begin_index_switches_where_a1111_does(sdxl, scheduler_name) -> None:
    """diffusers' DDIM and PNDM schedulers have no `begin_index`: the base's first iteration is
    found from the callback's timestep. An SDXL base cut at `denoising_end` 0.5 of 8 steps reads
    "a [red:blue:0.25] circle" as A1111 does (red while step <= int(0.25 x 8) = 2) over its 4
    steps (found by mutation testing: `xǁStepSwapǁ_check_steps_run__mutmut_48`, `loop_start`
    given no timestep, raises inside torch; every hand-off test uses a scheduler with a begin index)."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    base, _, _, _, cond = sdxl
    scheduler = getattr(diffusers, scheduler_name).from_config(base.scheduler.config)
    assert not hasattr(scheduler, "begin_index")
    pipe = StableDiffusionXLPipeline(**{**base.components, "scheduler": scheduler}, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    seen, _ = read(pipe, cond, True, "a [red:blue:0.25] circle", denoising_end=0.5)
    if scheduler_name == "DDIMScheduler":
        assert seen == ["red"] * 3 + ["blue"]
    else:  # PNDM's warm-up runs step 0 twice (diffusers' PNDM loop)
        assert seen[-1] == "blue" and seen[:-1] == ["red"] * (len(seen) - 1)


def test_the_hand_off_refusals_in_full(sdxl) -> None:
    """`StepSwap._check_steps_run`'s two hand-off refusals in full: the base (`denoising_end`)
    is told to give the steps it runs without the cut, the refiner (`denoising_start`) its whole
    schedule (found by mutation testing: `xǁStepSwapǁ_check_steps_run__mutmut_77`, `_80`, `_88`:
    the wrong advice or a changed tail pass the existing test's partial match)."""
    base, refiner, _, _, cond = sdxl
    kwargs = cond.pipeline_kwargs("a [red:blue:0.5] circle", num_inference_steps=4)
    settings = dict(num_inference_steps=8, output_type="latent", generator=torch.Generator().manual_seed(0))
    tail = (
        " as `num_inference_steps` (8, the pipeline's own `num_inference_steps` in a base + refiner hand-off), not "
        "the steps one side runs: each model then counts every step, and the pair reads what one model running "
        "the whole schedule reads"
    )
    with pytest.raises(ValueError) as refusal:
        base(**kwargs, **settings, denoising_end=0.5)
    assert str(refusal.value) == (
        "the pipeline's schedule has 8 denoising steps (`denoising_end` 0.5: this call runs a part of them) but "
        "the prompt's schedule was made for 4: give `pipeline_kwargs` the steps it runs without `denoising_end`" + tail
    )
    with pytest.raises(ValueError) as refusal:
        refiner(**kwargs, **settings, image=torch.zeros(1, 4, 4, 4), denoising_start=0.5)
    assert str(refusal.value) == (
        "the pipeline's schedule has 8 denoising steps (`denoising_start` 0.5: this call runs a part of them) but "
        "the prompt's schedule was made for 4: give `pipeline_kwargs` its whole schedule" + tail
    )
    with pytest.raises(ValueError) as refusal:  # a middle model of three: both ends named
        refiner(**kwargs, **settings, image=torch.zeros(1, 4, 4, 4), denoising_start=0.25, denoising_end=0.75)
    assert str(refusal.value) == (
        "the pipeline's schedule has 8 denoising steps (`denoising_start` 0.25 and `denoising_end` 0.75: this call "
        "runs a part of them) but the prompt's schedule was made for 4: give `pipeline_kwargs` its whole schedule"
        + tail
    )


def test_a_refiner_given_its_first_steps_embeddings_runs_under_guidance(sdxl) -> None:
    """`_check_first_step`'s refusal advises giving a call that starts at step 4 "step 4's
    embeddings (`TextConditioner.schedule(...).embeds_at(4)`)": a guided SDXL refiner given them
    runs (no refusal) and reads step 4's text at each of its steps (found by mutation testing:
    `xǁStepSwapǁ_check_first_step__mutmut_10`, the expected tensors laid out without guidance,
    refuses it)."""
    base, refiner, _, _, cond = sdxl
    prompt = "a [blue:red:0.25] circle"  # step 4, where the refiner starts at 0.5, reads red
    _, latents = read(base, cond, True, prompt, denoising_end=0.5)
    step4, _ = cond.schedule(prompt, STEPS).embeds_at(4)
    given = cond.pipeline_kwargs(prompt, num_inference_steps=STEPS)
    given.update(prompt_embeds=step4.tokens, pooled_prompt_embeds=step4.pooled)
    rows = []
    handle = refiner.unet.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["encoder_hidden_states"][-1:]), with_kwargs=True
    )
    try:
        refiner(
            **given,
            image=latents,
            denoising_start=0.5,
            num_inference_steps=STEPS,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert len(rows) == 4 and all(torch.equal(row, step4.tokens) for row in rows)


def test_a_refiner_starting_where_only_the_negative_changed_is_refused_naming_the_negative(sdxl) -> None:
    """Where the prompt's text at the first step is step 0's but the negative's is not, the
    refusal says "another negative text" (found by mutation testing:
    `xǁStepSwapǁ_check_first_step__mutmut_37`, which indexes the prompt rows with None: TypeError)."""
    base, refiner, _, _, cond = sdxl
    kwargs = cond.pipeline_kwargs(
        "a red circle", negative_prompt="a [blue:green:0.25] circle", num_inference_steps=STEPS
    )
    settings = dict(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
    latents = base(**kwargs, **settings, denoising_end=0.5).images
    with pytest.raises(
        ValueError,
        match=r"starts at step 4 of the prompt's 8 \(`denoising_start` 0.5\), which reads another negative text, but",
    ):
        refiner(**kwargs, **settings, image=latents, denoising_start=0.5)
