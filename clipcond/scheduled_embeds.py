"""Embeddings that change between denoising steps: prompt editing and alternation, encoded once.

`PromptSchedule` holds every distinct text a batch of prompts (and negatives) reads over the
steps, encoded in one batch (so all share one sequence length and a step's embeddings can
replace another's), and which row conditions each prompt at each step. Pooled vectors that a
text projection finishes (SDXL's, SD3's) are projected per step, over that step's prompts and
then its negatives, the two batches of diffusers' `encode_prompt`: the projection's rounding
depends on its row count, so a step's pooled vectors are those of `encode_prompt` given that
step's texts, bit for bit. `StepSwap` is a
`callback_on_step_end` for a diffusers pipeline that puts the next step's rows in place where
the text changes; which tensors it may replace is the family's (`Family.step_callback_tensors`).

A prompt is a text every encoder reads, or a tuple of one text per encoder (per-encoder
prompts such as SDXL's `prompt_2`); each text of a tuple is scheduled on its own.

How diffusers' loops number their steps (second-order and PNDM schedulers, img2img's `strength`,
SDXL's `denoising_start` / `denoising_end` hand-off) is `clipcond.denoising_steps`; SD3's
skip-layer pass is `clipcond.skip_layer_rows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipcond.denoising_steps import (
    hand_off,
    loop_start,
    scheduler_order,
    skipped_before_start,
    step_of_iteration,
    warmup_iterations,
)
from clipcond.embeds import PromptEmbeds
from clipcond.families import Family
from clipcond.quoting import quoted
from clipcond.scalars import as_int
from clipcond.schedule import fixed_text, has_editing, has_schedule, split_and, texts_per_step
from clipcond.skip_layer_rows import SkipLayerRows

# A text every encoder reads, or one text per encoder.
PromptText = str | tuple[str, ...]


@dataclass
class PromptSchedule:
    """What conditions each step of a batch of prompts.

    Attributes:
        texts: the distinct texts (or per-encoder tuples of texts) read at some step (prompts'
            and negatives'), in first use order.
        embeds: their embeddings, one row per text: tokens (texts, seq, width).
        prompt_rows: per step, the row in `embeds` of each prompt.
        negative_rows: per step, the row of each negative prompt; None without negatives.
        step_pooled: per step, the pooled vectors of its prompts then its negatives,
            (prompts + negatives, pooled width), projected as `encode_prompt` projects them;
            None where `embeds` has no pooled vector (then `embeds_at` selects from `embeds`).
    """

    texts: list[str]
    embeds: PromptEmbeds
    prompt_rows: list[list[int]]
    negative_rows: list[list[int]] | None
    step_pooled: list[torch.Tensor] | None = None

    @property
    def num_steps(self) -> int:
        return len(self.prompt_rows)

    def rows_at(self, step: int) -> tuple[list[int], list[int] | None]:
        """(prompt rows, negative rows or None) of denoising step `step` (from 0)."""
        return self.prompt_rows[step], None if self.negative_rows is None else self.negative_rows[step]

    def embeds_at(self, step: int) -> tuple[PromptEmbeds, PromptEmbeds | None]:
        """(prompts' embeddings, negatives' or None) of step `step`: (prompts, seq, width) each."""
        prompts, negatives = self.rows_at(step)
        positive = self._select(prompts)
        negative = None if negatives is None else self._select(negatives)
        if self.step_pooled is not None:
            pooled = self.step_pooled[step].to(positive.tokens.device)
            positive = dataclasses.replace(positive, pooled=pooled[: len(prompts)])
            if negative is not None:
                negative = dataclasses.replace(negative, pooled=pooled[len(prompts) :])
        return positive, negative

    def changes_after(self, step: int) -> bool:
        """True when step `step + 1` reads another text than step `step` for some prompt."""
        return step + 1 < self.num_steps and self.rows_at(step + 1) != self.rows_at(step)

    @property
    def changes(self) -> bool:
        """True when any prompt reads another text at some step."""
        return any(self.changes_after(step) for step in range(self.num_steps - 1))

    def segments(self, index: int = 0) -> list[tuple[int, int, PromptText]]:
        """(first step, end step exclusive, text) runs of prompt `index`."""
        runs: list[tuple[int, int, PromptText]] = []
        for step, rows in enumerate(self.prompt_rows):
            text = self.texts[rows[index]]
            if runs and runs[-1][2] == text:
                runs[-1] = (runs[-1][0], step + 1, text)
            else:
                runs.append((step, step + 1, text))
        return runs

    def _select(self, rows: list[int]) -> PromptEmbeds:
        return self.embeds.select(torch.tensor(rows, device=self.embeds.tokens.device))


def _per_step(prompt: PromptText, steps: int) -> list[PromptText]:
    """The text (or per-encoder tuple) `prompt` reads at each of `steps` steps."""
    if isinstance(prompt, str):
        return texts_per_step(prompt, steps)
    return list(zip(*(texts_per_step(text, steps) for text in prompt)))


def _texts_of(prompt: PromptText) -> tuple[str, ...]:
    return (prompt,) if isinstance(prompt, str) else tuple(prompt)


# A step's rows: (prompt rows, negative rows or None), as indices into the schedule's texts.
StepRows = tuple[tuple[int, ...], tuple[int, ...] | None]
# (texts, each distinct step's rows) -> (their PromptEmbeds, each such step's pooled vectors of
# prompts then negatives, or None without pooled vectors).
ScheduleEncoder = Callable[[list[PromptText], list[StepRows]], tuple[PromptEmbeds, list[torch.Tensor] | None]]


def build_schedule(
    encode: ScheduleEncoder,
    prompts: Sequence[PromptText],
    negatives: Sequence[PromptText] | None,
    num_inference_steps: int,
) -> PromptSchedule:
    """The schedule of `prompts` (and `negatives`) over `num_inference_steps` steps; `encode`
    runs once, on every distinct text (or per-encoder tuple) and every distinct step's rows."""
    per_prompt = [_per_step(prompt, num_inference_steps) for prompt in prompts]
    per_negative = None if negatives is None else [_per_step(n, num_inference_steps) for n in negatives]
    texts = list(dict.fromkeys(t for steps in (per_prompt + (per_negative or [])) for t in steps))
    row = {text: index for index, text in enumerate(texts)}

    def rows(per_text: list[list[PromptText]]) -> list[list[int]]:
        return [[row[steps[step]] for steps in per_text] for step in range(num_inference_steps)]

    prompt_rows = rows(per_prompt)
    negative_rows = None if per_negative is None else rows(per_negative)
    at_step: list[StepRows] = [
        (tuple(prompt_rows[step]), None if negative_rows is None else tuple(negative_rows[step]))
        for step in range(num_inference_steps)
    ]
    distinct = list(dict.fromkeys(at_step))
    embeds, pooled = encode(texts, distinct)
    step_pooled = None if pooled is None else [dict(zip(distinct, pooled))[rows] for rows in at_step]
    return PromptSchedule(
        texts=texts, embeds=embeds, prompt_rows=prompt_rows, negative_rows=negative_rows, step_pooled=step_pooled
    )


class StepSwap:
    """A `callback_on_step_end` that replaces the embeddings where the schedule's text changes.

    A diffusers pipeline calls it after every iteration of its loop: one per denoising step,
    `scheduler.order` of them per step (Heun, KDPM2: a predictor and a corrector), and PNDM's
    warm-up iteration within step 0 (`step_of_iteration`). Before the first iteration of a new
    step whose text changes it returns that step's tensors, laid out as the pipeline keeps them:
    negatives' rows first under guidance (when the family's tensors hold them), each prompt's
    row repeated for its `num_images_per_prompt` images, on the tensor's device and in its dtype.
    A schedule without negatives under guidance gives zeros in their place (SDXL without a
    negative prompt).

    SD3's skip-layer guidance pass (`skip_guidance_layers`) reads embeddings the pipeline keeps
    aside, out of the callback's reach: `SkipLayerRows` gives it each step's prompt rows.

    SDXL's base + refiner hand-off (diffusers' `denoising_end` on one call, `denoising_start` on
    the next, read from the pipeline as its properties) counts the whole schedule on both sides,
    as `CLIPConditionedPipeline` does: give `pipeline_kwargs` the pipeline's `num_inference_steps`
    for each; a call cut by `denoising_end` runs the first of those steps, and one given
    `denoising_start` goes on from the step diffusers' `get_timesteps` starts it at, so each step
    reads what one model running the whole schedule reads.

    Raises:
        ValueError: at the first iteration (after the first step), when the pipeline runs
            another number of steps than the schedule covers (an img2img or inpaint pipeline
            runs ``int(num_inference_steps * strength)`` of them; after `denoising_start`, or
            before `denoising_end` cuts them, the whole schedule's): the texts would change late
            or never; or when a call given `denoising_start` starts at a step that reads another
            text than step 0, whose embeddings it was given (no callback runs before the first
            step).
    """

    def __init__(self, schedule: PromptSchedule, family: Family) -> None:
        self.schedule = schedule
        self.family = family
        self.tensor_inputs = [name for _, name in family.step_callback_tensors]
        self.skip_layer_rows: SkipLayerRows | None = None
        self.skipped = 0  # loop iterations of the set schedule before the call's first

    def __call__(self, pipe: Any, iteration: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        scheduler = getattr(pipe, "scheduler", None)
        order, warmup = scheduler_order(scheduler), warmup_iterations(scheduler)
        if iteration == 0:
            self.skipped = self._check_steps_run(pipe, order, warmup, timestep)
            self._check_first_step(pipe, step_of_iteration(self.skipped, order, warmup), tensors)
            self._follow_skip_layer_pass(pipe)
        iterations = getattr(pipe, "_num_timesteps", None)
        if self.skip_layer_rows is not None and isinstance(iterations, int) and iteration + 1 >= iterations:
            self.skip_layer_rows.remove()  # the last iteration: the call is over
        step = step_of_iteration(iteration + self.skipped, order, warmup)  # of the schedule the counting covers
        following = step_of_iteration(iteration + 1 + self.skipped, order, warmup)
        if following == step or not self.schedule.changes_after(step):
            return {}
        return self._step_tensors(following, pipe, tensors)

    def _step_tensors(self, step: int, pipe: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step `step`'s tensors, laid out as the pipeline keeps those in `tensors`."""
        positive, negative = self.schedule.embeds_at(step)
        guided = bool(getattr(pipe, "do_classifier_free_guidance", False)) and self.family.step_callback_negatives
        replaced = {}
        for part, name in self.family.step_callback_tensors:
            current = tensors[name]
            rows = [positive.tokens if part == "tokens" else positive.pooled]
            if guided:  # without negatives under guidance, they are zeros (SDXL's empty negative)
                if negative is None:
                    rows.insert(0, torch.zeros_like(rows[0]))
                else:
                    rows.insert(0, negative.tokens if part == "tokens" else negative.pooled)
            stacked = torch.cat(rows)  # (guided halves x prompts, ...)
            images = current.shape[0] // stacked.shape[0]
            replaced[name] = stacked.repeat_interleave(images, dim=0).to(device=current.device, dtype=current.dtype)
        return replaced

    def _follow_skip_layer_pass(self, pipe: Any) -> None:
        """At the first iteration: a `SkipLayerRows` on the pipeline's transformer when its
        forward takes `skip_layers` (SD3's), replacing one a call that raised left behind."""
        if self.skip_layer_rows is not None:
            self.skip_layer_rows.remove()
            self.skip_layer_rows = None
        if SkipLayerRows.applies(pipe):
            self.skip_layer_rows = SkipLayerRows(pipe)

    def _check_steps_run(self, pipe: Any, order: int, warmup: int, timestep: Any) -> int:
        """The loop iterations of the set schedule before the call's first (diffusers' SDXL
        `denoising_start`; 0 otherwise), once the steps the schedule counts are checked: the
        whole set schedule after `denoising_start`; without it, the call's steps, those that
        run before a `denoising_end` cuts them (`hand_off`)."""
        scheduler = getattr(pipe, "scheduler", None)
        iterations = getattr(pipe, "_num_timesteps", None)  # set by diffusers before its loop, after any cut
        if not isinstance(iterations, int) or iterations < 1:
            return 0
        start, end = hand_off(pipe, "denoising_start"), hand_off(pipe, "denoising_end")
        skipped, counted = 0, iterations
        if start is not None:
            skipped = skipped_before_start(scheduler, start)
            counted = len(scheduler.timesteps)
        elif end is not None:
            counted = len(scheduler.timesteps) - loop_start(scheduler, timestep)
        steps = -(-max(counted - warmup, 0) // order)
        if steps == self.schedule.num_steps:
            return skipped
        if start is None and end is None:
            raise ValueError(
                f"the pipeline runs {steps} denoising steps but the prompt's schedule was made for "
                f"{self.schedule.num_steps}: give `pipeline_kwargs` the number of steps that run as "
                "`num_inference_steps` (img2img and inpaint run int(num_inference_steps * strength) of them)"
            )
        cut = " and ".join(
            f"`{name}` {value}" for name, value in (("denoising_start", start), ("denoising_end", end)) if value
        )
        whole = "its whole schedule" if start is not None else "the steps it runs without `denoising_end`"
        raise ValueError(
            f"the pipeline's schedule has {steps} denoising steps ({cut}: this call runs a part of them) but the "
            f"prompt's schedule was made for {self.schedule.num_steps}: "
            f"give `pipeline_kwargs` {whole} as `num_inference_steps` ({steps}, the pipeline's own "
            "`num_inference_steps` in a base + refiner hand-off), not the steps one side runs: each model "
            "then counts every step, and the pair reads what one model running the whole schedule reads"
        )

    def _check_first_step(self, pipe: Any, first: int, tensors: dict[str, torch.Tensor]) -> None:
        """Refuse a call whose first step (`first` of the schedule, after `denoising_start`) has
        just read step 0's text, which `pipeline_kwargs` gave, where the schedule gives it another:
        no callback runs before the first step, so the rest would be one step late."""
        if first == 0 or self.schedule.rows_at(first) == self.schedule.rows_at(0):
            return
        expected = self._step_tensors(first, pipe, tensors)
        if all(torch.equal(expected[name], tensors[name]) for name in expected):
            return  # the call was given that step's embeddings
        texts, now, then = self.schedule.texts, self.schedule.rows_at(first)[0], self.schedule.rows_at(0)[0]
        index = next((i for i, (row, first_row) in enumerate(zip(now, then)) if row != first_row), None)
        what = (
            "another negative text"
            if index is None
            else f"{texts[now[index]]!r}, where step 0 reads {texts[then[index]]!r}"
        )
        raise ValueError(
            f"this call starts at step {first} of the prompt's {self.schedule.num_steps} (`denoising_start` "
            f"{hand_off(pipe, 'denoising_start')}), which reads {what}, but it was given step 0's embeddings, as "
            "`pipeline_kwargs` returns them, and a step callback runs only after a step: run this part with "
            "CLIPConditionedImg2ImgPipeline (or its inpaint sibling), which starts on that step's text, or give "
            f"the call step {first}'s embeddings (`TextConditioner.schedule(...).embeds_at({first})`)"
        )


def check_steps(num_inference_steps: Any) -> int:
    """`num_inference_steps` as a Python int (numpy's integers and 0-d integer tensors read as
    the int they hold); a ValueError unless it is an int >= 1."""
    steps = as_int(num_inference_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
    return steps


def fixed_prompts(prompts: Sequence[PromptText], num_inference_steps: int, negative: bool = False) -> list[PromptText]:
    """`prompts` with each text whose schedule never changes over `num_inference_steps` steps
    replaced by the one text it reads (`clipcond.schedule.fixed_text`): ``"a [cat:dog:0]"``
    conditions every step on "a dog", as in A1111, not on its brackets read as weights.
    `negative`: the texts are negative prompts, read whole (an AND in them is text)."""
    split_at_and = not negative
    return [
        fixed_text(prompt, num_inference_steps, split_at_and)
        if isinstance(prompt, str)
        else tuple(fixed_text(text, num_inference_steps, split_at_and) for text in prompt)
        for prompt in prompts
    ]


def schedule_for_pipeline(
    encode,
    family: Family,
    prompts: Sequence[PromptText],
    negatives: Sequence[PromptText] | None,
    num_inference_steps: int | None,
) -> PromptSchedule | None:
    """The schedule `TextConditioner.pipeline_kwargs` applies through `family`'s step callback,
    or None when no text changes between steps.

    Raises:
        ValueError: an ``AND`` in a prompt (composable prompts run the denoiser per part:
            CLIPConditionedPipeline does that for UNet families; in a negative prompt, which
            A1111 reads whole, AND is text), editing without `num_inference_steps`, or a change
            the family's callback cannot replace (for Flux's CLIP text: put the edit in `prompt_2`).
    """
    texts = [text for prompt in [*prompts, *(negatives or [])] for text in _texts_of(prompt)]
    for text in (text for prompt in prompts for text in _texts_of(prompt)):
        if len(split_and(text)) > 1:
            raise ValueError(
                f"{quoted(text)} combines prompts with AND (composable diffusion), which needs the denoiser run on each "
                f"part at every step: {_pipeline_advice(family, 'which runs AND', 'a prompt without AND')}"
            )
    if num_inference_steps is None:
        edited = [text for text in texts if has_editing(text)]
        if edited:
            raise ValueError(
                f"{quoted(edited[0])} uses prompt editing or alternation, which depends on the step: pass "
                "`num_inference_steps` (the number the pipeline will run)"
            )
        return None
    num_inference_steps = check_steps(num_inference_steps)
    if not any(has_schedule(text, num_inference_steps) for text in texts):
        return None
    schedule = build_schedule(encode, prompts, negatives, num_inference_steps)
    swappable = dict(family.step_callback_tensors)
    missing = []
    if "tokens" not in swappable and _changes(schedule.prompt_rows):
        missing.append("the prompt embeddings")
    if schedule.embeds.pooled is not None and "pooled" not in swappable:
        first = schedule.embeds_at(0)[0].pooled
        if any(not torch.equal(schedule.embeds_at(step)[0].pooled, first) for step in range(schedule.num_steps)):
            missing.append("the pooled vector")
    if schedule.negative_rows is not None and _changes(schedule.negative_rows):
        if "tokens" not in swappable or not family.step_callback_negatives:
            missing.append("the negative prompt's embeddings")
    if missing:
        advice = _pipeline_advice(family, "which edits any text", "a prompt without editing or alternation")
        t5_text = next((slot.prompt for slot in family.slots if slot.kind == "t5" and slot.prompt != "prompt"), None)
        if missing == ["the pooled vector"] and t5_text and "tokens" in swappable:  # Flux: only the CLIP text pools
            advice = f"put the edit in `{t5_text}` (the T5 text), which the callback can swap; keep `prompt` fixed"
        raise ValueError(
            f"this schedule changes {' and '.join(missing)} between steps, which the {family.name!r} pipelines' "
            f"callback_on_step_end cannot replace; {advice}"
        )
    return schedule


def _pipeline_advice(family: Family, what_it_does: str, instead: str) -> str:
    """What to do when `family`'s pipelines cannot run a prompt: CLIPConditionedPipeline for a
    UNet family (SD, SDXL, custom); `instead` where it cannot take the family's pipelines."""
    if family.name in ("sd", "sdxl", "custom"):  # the recipes CLIPConditionedPipeline runs
        return f"use {instead} for this family, or CLIPConditionedPipeline, {what_it_does}"
    return f"use {instead} for this family (CLIPConditionedPipeline runs UNet pipelines only)"


def _changes(rows_per_step: list[list[int]]) -> bool:
    """Whether some step's rows differ from step 0's."""
    return any(rows != rows_per_step[0] for rows in rows_per_step)
