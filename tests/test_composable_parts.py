"""`pipelines/composable.py`'s `fixed_prompt_arguments` called directly: which texts a call that
starts partway into its schedule (SDXL's `denoising_start`) reads as one fixed text, written
out by hand from A1111's rule (step s of n reads the edit's second text once s >= when x n)."""

from __future__ import annotations

from clipcond.pipelines.composable import EditSteps, fixed_prompt_arguments


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


def test_a_negative_prompt_list_beside_and_is_read_as_its_text() -> None:
    """`negative_prompt=["dark"]` beside an AND prompt gives the image of `negative_prompt="dark"`
    (found by mutation testing: `x_plan_for_call__mutmut_19`, the list replaced by the argument's
    name as text); a negative list of another length is refused naming `negative_prompt`."""
    import numpy as np
    import pytest
    import torch
    from tiny_pipelines import sd_components

    from clipcond import CLIPConditionedPipeline

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
    """`num_images_per_prompt=2` with one generator per image: each image of an AND prompt is the
    image a one-image call with its generator makes (the parts' rows of image 2 read image 2's
    latents; found by mutation testing: `x_build_plan__mutmut_50`, `_53`, `- copy` for `+ copy`)."""
    import numpy as np
    import torch
    from tiny_pipelines import sd_components

    from clipcond import CLIPConditionedPipeline

    pipe = CLIPConditionedPipeline(**sd_components())
    pipe.set_progress_bar_config(disable=True)
    settings = dict(prompt="a red circle :1.2 AND a blue square :0.8", negative_prompt="dark", num_inference_steps=2)
    settings.update(height=32, width=32, output_type="np")
    both = pipe(**settings, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    for index, seed in enumerate((0, 1)):
        alone = pipe(**settings, generator=torch.Generator().manual_seed(seed)).images[0]
        np.testing.assert_allclose(both.images[index], alone, rtol=0, atol=1e-5)  # a batch of 2 vs 1: 1.8e-7 here
