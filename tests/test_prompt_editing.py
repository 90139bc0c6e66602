"""Prompt editing, alternation and AND in images: diffusers pipelines through pipeline_kwargs'
step callback, and CLIPConditionedPipeline natively, each against a reference that switches or
combines by hand at steps written out here."""

from __future__ import annotations

import pytest
import torch

from clipcond import CLIPConditionedPipeline, TextConditioner

STEPS = 4
EDITED = "a [red:blue:0.5] circle"  # 0.5 x 4 = step 2: steps 0, 1, 2 read "red", step 3 "blue"
SWITCH_AFTER = 2


def _generator():
    return torch.Generator().manual_seed(0)


def _hand_switch(embeds_by_step):
    """A callback that puts the embeddings of the next step in place, from a table per step."""

    def callback(pipe, step, timestep, tensors):
        return embeds_by_step.get(step + 1, {})

    return callback


def test_schedule_lists_each_text_and_its_steps(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe)
    schedule = cond.schedule(EDITED, STEPS)
    assert schedule.segments() == [(0, 3, "a red circle"), (3, 4, "a blue circle")]
    assert schedule.texts == ["a red circle", "a blue circle"]
    plain = cond.encode(["a red circle", "a blue circle"])
    assert torch.equal(schedule.embeds.tokens, plain.tokens)  # encoded once, in one batch
    alternating = cond.schedule("[cat|dog]", 4)
    assert [text for _, _, text in alternating.segments()] == ["cat", "dog", "cat"]


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_diffusers_pipelines_switch_where_the_schedule_says(family, request):
    pipe = request.getfixturevalue(f"{family}_pipe")
    cond = TextConditioner.from_pipeline(pipe)
    kwargs = cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=STEPS)
    assert callable(kwargs["callback_on_step_end"])
    got = pipe(**kwargs, num_inference_steps=STEPS, generator=_generator(), output_type="latent").images

    first = cond.pipeline_kwargs("a red circle", "blurry")  # each step's texts alone, as diffusers encodes them
    after = cond.pipeline_kwargs("a blue circle", "blurry")
    switched = {"prompt_embeds": torch.cat([after["negative_prompt_embeds"], after["prompt_embeds"]])}
    inputs = ["prompt_embeds"]
    if family == "sdxl":
        switched["add_text_embeds"] = torch.cat([after["negative_pooled_prompt_embeds"], after["pooled_prompt_embeds"]])
        inputs.append("add_text_embeds")
    elif family == "sd3":
        switched["pooled_prompt_embeds"] = torch.cat(
            [after["negative_pooled_prompt_embeds"], after["pooled_prompt_embeds"]]
        )
        inputs.append("pooled_prompt_embeds")
    reference = pipe(
        **first,
        num_inference_steps=STEPS,
        generator=_generator(),
        output_type="latent",
        callback_on_step_end=_hand_switch({SWITCH_AFTER + 1: switched}),
        callback_on_step_end_tensor_inputs=inputs,
    ).images
    plain = pipe(**first, num_inference_steps=STEPS, generator=_generator(), output_type="latent").images
    assert torch.equal(got, reference)
    assert not torch.equal(got, plain)  # the switch changed the image


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_each_steps_pooled_vectors_are_encode_prompts_for_its_texts(family, request):
    """A text projection rounds by its row count: every step's pooled vectors are those of
    diffusers' encode_prompt given that step's prompts and negatives, bit for bit."""
    pipe = request.getfixturevalue(f"{family}_pipe")
    cond = TextConditioner.from_pipeline(pipe)
    prompts = ["a [red:blue:0.5] circle", "[cat|dog] on a mat", "a castle at night"]
    schedule = cond.schedule(prompts, STEPS, "blurry")
    for step in range(STEPS):
        texts = [schedule.texts[row] for row in schedule.rows_at(step)[0]]
        with torch.no_grad():  # as pipelines run it (T5's attention rounds otherwise with a graph)
            reference = pipe.encode_prompt(texts, negative_prompt=["blurry"] * 3, **_ENCODE_EXTRAS[family])
        positive, negative = schedule.embeds_at(step)
        assert torch.equal(positive.tokens, reference[0])
        assert torch.equal(positive.pooled, reference[2])
        assert torch.equal(negative.pooled, reference[3])


