"""clipcond.scheduled_embeds where its mutation run (benchmarks/results/mutation.md) found it unguarded:
one-step schedules, AND and never-changing edits in per-encoder texts, which pipeline each family's
refusal advises, and the refusals' whole messages. The SDXL hand-off cases are in
tests/test_sdxl_handoff_callbacks.py."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import clip_text_model

from clipcond import TextConditioner, clip_tokenizer


def _custom():
    return TextConditioner("custom", clip=[(clip_text_model(0), clip_tokenizer())], projection_dim=8, cache_size=0)


@pytest.mark.parametrize("family", ["sdxl", "custom"])
def test_and_on_sdxl_and_custom_points_to_clip_conditioned_pipeline(family, sdxl_pipe) -> None:
    """CLIPConditionedPipeline runs the SD, SDXL and custom recipes (README, docs): an AND (or an
    edit the family's callback cannot swap) on those points to it, as on SD
    (found by mutation testing: `x__pipeline_advice__mutmut_4`..`_7`, "sdxl"/"custom" misspelt)."""
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0) if family == "sdxl" else _custom()
    with pytest.raises(ValueError, match="AND") as refusal:
        cond.pipeline_kwargs("a cat AND a dog", num_inference_steps=4)
    message = str(refusal.value)
    assert message == (
        "'a cat AND a dog' combines prompts with AND (composable diffusion), which needs the denoiser run on each part at every "
        "step: use a prompt without AND for this family, or CLIPConditionedPipeline, which runs AND"
    )


def test_one_denoising_step_is_a_schedule_of_one_step(sd_pipe) -> None:
    """diffusers runs `num_inference_steps=1` (its pipelines take any int >= 1): so do
    `schedule` and `pipeline_kwargs`; the one step reads step 0's text, which `encode` of that
    text gives (found by mutation testing: `x_check_steps__mutmut_6`, `_7`, `steps <= 1`,
    `steps < 2`, refuse it)."""
    from clipcond.scheduled_embeds import check_steps

    assert check_steps(1) == 1
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    schedule = cond.schedule("a [red|blue] circle", 1)
    assert schedule.num_steps == 1 and schedule.segments() == [(0, 1, "a red circle")]
    kwargs = cond.pipeline_kwargs("a [red|blue] circle", num_inference_steps=1)
    assert torch.equal(kwargs["prompt_embeds"], cond.pipeline_kwargs("a red circle")["prompt_embeds"])


@pytest.mark.parametrize("where", ["prompt", "prompt_2"])
def test_the_and_refusal_quotes_the_text_as_written_even_with_an_edit_that_never_changes(where, sdxl_pipe) -> None:
    """A prompt with AND keeps its text whole before the AND check (`fixed_text`'s
    `split_at_and`): the refusal quotes what the user wrote, in `prompt` and in SDXL's
    per-encoder `prompt_2` alike (found by mutation testing: `x_fixed_prompts__mutmut_1`, the
    default `negative=True`, and `_15`, tuple texts read as negatives, quote "a dog AND a bird")."""
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    text = "a [cat:dog:0] AND a bird"
    kwargs = {"prompt": text} if where == "prompt" else {"prompt": "a cat", "prompt_2": text}
    with pytest.raises(ValueError, match="AND") as refusal:
        cond.pipeline_kwargs(**kwargs, num_inference_steps=4)
    assert "a [cat:dog:0] AND a bird" in str(refusal.value)
    assert "a dog AND a bird" not in str(refusal.value)


def test_an_edit_that_never_changes_in_negative_prompt_2_reads_its_one_text_even_with_and(sdxl_pipe) -> None:
    """Negative prompts are read whole (an AND in them is text, as A1111 reads its negative
    prompt): "a [cat:dog:0] AND a bird" in SDXL's `negative_prompt_2` conditions every step on
    "a dog AND a bird", as it does in `negative_prompt`, not on its brackets read as weights
    (found by mutation testing: `x_fixed_prompts__mutmut_18`, tuple texts split at AND)."""
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    common = dict(prompt="a red circle", negative_prompt="blurry", num_inference_steps=4)
    got = cond.pipeline_kwargs(**common, negative_prompt_2="a [cat:dog:0] AND a bird")
    expected = cond.pipeline_kwargs(**common, negative_prompt_2="a dog AND a bird")
    assert torch.equal(got["negative_prompt_embeds"], expected["negative_prompt_embeds"])
    assert torch.equal(got["negative_pooled_prompt_embeds"], expected["negative_pooled_prompt_embeds"])


FLUX_NEGATIVE = (
    "between steps, which the 'flux' pipelines' callback_on_step_end cannot replace; use a prompt without "
    "editing or alternation for this family (CLIPConditionedPipeline runs UNet pipelines only)"
)


@pytest.mark.parametrize(
    "prompt, changes",
    [
        ("a cat", "the negative prompt's embeddings"),
        ("a [cat:dog:0.5]", "the pooled vector and the negative prompt's embeddings"),
    ],
)
def test_an_edited_negative_on_flux_is_refused_naming_everything_that_changes(flux_pipe, prompt, changes) -> None:
    """diffusers' FluxPipeline lets `callback_on_step_end` replace `prompt_embeds` only (its
    `_callback_tensor_inputs`), not the negatives of `true_cfg_scale`: an edited negative prompt
    is refused with the general advice (moving the edit to `prompt_2` cannot help a negative),
    naming each thing that changes (found by mutation testing: `x_schedule_for_pipeline__mutmut_112`
    gave the "put the edit in `prompt_2`" advice, `_123` joined with " AND ")."""
    from diffusers import FluxPipeline

    assert "negative_prompt_embeds" not in FluxPipeline._callback_tensor_inputs
    cond = TextConditioner.from_pipeline(flux_pipe, cache_size=0)
    with pytest.raises(ValueError) as refusal:
        cond.pipeline_kwargs(prompt, negative_prompt="[blurry:sharp:0.5]", num_inference_steps=4)
    assert str(refusal.value) == f"this schedule changes {changes} {FLUX_NEGATIVE}"


def test_a_one_step_call_given_a_longer_schedule_is_refused(sd_pipe) -> None:
    """A call of diffusers' StableDiffusionPipeline that runs 1 step, given `pipeline_kwargs` of a
    4-step schedule, would never reach the edit: refused at its first callback as any other count
    is (found by mutation testing: `xǁStepSwapǁ_check_steps_run__mutmut_19`, `iterations <= 1`,
    skipped the check for one iteration)."""
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    kwargs = cond.pipeline_kwargs("a [red:blue:0.5] circle", num_inference_steps=4)
    sd_pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError) as refusal:
        sd_pipe(**kwargs, num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert str(refusal.value) == (  # in full (`_check_steps_run__mutmut_66` changed its tail)
        "the pipeline runs 1 denoising steps but the prompt's schedule was made for 4: give `pipeline_kwargs` the "
        "number of steps that run as `num_inference_steps` (img2img and inpaint run int(num_inference_steps * "
        "strength) of them)"
    )


def test_editing_without_the_step_count_is_refused_naming_the_text(sd_pipe) -> None:
    """An edit depends on the step: without `num_inference_steps` the refusal quotes the edited
    text and says what to pass (found by mutation testing: `x_schedule_for_pipeline__mutmut_25`,
    the text quoted as None)."""
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    with pytest.raises(ValueError) as refusal:
        cond.pipeline_kwargs("a [cat:dog:0.5] on a mat")
    assert str(refusal.value) == (
        "'a [cat:dog:0.5] on a mat' uses prompt editing or alternation, which depends on the step: pass "
        "`num_inference_steps` (the number the pipeline will run)"
    )


@pytest.mark.parametrize(
    "kwargs, changed",
    [
        ({"prompt": "a [cat:dog:0.5]"}, "the prompt embeddings and the pooled vector"),
        ({"prompt": "a cat", "negative_prompt": "a [cat:dog:0.5]"}, "the negative prompt's embeddings"),
    ],
)
def test_an_edit_on_a_custom_recipe_is_refused_pointing_to_clip_conditioned_pipeline(kwargs, changed) -> None:
    """A custom recipe's pipelines have no step callback clipcond can swap tensors through
    (`Family.step_callback_tensors` is empty): an edited prompt or negative is refused before any
    step, naming everything that changes and pointing to CLIPConditionedPipeline, which runs custom
    recipes and edits any text (found by mutation testing: `x_schedule_for_pipeline__mutmut_97`,
    "WHICH EDITS ANY TEXT")."""
    with pytest.raises(ValueError, match="callback_on_step_end") as refusal:
        _custom().pipeline_kwargs(**kwargs, num_inference_steps=4)
    assert str(refusal.value) == (
        f"this schedule changes {changed} between steps, which the 'custom' pipelines' callback_on_step_end cannot "
        "replace; use a prompt without editing or alternation for this family, or CLIPConditionedPipeline, which "
        "edits any text"
    )


def test_sdxl_img2img_cut_by_denoising_end_counts_the_steps_after_strength(sdxl_pipe) -> None:
    """diffusers' SDXL img2img at strength 0.5 of 8 steps starts its loop at the 5th timestep
    and runs 4; with a `denoising_end` (0.9999: its cutoff rounds to timestep 0, so all 4 run),
    `pipeline_kwargs(num_inference_steps=4)` (the steps the call runs without `denoising_end`)
    is what the callback checks the schedule against: all 8 timesteps less the 4 strength
    skips, not plus (found by mutation testing: `xǁStepSwapǁ_check_steps_run__mutmut_46`). The
    image equals diffusers' given the two texts' embeddings and a callback that swaps them
    after step 2 (`[...:0.5]` of 4)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    peer = StableDiffusionXLImg2ImgPipeline(**sdxl_pipe.components)
    peer.set_progress_bar_config(disable=True)
    cond = TextConditioner.from_pipeline(peer, cache_size=0)
    edited = "[a red circle:two blue squares:0.5]"
    schedule = cond.schedule([edited], 4, None)
    assert [step for step in range(4) if schedule.changes_after(step)] == [2]
    first, second = schedule.embeds_at(0)[0], schedule.embeds_at(3)[0]
    kwargs = cond.pipeline_kwargs(edited, num_inference_steps=4)
    assert torch.equal(kwargs["prompt_embeds"], first.tokens)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    settings = dict(image=image, strength=0.5, num_inference_steps=8, denoising_end=0.9999, output_type="latent")

    def run(**kwargs):
        return peer(generator=torch.Generator().manual_seed(0), **settings, **kwargs).images

    def switch(pipe, step, timestep, tensors):
        if step != 2:
            return {}
        rows = tensors["prompt_embeds"].shape[0] // 2
        return {
            "prompt_embeds": torch.cat([tensors["prompt_embeds"][:rows], second.tokens]),
            "add_text_embeds": torch.cat([tensors["add_text_embeds"][:rows], second.pooled]),
        }

    given = {name: value for name, value in kwargs.items() if not name.startswith("callback")}
    expected = run(
        **given, callback_on_step_end=switch, callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"]
    )
    assert peer._num_timesteps == 4 and len(peer.scheduler.timesteps) == 8
    got = run(**kwargs)
    assert torch.equal(got, expected)
