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