_ENCODE_EXTRAS = {
    "sdxl": {"device": "cpu", "num_images_per_prompt": 1, "do_classifier_free_guidance": True},
    "sd3": {"prompt_2": None, "prompt_3": None, "do_classifier_free_guidance": True},
}


# Edits whose text never changes over STEPS = 4 steps, and the one text A1111 reads at every step
FIXED_EDITS = {
    "a photo of a [cat:dog:0]": "a photo of a dog",
    "a photo of a [cat:dog:10]": "a photo of a cat",  # written for more steps than run
    "a photo of a [cat:dog:1.0]": "a photo of a cat",
    "a photo of a [dog|dog]": "a photo of a dog",
    "a photo of a [dog:0]": "a photo of a dog",
}


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_an_edit_that_never_changes_reads_its_one_text(family, request):
    """Before: such a prompt took the plain path and its brackets were read as weights and text
    ("a photo of a cat:dog:0" at 1/1.1)."""
    cond = TextConditioner.from_pipeline(request.getfixturevalue(f"{family}_pipe"))
    negative = None if family == "flux" else "blurry [noise:dark:0]"
    for edited, text in FIXED_EDITS.items():
        got = cond.pipeline_kwargs(edited, negative, num_inference_steps=STEPS)
        expected = cond.pipeline_kwargs(text, None if negative is None else "blurry dark")
        assert "callback_on_step_end" not in got and got.keys() == expected.keys(), edited
        assert all(torch.equal(got[key], expected[key]) for key in expected), edited


def test_editing_syntax_without_steps_is_refused_even_when_it_would_not_change(sd_pipe):
    """Before: ``[cat:dog:10]`` (no change within 2 steps) was read as text without a word."""
    cond = TextConditioner.from_pipeline(sd_pipe)
    for edited in FIXED_EDITS:
        with pytest.raises(ValueError, match="pass `num_inference_steps`"):
            cond.pipeline_kwargs(edited)


def test_clip_conditioned_pipeline_reads_an_edit_that_never_changes_as_its_text(sd_pipe):
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)

    def image(prompt, negative):
        return pipe(
            prompt, negative_prompt=negative, num_inference_steps=STEPS, generator=_generator(), output_type="latent"
        ).images

    for edited, text in list(FIXED_EDITS.items())[:2]:
        assert torch.equal(image(edited, "blurry [noise:dark:0]"), image(text, "blurry dark")), edited


def _switched_sd_inputs(cond):
    """Step 0's keyword arguments and the prompt embeddings after the switch, as SD keeps them."""
    first = cond.pipeline_kwargs("a red circle", "blurry")
    after = cond.pipeline_kwargs("a blue circle", "blurry")
    return first, {"prompt_embeds": torch.cat([after["negative_prompt_embeds"], after["prompt_embeds"]])}


