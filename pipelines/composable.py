"""What the UNet reads at each step when prompts change over the steps or combine with AND.

A1111's prompt editing and alternation (`clipcond.schedule`) give each step its own text, and
its ``AND`` (composable diffusion, Liu et al. 2022) splits a prompt into weighted parts whose
noise predictions combine as

    noise = uncond + sum over parts of (weight * guidance_scale) * (cond_part - uncond)

`DenoisingPlan` holds every distinct text's embeddings (encoded once, in one batch), builds
each step's cross-attention context, lays the latents out to match, and combines the UNet's
predictions. Rows: the unconditional ones first (one per image), then each image's parts.
Without guidance and without AND, the rows are the prompts alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from clipcond.conditioning import as_prompt_list
from clipcond.denoising_steps import step_of_iteration, warmup_iterations
from clipcond.embeds import PromptEmbeds
from clipcond.schedule import has_schedule, split_and, texts_per_step
from clipcond.scheduled_embeds import PromptSchedule, fixed_prompts


class EditSteps(NamedTuple):
    """The steps prompt editing counts in a call: `total` steps of schedule, of which the call
    runs from step `first` (0-based) on. Text to image: (the whole schedule's steps, 0), a
    `denoising_end` cutting the loop only; img2img by `strength`: (the steps that run, 0);
    SDXL's `denoising_start`: (the whole schedule's steps, the first kept), so a refiner goes on
    counting where its base, stopped by `denoising_end`, left off. `warmup`: PNDM's warm-up
    iterations within the call's own iterations, where the call cuts them off (a tail after
    `denoising_start` has none); None: read from the scheduler once it is set."""

    total: int
    first: int = 0
    warmup: int | None = None

    def texts(self, prompt: str) -> list[str]:
        """The text `prompt` reads at each step the call runs, ``total - first`` of them."""
        return texts_per_step(prompt, self.total)[self.first :]


@dataclass
class DenoisingPlan:
    """The per-step conditioning of one `CLIPConditionedPipeline` call.

    Attributes:
        schedule: every part's and negative's text per step, encoded.
        part_rows: (parts x images,) long: which row of the schedule's parts, each repeated
            per image, comes at each position of the context (image by image, its parts).
        part_image: (parts x images,) long: the image each part row belongs to.
        part_weight: (parts,) the AND weight of each part row.
        images_per_prompt: how many images each prompt makes.
        guided: whether unconditional rows are run (guidance, or any AND).
        order: the scheduler's order (UNet calls per step).
        scheduler: the pipeline's scheduler, whose set schedule tells how many warm-up calls
            step 0 makes (PNDM's; `clipcond.denoising_steps.warmup_iterations`); None: none.
        warmup: the warm-up calls of the call's own loop where the call knows them
            (`EditSteps.warmup`); None: read from `scheduler`.
    """

    schedule: PromptSchedule
    part_rows: torch.Tensor
    part_image: torch.Tensor
    part_weight: torch.Tensor
    images_per_prompt: int
    guided: bool
    order: int = 1
    scheduler: Any = None
    warmup: int | None = None

    def step_of(self, index: int) -> int:
        """The schedule step of loop iteration `index`, as diffusers counts them: second-order
        schedulers call twice a step, PNDM's warm-up call belongs to step 0
        (`clipcond.denoising_steps.step_of_iteration`). Read during the loop, once the
        scheduler is set for the call."""
        if self.warmup is not None:
            warmup = self.warmup
        else:
            warmup = warmup_iterations(self.scheduler) if index and self.scheduler is not None else 0
        return min(step_of_iteration(index, self.order, warmup), self.schedule.num_steps - 1)

    def rows(self, index: int, device: torch.device, dtype: torch.dtype) -> PromptEmbeds:
        """The UNet rows' embeddings at loop iteration `index`: tokens (rows, seq, width) and
        the pooled vectors (rows, pooled width) where the recipe has them; the unconditional
        rows (if guided; zeros when the plan says so), then the parts' rows."""
        positive, negative = self.schedule.embeds_at(self.step_of(index))
        parts = positive.repeat(self.images_per_prompt)  # (parts x images, seq, width)
        parts = parts.select(self.part_rows.to(parts.tokens.device))
        rows = [parts]
        if self.guided:
            images = self.part_image.max().item() + 1
            if negative is None:  # SDXL's zeros for a missing negative prompt
                uncond = parts.select(torch.zeros(images, dtype=torch.long, device=parts.tokens.device)).zeros_like()
            else:
                uncond = negative.repeat(self.images_per_prompt)
            rows.insert(0, uncond)
        return PromptEmbeds.cat(rows).to(device=device, dtype=dtype)

    def unconditional_rows(self) -> int:
        """How many of the rows are unconditional (one per image when guided, else none)."""
        return self.part_image.max().item() + 1 if self.guided else 0

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents laid out as the context's rows."""
        parts = latents.index_select(0, self.part_image.to(latents.device))
        return torch.cat([latents, parts]) if self.guided else parts

    def combine(self, noise: torch.Tensor, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the guided prediction per image, the text-only prediction for guidance rescale)."""
        if not self.guided:
            return noise, None
        images = noise.shape[0] - self.part_image.numel()
        uncond, cond = noise[:images], noise[images:]
        index = self.part_image.to(noise.device)
        scale = (self.part_weight.to(noise.device, noise.dtype) * guidance_scale).reshape(-1, *([1] * (noise.ndim - 1)))
        delta = cond - uncond.index_select(0, index)
        weights = self.part_weight.to(noise.device, noise.dtype).reshape(scale.shape)
        return uncond.index_add(0, index, delta * scale), uncond.index_add(0, index, delta * weights)


def build_plan(
    conditioner,
    prompts: list[str],
    negatives: list[str] | None,
    steps: EditSteps,
    images_per_prompt: int,
    guided: bool,
    order: int,
    prompt_2: Any = None,
    negative_prompt_2: Any = None,
    scheduler: Any = None,
) -> DenoisingPlan:
    """The plan of a call: prompts split at AND, every text scheduled over `steps.total` steps,
    of which the plan keeps those from `steps.first` on (the steps the call runs).
    `negatives` None: the unconditional rows are zeros (SDXL's `force_zeros_for_empty_prompt`).
    `prompt_2` / `negative_prompt_2`: SDXL's second CLIP's text, scheduled on its own (see
    `TextConditioner.schedule`). `scheduler`: the pipeline's, whose warm-up calls count
    within step 0 (`DenoisingPlan.scheduler`).

    Negative prompts are read whole, as A1111 reads them: an AND there is text.

    Raises:
        ValueError: an AND in a prompt that has a `prompt_2` (which part would the second
            text go with?).
    """
    parts, weights, owners = [], [], []
    for index, prompt in enumerate(prompts):
        for text, weight in split_and(prompt):
            parts.append(text)
            weights.append(weight)
            owners.append(index)
    any_and = len(parts) > len(prompts)
    if any_and and prompt_2:
        raise ValueError(
            "a prompt with AND cannot go with `prompt_2`: AND splits `prompt` into parts, and the second "
            "encoder's text has no part to go with; put the parts in `prompt` alone"
        )
    guided = guided or any_and
    negatives = negatives if guided and negatives is not None else None
    schedule = conditioner.schedule(
        parts,
        steps.total,
        negatives,
        prompt_2=prompt_2,
        negative_prompt_2=negative_prompt_2 if negatives is not None else None,
    )
    schedule = _from_step(schedule, steps.first)
    # After repeat_interleave, part p's copy for image j of its prompt is row p * n + j; the
    # context wants image by image, each image's parts together.
    n = images_per_prompt
    rows, part_image, part_weight = [], [], []
    for prompt_index in range(len(prompts)):
        mine = [part for part, owner in enumerate(owners) if owner == prompt_index]
        for copy in range(n):
            for part in mine:
                rows.append(part * n + copy)
                part_image.append(prompt_index * n + copy)
                part_weight.append(weights[part])
    return DenoisingPlan(
        schedule=schedule,
        part_rows=torch.tensor(rows, dtype=torch.long),
        part_image=torch.tensor(part_image, dtype=torch.long),
        part_weight=torch.tensor(part_weight, dtype=torch.float64),
        images_per_prompt=n,
        guided=guided,
        order=max(1, int(order)),
        scheduler=scheduler,
        warmup=steps.warmup,
    )


def _from_step(schedule: PromptSchedule, first: int) -> PromptSchedule:
    """`schedule` from step `first` on: its step 0 is `schedule`'s step `first` (same texts and
    embeddings; the steps before it, which the call does not run, dropped)."""
    if first == 0:
        return schedule
    return replace(
        schedule,
        prompt_rows=schedule.prompt_rows[first:],
        negative_rows=None if schedule.negative_rows is None else schedule.negative_rows[first:],
        step_pooled=None if schedule.step_pooled is None else schedule.step_pooled[first:],
    )


def _fixed_text(text: str, steps: EditSteps, negative: bool) -> str:
    """The one text `text` reads at every step the call runs, or `text` itself when that
    changes (see `fixed_prompt_arguments`)."""
    if steps.first == 0:
        return fixed_prompts([text], steps.total, negative)[0]
    if not negative and len(split_and(text)) > 1:
        return text  # each AND part is scheduled on its own, as in `fixed_prompts`
    read = set(steps.texts(text))
    return read.pop() if len(read) == 1 else text


def fixed_prompt_arguments(steps: EditSteps, prompt: Any, negative_prompt: Any, *others: Any) -> tuple[Any, ...]:
    """The prompt arguments (each a text, a list of texts or None: `prompt`, `negative_prompt`,
    then SDXL's second ones) with every text whose schedule never changes over the steps the
    call runs replaced by the one text it reads there, as
    `clipcond.scheduled_embeds.fixed_prompts` does over a whole schedule: ``"a [cat:dog:0]"`` is
    "a dog" at every step, as in A1111, and so is ``"a [cat:dog:0.25]"`` in a refiner that
    starts halfway. Negative prompts are read whole."""

    def fixed(value: Any, negative: bool = False) -> Any:
        if isinstance(value, str):
            return _fixed_text(value, steps, negative)
        if isinstance(value, list) and all(isinstance(text, str) for text in value):
            return [_fixed_text(text, steps, negative) for text in value]
        return value  # None, or a value the call's own checks refuse

    return (fixed(prompt), fixed(negative_prompt, negative=True), *(fixed(value) for value in others))


def plan_for_call(
    pipe: Any,
    conditioner: Any,
    prompt: Any,
    negative_prompt: Any,
    negative_prompt_embeds: torch.Tensor | None,
    steps: EditSteps,
    images_per_prompt: int,
    lora_scale: float | None,
    prompt_2: Any = None,
    negative_prompt_2: Any = None,
    *,
    ip_adapter: bool,
) -> DenoisingPlan | None:
    """The plan of a `CLIPConditionedPipeline` call when a prompt (or SDXL's `prompt_2`, or a
    negative) edits, alternates or has AND; None otherwise (then the plain path runs, equal to
    StableDiffusionPipeline's). Textual inversion and a text-encoder LoRA's scale apply as in
    the plain path.

    Raises:
        ValueError: AND in `prompt_2` / `negative_prompt_2` (AND splits `prompt` only); a plan
            with `negative_prompt_embeds`, or with an IP-Adapter (`ip_adapter`: the call gives
            one image input), both before any prompt is encoded.
    """
    if prompt is None:
        return None
    prompts = as_prompt_list(prompt, "prompt")
    if isinstance(negative_prompt, str) or negative_prompt is None:
        negatives = [negative_prompt or ""] * len(prompts)
    else:
        negatives = as_prompt_list(negative_prompt, "negative_prompt")
    second = {
        name: [value] if isinstance(value, str) else as_prompt_list(value, name)
        for name, value in (("prompt_2", prompt_2), ("negative_prompt_2", negative_prompt_2))
        if value
    }
    for name, texts in second.items():
        if any(len(split_and(text)) > 1 for text in texts):
            raise ValueError(
                f"`{name}` has AND: AND splits `prompt` into parts, the second encoder's text is read whole"
            )
    texts = prompts + negatives + [text for texts in second.values() for text in texts]
    composed = any(len(split_and(text)) > 1 for text in prompts)  # negatives are read whole
    if not composed and not any(has_schedule(text, steps.total) for text in texts):
        return None
    if negative_prompt_embeds is not None:
        raise ValueError(
            "`negative_prompt_embeds` cannot go with a prompt that edits, alternates or has AND: give "
            "`negative_prompt` as text"
        )
    if ip_adapter:
        raise ValueError("an IP-Adapter cannot go with a prompt that edits, alternates or has AND; give a plain prompt")
    # Textual-inversion tokens are expanded by the conditioner, each encoder's text with that
    # encoder's own tokenizer (SDXL's encode_prompt rule; expanding with the first tokenizer here
    # gave the second encoder the first one's vector tokens).
    if negative_prompt is None and conditioner.recipe.zero_negative_when_absent:
        negatives = None  # SDXL's zeros, as in the plain path
    with conditioner.lora_scaled(lora_scale):  # as in encode_prompt: a LoRA in the text encoders at this scale
        return build_plan(
            conditioner,
            prompts,
            negatives,
            steps,
            images_per_prompt,
            pipe.do_classifier_free_guidance,
            pipe.scheduler.order,
            prompt_2,
            negative_prompt_2,
            pipe.scheduler,
        )
