"""Prompt editing across SDXL's base + refiner hand-off (`denoising_end` on the base,
`denoising_start` on the next model): each step reads the text that one model running the
whole schedule reads at that step, as A1111's refiner switch keeps one step counter across
the model swap. Which text a step reads is recorded by a callback that matches the step's
prompt embeddings against diffusers' `encode_prompt` of each candidate text."""

from __future__ import annotations

import pytest
import torch
from diffusers import HeunDiscreteScheduler, PNDMScheduler, StableDiffusionXLPipeline
from test_img2img_inpaint import box_mask
from tiny_pipelines import build_sdxl

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline

STEPS = 8
COLOURS = ("red", "blue")


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipes():
    """(diffusers' SDXL base, ours from it, our img2img and inpaint from ours): one set of modules."""
    peer = quiet(StableDiffusionXLPipeline(**dict(build_sdxl().components), add_watermarker=False))
    base = quiet(CLIPConditionedPipeline.from_pipe(peer))
    img2img = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(base))
    inpaint = quiet(CLIPConditionedInpaintPipeline.from_pipe(base))
    return peer, base, img2img, inpaint


def recorder(peer):
    """(callback, the colours it saw): the colour of "a <colour> circle" whose `encode_prompt`
    tokens each step's prompt row equals ("?" for none)."""
    texts = {
        colour: peer.encode_prompt(
            f"a {colour} circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )[0]
        for colour in COLOURS
    }
    seen: list[str] = []

    def callback(pipe, index, timestep, tensors):
        row = tensors["prompt_embeds"][-1:]  # the step's prompt (after the negative's row)
        seen.append(next((colour for colour, tokens in texts.items() if torch.equal(row, tokens)), "?"))
        return {}

    return callback, seen


def read(peer, pipe, prompt: str, **kwargs):
    """(the colour each loop iteration read, the output latents)."""
    callback, seen = recorder(peer)
    latents = pipe(
        prompt=prompt,
        num_inference_steps=kwargs.pop("num_inference_steps", STEPS),
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        **kwargs,
    ).images
    return seen, latents


def handed_off(peer, base, experts, prompt: str, splits: list[float]) -> list[str]:
    """The colours read by the base up to `splits[0]`, then by each expert from one split to
    the next (the last to the end), each from the latents the one before left."""
    seen, latents = read(peer, base, prompt, denoising_end=splits[0])
    ends = [*splits[1:], None]
    for expert, start, end in zip(experts, splits, ends):
        more, latents = read(peer, expert, prompt, image=latents, denoising_start=start, denoising_end=end)
        seen += more
    return seen


PROMPTS = [
    "a [red:blue:0.5] circle",  # a fraction: int(0.5 x 8) = 4, steps 0-4 red
    "a [red:blue:0.3] circle",  # switches inside the base's part
    "a [red:blue:5] circle",  # an integer step: steps 0-5 red
    "a [red|blue] circle",  # alternation goes on counting
    "a [blue:red:0.25] circle",  # one colour over the refiner's part: the plain path
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("splits", [[0.5], [0.3], [0.3, 0.7]], ids=["half", "0.3", "three_experts"])
def test_each_step_reads_what_one_model_reads(pipes, prompt, splits) -> None:
    peer, base, img2img, _ = pipes
    one_model, _ = read(peer, base, prompt)
    assert "?" not in one_model and len(set(one_model)) == 2  # the edit switches within the schedule
    got = handed_off(peer, base, [img2img] * len(splits), prompt, splits)
    assert got == one_model


def test_one_model_switches_as_a1111_and_inpaint_goes_on_counting_too(pipes) -> None:
    """The one-model reading the comparisons rest on, written out (A1111's rule: step i reads
    the first text while i <= int(when x steps)), and the inpaint pipeline as the refiner."""
    peer, base, _, inpaint = pipes
    prompt = "a [red:blue:0.5] circle"
    assert read(peer, base, prompt)[0] == ["red"] * 5 + ["blue"] * 3
    seen, latents = read(peer, base, prompt, denoising_end=0.5)
    more, _ = read(peer, inpaint, prompt, image=latents, mask_image=box_mask(), denoising_start=0.5)
    assert seen + more == ["red"] * 5 + ["blue"] * 3


def test_custom_timesteps_are_counted_across_the_hand_off(pipes) -> None:
    """Uneven custom timesteps (Euler takes them): the refiner counts the schedule it is given,
    so each step reads what one model running those timesteps reads."""
    peer, base, img2img, _ = pipes
    custom = dict(timesteps=[999, 900, 800, 650, 420, 260, 120, 30], num_inference_steps=None)
    prompt = "a [red:blue:0.5] circle"
    one_model, _ = read(peer, base, prompt, **custom)
    assert one_model == ["red"] * 5 + ["blue"] * 3
    first, latents = read(peer, base, prompt, denoising_end=0.5, **custom)
    second, _ = read(peer, img2img, prompt, image=latents, denoising_start=0.5, **custom)
    assert (len(first), len(second)) == (4, 4)  # timesteps above 500, then below it
    assert first + second == one_model


def test_a_refiner_left_one_step_runs_it_reading_the_last_text(pipes) -> None:
    peer, base, img2img, _ = pipes
    prompt = "a [red:blue:0.5] circle"
    first, latents = read(peer, base, prompt, denoising_end=0.9)
    second, _ = read(peer, img2img, prompt, image=latents, denoising_start=0.9)
    assert (len(first), second) == (STEPS - 1, ["blue"])
    assert first + second == read(peer, base, prompt)[0]


def test_strength_with_custom_timesteps_counts_the_steps_that_run(pipes) -> None:
    """By `strength`, prompt editing counts the steps that run, from the first of them: half of
    eight custom timesteps runs four, and [red:blue:0.5] switches after int(0.5 x 4) = 2 of them,
    as with eight steps by count."""
    peer, _, img2img, _ = pipes
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompt = "a [red:blue:0.5] circle"
    custom = dict(timesteps=[999, 900, 800, 650, 420, 260, 120, 30], num_inference_steps=None)
    seen, _ = read(peer, img2img, prompt, image=source, strength=0.5, **custom)
    assert seen == ["red"] * 3 + ["blue"]
    assert seen == read(peer, img2img, prompt, image=source, strength=0.5)[0]


def test_a_second_order_scheduler_counts_steps_across_the_hand_off(pipes) -> None:
    """Heun calls the UNet twice a step. The base stops after the predictor of the step the
    cut falls in and the refiner runs that step again whole (diffusers' `get_timesteps` keeps
    whole pairs), so the two overlap by one iteration: each reads what one model reads at the
    same iterations of the whole schedule."""
    peer, base, img2img, _ = pipes
    heun = HeunDiscreteScheduler.from_config(base.scheduler.config)
    base_heun = quiet(CLIPConditionedPipeline.from_pipe(base, scheduler=heun))
    img2img_heun = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(img2img, scheduler=heun))
    prompt = "a [red:blue:0.5] circle"
    one_model, _ = read(peer, base_heun, prompt)
    # 15 iterations: steps 0-6 twice (a predictor and a corrector), step 7 once; steps 0-4 read red
    assert one_model == ["red"] * 10 + ["blue"] * 5
    first, latents = read(peer, base_heun, prompt, denoising_end=0.5)
    second, _ = read(peer, img2img_heun, prompt, image=latents, denoising_start=0.5)
    assert (len(first), len(second)) == (7, 9)  # iterations 0-6 and 6-14
    assert first == one_model[:7] and second == one_model[6:]


@pytest.mark.parametrize("split", [0.5, 0.2], ids=["after_the_warm_up", "within_step_0"])
def test_pndm_warm_up_is_counted_once_across_the_hand_off(pipes, split) -> None:
    """PNDM (PLMS, as Stable Diffusion 1.5 ships it) runs N steps in N + 1 iterations, the warm-up
    within step 0: the refiner's part must not count that iteration as one more step, whether the
    cut falls after step 0 or inside it (0.2: the base runs one iteration of the 9)."""
    peer, base, img2img, _ = pipes
    pndm = PNDMScheduler.from_config(base.scheduler.config, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    base_pndm = quiet(CLIPConditionedPipeline.from_pipe(base, scheduler=pndm))
    img2img_pndm = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(img2img, scheduler=pndm))
    prompt = "a [red:blue:0.5] circle"
    one_model, _ = read(peer, base_pndm, prompt)
    # 9 iterations: step 0 twice (the warm-up), steps 1-4 red, 5-7 blue
    assert one_model == ["red"] * 6 + ["blue"] * 3
    first, latents = read(peer, base_pndm, prompt, denoising_end=split)
    second, _ = read(peer, img2img_pndm, prompt, image=latents, denoising_start=split)
    assert len(first) == (5 if split == 0.5 else 1)
    assert first + second == one_model


def whole_recorder(peer):
    """(callback, what it saw): for each iteration, the colours of the prompt's row, the
    negative's row, the prompt's pooled vector and the negative's, each matched against
    diffusers' `encode_prompt` of "a <colour> circle" ("?" for none)."""
    encoded = {
        colour: peer.encode_prompt(
            f"a {colour} circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        for colour in COLOURS
    }
    seen: list[tuple[str, ...]] = []

    def colour(row, which: int) -> str:
        return next((name for name, outputs in encoded.items() if torch.equal(row, outputs[which])), "?")

    def callback(pipe, index, timestep, tensors):
        embeds, pooled = tensors["prompt_embeds"], tensors["add_text_embeds"]
        seen.append((colour(embeds[1:], 0), colour(embeds[:1], 0), colour(pooled[1:], 2), colour(pooled[:1], 2)))
        return {}

    return callback, seen


@pytest.mark.parametrize("split, base_steps", [(0.5, 4), (0.1, 1)], ids=["half", "one_step_then_the_rest"])
def test_an_edited_negative_and_the_pooled_vectors_go_on_counting_across_the_hand_off(pipes, split, base_steps) -> None:
    """Not only the prompt's token rows: an edited negative prompt's rows and both pooled vectors
    (SDXL's `add_text_embeds`) read at each step what one model reads there (the refiner's
    schedule is cut at its first step for all four; 0.1 cuts it after one step of eight)."""
    peer, base, img2img, _ = pipes
    texts = dict(prompt="a [red:blue:0.5] circle", negative_prompt="a [blue:red:0.25] circle")

    def run(pipe, **kwargs):
        callback, seen = whole_recorder(peer)
        settings = dict(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
        inputs = ["prompt_embeds", "add_text_embeds"]
        images = pipe(
            **texts, **settings, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs, **kwargs
        )
        return seen, images.images

    one_model, _ = run(base)
    # prompt: steps 0-4 red, then blue; negative: steps 0-2 blue, then red; pooled as the rows
    expected = [("red", "blue")] * 3 + [("red", "red")] * 2 + [("blue", "red")] * 3
    assert one_model == [(p, n, p, n) for p, n in expected]
    first, latents = run(base, denoising_end=split)
    second, _ = run(img2img, image=latents, denoising_start=split)
    assert len(first) == base_steps
    assert first + second == one_model