def test_a_second_order_scheduler_switches_at_the_step_not_the_iteration(sd_pipe):
    """Heun runs a predictor and a corrector per step (order 2): the callback is called after
    each, so iteration i belongs to step i // 2. Before: the text switched after iteration 2,
    in the middle of step 1, instead of before step 3."""
    from diffusers import HeunDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **{**sd_pipe.components, "scheduler": HeunDiscreteScheduler.from_config(sd_pipe.scheduler.config)}
    )
    pipe.set_progress_bar_config(disable=True)
    cond = TextConditioner.from_pipeline(pipe)
    kwargs = cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=STEPS)
    got = pipe(**kwargs, num_inference_steps=STEPS, generator=_generator(), output_type="latent").images
    first, switched = _switched_sd_inputs(cond)
    iteration_of_step_3 = (SWITCH_AFTER + 1) * 2  # iterations 0-1 are step 0, 2-3 step 1, ..., 6 step 3
    reference = pipe(
        **first,
        num_inference_steps=STEPS,
        generator=_generator(),
        output_type="latent",
        callback_on_step_end=_hand_switch({iteration_of_step_3: switched}),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images
    assert torch.equal(got, reference)


def test_img2img_runs_the_schedule_over_the_steps_that_run(sd_pipe):
    """img2img at strength 0.5 runs half the steps. Before: a schedule made for all of them
    switched late (or never) without a word; now that is an error naming the steps that run,
    and a schedule made for them switches where it says."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    cond = TextConditioner.from_pipeline(pipe)
    call = dict(image=image, strength=0.5, num_inference_steps=2 * STEPS, output_type="latent")
    with pytest.raises(ValueError, match=f"runs {STEPS} denoising steps but .* made for {2 * STEPS}"):
        pipe(**cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=2 * STEPS), generator=_generator(), **call)
    got = pipe(**cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=STEPS), generator=_generator(), **call)
    first, switched = _switched_sd_inputs(cond)
    reference = pipe(
        **first,
        generator=_generator(),
        callback_on_step_end=_hand_switch({SWITCH_AFTER + 1: switched}),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        **call,
    )
    assert torch.equal(got.images, reference.images)


def test_two_images_per_prompt_and_two_prompts(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe)
    prompts = [EDITED, "a green square"]
    kwargs = cond.pipeline_kwargs(prompts, num_inference_steps=STEPS)
    got = sd_pipe(
        **kwargs, num_inference_steps=STEPS, num_images_per_prompt=2, generator=_generator(), output_type="latent"
    ).images
    texts = cond.pipeline_kwargs(["a red circle", "a green square", "a blue circle", "a green square"])
    before = {key: value[:2] for key, value in texts.items()}
    after_positive = texts["prompt_embeds"][2:].repeat_interleave(2, dim=0)
    after_negative = texts["negative_prompt_embeds"][2:].repeat_interleave(2, dim=0)
    reference = sd_pipe(
        **before,
        num_inference_steps=STEPS,
        num_images_per_prompt=2,
        generator=_generator(),
        output_type="latent",
        callback_on_step_end=_hand_switch(
            {SWITCH_AFTER + 1: {"prompt_embeds": torch.cat([after_negative, after_positive])}}
        ),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images
    assert torch.equal(got, reference)


def test_a_prompt_without_editing_gets_todays_kwargs(sd_pipe, sdxl_pipe):
    for pipe in (sd_pipe, sdxl_pipe):
        cond = TextConditioner.from_pipeline(pipe)
        with_steps = cond.pipeline_kwargs("a (red:1.2) circle [x]", "blurry", num_inference_steps=STEPS)
        without = cond.pipeline_kwargs("a (red:1.2) circle [x]", "blurry")
        assert "callback_on_step_end" not in with_steps and with_steps.keys() == without.keys()
        assert all(torch.equal(with_steps[key], without[key]) for key in without)


def test_families_whose_callback_cannot_swap_say_so(flux_pipe, pixart_pipe, sd_pipe):
    with pytest.raises(ValueError, match="pooled vector.*'flux'"):
        TextConditioner.from_pipeline(flux_pipe).pipeline_kwargs(EDITED, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="prompt embeddings.*'pixart'"):
        TextConditioner.from_pipeline(pixart_pipe).pipeline_kwargs(EDITED, num_inference_steps=STEPS)
    cond = TextConditioner.from_pipeline(sd_pipe)
    with pytest.raises(ValueError, match="AND.*CLIPConditionedPipeline"):
        cond.pipeline_kwargs("a cat AND a dog", num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="pass `num_inference_steps`"):
        cond.pipeline_kwargs(EDITED)
    with pytest.raises(ValueError, match="`num_inference_steps` must be an int >= 1"):
        cond.pipeline_kwargs(EDITED, num_inference_steps=0)
    # a long prompt is quoted in part: the message stays a line, not 100,000 characters
    for long_prompt, steps in (("a cat AND a dog " + "x " * 50_000, STEPS), (EDITED + " x" * 50_000, None)):
        with pytest.raises(ValueError) as refused:
            cond.pipeline_kwargs(long_prompt, num_inference_steps=steps)
        assert len(str(refused.value)) < 500


def test_clip_conditioned_pipeline_edits_natively(sd_pipe):
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)
    got = pipe(
        EDITED, negative_prompt="[blurry|dark]", num_inference_steps=STEPS, generator=_generator(), output_type="latent"
    ).images
    texts = pipe.conditioner.pipeline_kwargs(["a red circle", "a blue circle", "blurry", "dark"])["prompt_embeds"]
    red, blue, blurry, dark = (texts[i : i + 1] for i in range(4))
    # negative alternation: blurry at steps 0, 1, then dark, blurry (A1111's rule); prompt: red, red, red, blue
    table = {
        1: {"prompt_embeds": torch.cat([blurry, red])},
        2: {"prompt_embeds": torch.cat([dark, red])},
        3: {"prompt_embeds": torch.cat([blurry, blue])},
    }
    reference = pipe(
        prompt_embeds=red,
        negative_prompt_embeds=blurry,
        num_inference_steps=STEPS,
        generator=_generator(),
        output_type="latent",
        callback_on_step_end=_hand_switch(table),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images
    assert torch.equal(got, reference)


def test_editing_counts_the_steps_that_custom_sigmas_make(sd_pipe):
    """Euler's schedulers take the last of `sigmas` as the final sigma: their own four sigmas of
    `set_timesteps(3)` are three steps, so `[red:blue:0.5]` reads "red" at steps 0 and 1 (up
    to 0.5 x 3) and "blue" at step 2, as with `num_inference_steps=3` (counting four steps
    would switch one step later)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(sd_pipe.scheduler.config)
    scheduler.set_timesteps(3)
    sigmas = scheduler.sigmas.tolist()
    pipe = CLIPConditionedPipeline(**{**CLIPConditionedPipeline.from_pipe(sd_pipe).components, "scheduler": scheduler})
    contexts = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"][-1]), with_kwargs=True
    )
    try:
        pipe(EDITED, sigmas=sigmas, guidance_scale=1.0, output_type="latent", generator=_generator())
    finally:
        hook.remove()
    red, blue = pipe.conditioner.pipeline_kwargs(["a red circle", "a blue circle"])["prompt_embeds"]
    assert len(sigmas) == 4 and len(contexts) == 3
    assert [torch.equal(context, red) for context in contexts] == [True, True, False]
    assert torch.equal(contexts[2], blue)


def _hand_loop(pipe, contexts, combine, steps=3):
    """The denoising loop written out: UNet on every row, combined by `combine`."""
    pipe.scheduler.set_timesteps(steps)
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = torch.randn(shape, generator=_generator()) * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        rows = torch.cat([latents] * contexts.shape[0])
        with torch.no_grad():
            noise = pipe.unet(pipe.scheduler.scale_model_input(rows, t), t, encoder_hidden_states=contexts).sample
        latents = pipe.scheduler.step(combine(noise), t, latents).prev_sample
    return latents


def test_and_combines_the_parts_as_a1111(sd_pipe):
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)
    got = pipe(
        "a red circle :1.2 AND a blue square :0.8",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=6.0,
        generator=_generator(),
        output_type="latent",
    ).images
    embeds = pipe.conditioner.encode(["blurry", "a red circle", " a blue square"]).tokens

    def combine(noise):  # uncond + sum of weight x scale x (cond_i - uncond)
        uncond, red, blue = noise[0:1], noise[1:2], noise[2:3]
        return uncond + (red - uncond) * (1.2 * 6.0) + (blue - uncond) * (0.8 * 6.0)

    reference = _hand_loop(pipe, embeds, combine)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    single = pipe(
        "a red circle",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=6.0,
        generator=_generator(),
        output_type="latent",
    ).images
    assert not torch.allclose(got, single, atol=1e-3)


def test_and_with_editing_inside_a_part(sd_pipe):
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)
    got = pipe(
        "a [red:green:1] circle AND a blue square :0.5",
        num_inference_steps=3,
        guidance_scale=4.0,
        generator=_generator(),
        output_type="latent",
    ).images
    embeds = pipe.conditioner.encode(["", "a red circle", "a green circle", " a blue square"]).tokens
    empty, red, green, blue = (embeds[i : i + 1] for i in range(4))
    pipe.scheduler.set_timesteps(3)
    latents = torch.randn((1, 4, 32, 32), generator=_generator()) * pipe.scheduler.init_noise_sigma
    for step, t in enumerate(pipe.scheduler.timesteps):
        contexts = torch.cat([empty, red if step <= 1 else green, blue])  # [red:green:1]: steps 0, 1 read red
        with torch.no_grad():
            noise = pipe.unet(torch.cat([latents] * 3), t, encoder_hidden_states=contexts).sample
        uncond = noise[0:1]
        combined = uncond + (noise[1:2] - uncond) * 4.0 + (noise[2:3] - uncond) * (0.5 * 4.0)
        latents = pipe.scheduler.step(combined, t, latents).prev_sample
    torch.testing.assert_close(got, latents, rtol=1e-5, atol=1e-5)


def test_plain_prompts_keep_the_plain_path(sd_pipe):
    """No editing and no AND: the image is StableDiffusionPipeline's, bit for bit (unchanged)."""
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)
    ours = pipe(
        "a (red:1.2) circle",
        negative_prompt="blurry",
        num_inference_steps=3,
        generator=_generator(),
        output_type="latent",
    ).images
    kwargs = pipe.conditioner.pipeline_kwargs("a (red:1.2) circle", "blurry")
    theirs = sd_pipe(**kwargs, num_inference_steps=3, generator=_generator(), output_type="latent").images
    assert torch.equal(ours, theirs)


def test_an_and_in_a_negative_prompt_is_text_as_a1111_reads_negatives_whole(sd_pipe):
    """A1111 encodes a negative prompt whole (get_learned_conditioning, no AND split). Before:
    an error that said so while refusing the prompt."""
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)

    def image(negative, prompt="a cat"):
        return pipe(
            prompt, negative_prompt=negative, num_inference_steps=2, generator=_generator(), output_type="latent"
        )

    kwargs = pipe.conditioner.pipeline_kwargs("a cat", "x AND y")  # the plain text, AND included
    theirs = sd_pipe(**kwargs, num_inference_steps=2, generator=_generator(), output_type="latent").images
    assert torch.equal(image("x AND y").images, theirs)
    # with an edit in the prompt (the plan path), the negative is still one text
    edited = image("x [AND:AND:0] y", prompt="a [cat:dog:0.5]").images
    assert torch.equal(edited, image("x AND y", prompt="a [cat:dog:0.5]").images)
    cond = TextConditioner.from_pipeline(sd_pipe)
    with_steps = cond.pipeline_kwargs("a cat", "x [dark:AND:0] y", num_inference_steps=4)
    assert torch.equal(with_steps["negative_prompt_embeds"], kwargs["negative_prompt_embeds"])


def test_bad_combinations_are_refused_before_any_work(sd_pipe):
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe)
    with pytest.raises(ValueError, match="`negative_prompt_embeds` cannot go with"):
        pipe(EDITED, negative_prompt_embeds=torch.zeros(1, 77, 32), num_inference_steps=2)
