"""The checks of `CLIPConditionedPipeline.__call__`'s arguments, run before any work.

A mixin, as diffusers keeps `check_inputs` on the pipeline: it reads the pipeline's
`vae_scale_factor`, `scheduler`, `_callback_tensor_inputs`, its recipe and its text-encoder
components.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from clipcond.conditioning import as_prompt_list
from clipcond.encoders import TextEncoder
from clipcond.families import FAMILIES
from clipcond.pipelines.argument_values import check_cross_attention_kwargs, check_generator, check_schedule_values
from clipcond.prompt_arguments import check_images_per_prompt, check_readers, texts_or_default


def image_size_fits(value: Any, vae_scale_factor: int) -> bool:
    """Whether `value` can be an image's height or width: a positive multiple of the VAE's
    scale factor (pixels per latent cell; 1 in pixel space). As in diffusers, the UNet's own
    downsampling sets no further multiple: its up blocks take the sizes of their skips."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= vae_scale_factor
        and not value % vae_scale_factor
    )


def image_size_rule(vae_scale_factor: int) -> str:
    """`image_size_fits` in words, for error messages."""
    if vae_scale_factor == 1:
        return "a positive int"
    return f"a positive multiple of {vae_scale_factor} (the VAE's scale factor)"


class CallInputChecks:
    """`check_inputs`, `check_sampling_inputs`, `check_pooled_inputs`, `check_per_encoder_prompts`,
    `check_vae_decodes` and `check_text_encoders` of a text-to-image pipeline."""

    def check_inputs(
        self,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        generator: Any,
        output_type: str,
    ) -> int:
        """Validate the prompt, size, guidance, generator and output arguments (numbers already
        read as Python's, `clipcond.scalars`); returns the number of prompts."""
        count = self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self.check_embeds_width(prompt_embeds, negative_prompt_embeds)
        for name, value in (("height", height), ("width", width)):
            if not image_size_fits(value, self.vae_scale_factor):
                raise ValueError(f"`{name}` must be {image_size_rule(self.vae_scale_factor)}, got {value!r}")
        if (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, (int, float))
            or not math.isfinite(guidance_scale)
        ):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}")
        check_images_per_prompt(num_images_per_prompt)
        self.check_negative_length(prompt_embeds, negative_prompt, negative_prompt_embeds, self._guides(guidance_scale))
        check_generator(generator)
        if isinstance(generator, list) and len(generator) != count * num_images_per_prompt:
            raise ValueError(
                f"got {len(generator)} generators for {count * num_images_per_prompt} images "
                "(prompts x num_images_per_prompt); pass one generator or one per image"
            )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        return count

    def check_prompt_inputs(
        self, prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any
    ) -> int:
        """Validate the prompt arguments as text or embeddings, (batch, seq, width) tensors, one
        of each kind; returns the number of prompts (`encode_prompt` checks them so too).

        Raises:
            ValueError, TypeError: naming the argument.
        """
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of `prompt` and `prompt_embeds`")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give at most one of `negative_prompt` and `negative_prompt_embeds`")
        if prompt is not None:
            count = len(as_prompt_list(prompt, "prompt"))
        else:
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise TypeError("`prompt_embeds` must be a (batch, seq, width) tensor")
            count = prompt_embeds.shape[0]
            if count == 0:  # as `prompt=[]` is refused; the UNet would fail inside its attention
                raise ValueError("`prompt_embeds` has no rows; give one row per prompt")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            negatives = as_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) != count:
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries but there are {count} prompts; "
                    "give one per prompt, or a single string"
                )
        if negative_prompt_embeds is not None:
            if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.ndim != 3:
                raise TypeError("`negative_prompt_embeds` must be a (batch, seq, width) tensor")
            if negative_prompt_embeds.shape[0] != count or (
                prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape
            ):
                raise ValueError(
                    f"`negative_prompt_embeds` {tuple(negative_prompt_embeds.shape)} must have one row per prompt "
                    f"({count}) and the prompt embeddings' shape"
                )
        return count

    def check_embeds_width(
        self, prompt_embeds: torch.Tensor | None, negative_prompt_embeds: torch.Tensor | None
    ) -> None:
        """Given token embeddings must be as wide as the UNet's cross-attention reads them
        (`unet.config.cross_attention_dim`; a pipeline's `text_projection` maps the encoders'
        states to that width too); diffusers finds another width inside the UNet's first step.

        Raises:
            ValueError: naming the argument and both widths.
        """
        width = self.unet.config.cross_attention_dim if self.unet is not None else None
        if not isinstance(width, int):  # no UNet, or one width per block
            return
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and embeds.shape[-1] != width:
                raise ValueError(
                    f"`{name}` is {embeds.shape[-1]} wide but unet.config.cross_attention_dim is {width}; give "
                    "embeddings of this pipeline's text encoders (`pipe.conditioner.pipeline_kwargs`)"
                )

    def check_negative_length(
        self, prompt_embeds: torch.Tensor | None, negative_prompt: Any, negative_prompt_embeds: Any, guided: bool
    ) -> None:
        """Given `prompt_embeds` with the negative prompt to encode as text (under guidance,
        without `negative_prompt_embeds`; a missing one reads "", unless it means zeros): the
        conditioner encodes text to whole CLIP windows (77 tokens each), so embeddings of
        another length cannot go with it. diffusers' `encode_prompt` tokenizes the negative to
        `prompt_embeds.shape[1]` tokens instead; clipcond's windows have no such length.

        Raises:
            ValueError: naming the lengths and what to give instead, before any work.
        """
        if prompt_embeds is None or negative_prompt_embeds is not None or not guided:
            return
        if negative_prompt is None and self.config.get("force_zeros_for_empty_prompt"):
            return  # zeros of the given embeddings' shape
        window = self._clip_window()
        if window is None or prompt_embeds.shape[1] % window == 0:
            return
        tokens = prompt_embeds.shape[1]
        negative = "the negative prompt" if negative_prompt is not None else 'the missing negative prompt (read as "")'
        raise ValueError(
            f"`prompt_embeds` has {tokens} tokens, not a whole number of {window}-token CLIP windows, and {negative} "
            f"would be encoded as text, which gives whole windows: its embeddings could not go beside these. Give "
            "`negative_prompt_embeds` of the same shape, or encode both with "
            "`pipe.conditioner.pipeline_kwargs(prompt, negative_prompt)`"
        )

    def _clip_window(self) -> int | None:
        """Tokens per CLIP window of the recipe's first CLIP (77), or None where encoded text is
        not whole windows (a T5 adds its own tokens) or there is no CLIP with its tokenizer."""
        slots = FAMILIES[self.config.recipe].slots
        if any(slot.kind != "clip" and getattr(self, slot.model, None) is not None for slot in slots):
            return None
        for slot in slots:
            model, tokenizer = getattr(self, slot.model, None), getattr(self, slot.tokenizer, None)
            if model is not None and tokenizer is not None:
                return TextEncoder(model=model, tokenizer=tokenizer).window_length
        return None

    def check_unet(self) -> None:
        """A call denoises with `unet`: a pipeline without one (`from_pipe(pipe, unet=None)`, as
        for `encode_prompt` alone) is refused before any work.

        Raises:
            ValueError: naming the missing component.
        """
        if self.unet is None:
            raise ValueError(
                f"this pipeline has no `unet`, which a call denoises with; {type(self).__name__} without one can "
                "only `encode_prompt`. Build it with a UNet: "
                f"{type(self).__name__}.from_pipe(pipe, unet=unet)"
            )

    def check_vae_decodes(self, output_type: str) -> None:
        """Refuse, before any work, a VAE whose dtype cannot decode the UNet's latents, which
        reach it in the UNet's dtype: diffusers' SD and SDXL pipelines (0.42) cast them only
        where SDXL decodes a float16 VAE whose config says `force_upcast` in float32, and fail
        inside the VAE after every step otherwise. No VAE, or `output_type="latent"`: nothing
        to decode.

        Raises:
            ValueError: naming both dtypes and the fixes.
        """
        vae = getattr(self, "vae", None)
        if vae is None or output_type == "latent" or vae.dtype == self.unet.dtype:
            return
        upcast = self.reads_time_ids and vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        if upcast:  # SDXL's decode: the VAE and the latents in float32
            return
        advice = f"cast it (`pipe.vae.to({self.unet.dtype})`) or load the pipeline with `torch_dtype={vae.dtype}`"
        if self.reads_time_ids and vae.dtype == torch.float16:
            advice += ", or give the VAE `force_upcast=True` (SDXL then decodes it in float32)"
        raise ValueError(
            f"the `vae` is {vae.dtype} but the `unet`, whose latents it decodes, is {self.unet.dtype}: decoding would "
            f"fail after every step; {advice}, or pass output_type='latent'"
        )

    def check_sampling_inputs(
        self,
        num_inference_steps: Any,
        timesteps: Any,
        sigmas: Any,
        guidance_rescale: Any,
        cross_attention_kwargs: Any,
        callback_on_step_end: Any,
        tensor_inputs: list[str],
        denoising_end: Any = None,
    ) -> None:
        """Validate the schedule, guidance-rescale, attention, callback and `denoising_end`
        arguments.

        As in Stable Diffusion (`retrieve_timesteps`), custom `timesteps` or `sigmas` set the
        step count themselves: `num_inference_steps` may then be None, and is not read.
        """
        if timesteps is not None and sigmas is not None:
            raise ValueError("give at most one of `timesteps` and `sigmas`")
        custom_schedule = timesteps is not None or sigmas is not None
        count_ok = type(num_inference_steps) is int and num_inference_steps >= 1
        if not (custom_schedule or count_ok):
            raise ValueError(
                f"`num_inference_steps` must be an int >= 1 (or None with custom `timesteps` or `sigmas`), "
                f"got {num_inference_steps!r}"
            )
        for name, schedule in (("timesteps", timesteps), ("sigmas", sigmas)):
            if schedule is not None:
                check_schedule_values(name, schedule)
                accepted = set(inspect.signature(self.scheduler.set_timesteps).parameters)
                if name not in accepted:
                    raise ValueError(f"{type(self.scheduler).__name__} does not accept custom `{name}`")
        if (
            isinstance(guidance_rescale, bool)
            or not isinstance(guidance_rescale, (int, float))
            or not math.isfinite(guidance_rescale)
            or guidance_rescale < 0
        ):
            raise ValueError(f"`guidance_rescale` must be a finite number >= 0, got {guidance_rescale!r}")
        check_cross_attention_kwargs(cross_attention_kwargs)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError("`callback_on_step_end` must be callable: (pipe, step, timestep, tensors) -> dict")
        unknown = sorted(set(tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {unknown}; choose from {self._callback_tensor_inputs}"
            )
        if denoising_end is not None and (
            isinstance(denoising_end, bool) or not isinstance(denoising_end, (int, float)) or not 0 < denoising_end <= 1
        ):
            raise ValueError(
                f"`denoising_end` must be None or a fraction of the schedule in (0, 1], got {denoising_end!r}"
            )

    def check_pooled_inputs(
        self,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        pooled_prompt_embeds: Any,
        negative_pooled_prompt_embeds: Any,
    ) -> None:
        """SDXL's pooled embeddings: each goes with its token embeddings, (batch, pooled width)
        with one row per token row, as StableDiffusionXLPipeline asks; refused elsewhere.

        Raises:
            ValueError: a pooled tensor for a UNet without time ids, token embeddings without
                their pooled ones (SDXL), a pooled tensor without its token embeddings, or a
                pooled tensor of the wrong shape.
        """
        pairs = (
            ("prompt_embeds", prompt_embeds, "pooled_prompt_embeds", pooled_prompt_embeds),
            (
                "negative_prompt_embeds",
                negative_prompt_embeds,
                "negative_pooled_prompt_embeds",
                negative_pooled_prompt_embeds,
            ),
        )
        for tokens_name, tokens, pooled_name, pooled in pairs:
            if pooled is not None and not self.reads_time_ids:
                raise ValueError(
                    f"`{pooled_name}` is read by SDXL-class UNets only; this pipeline's recipe is "
                    f"{self.config.recipe!r}"
                )
            if pooled is not None and tokens is None:
                raise ValueError(f"`{pooled_name}` needs `{tokens_name}` (the token embeddings it was pooled from)")
            if tokens is not None and pooled is None and self.reads_time_ids:
                raise ValueError(
                    f"an SDXL UNet reads pooled text: `{tokens_name}` needs `{pooled_name}`, from the same text "
                    "encoders (`pipe.conditioner.pipeline_kwargs` gives both)"
                )
            if pooled is not None and (
                not isinstance(pooled, torch.Tensor) or pooled.ndim != 2 or pooled.shape[0] != tokens.shape[0]
            ):
                shape = tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled).__name__
                raise ValueError(
                    f"`{pooled_name}` must be a ({tokens.shape[0]}, pooled width) tensor, one row per row of "
                    f"`{tokens_name}`, got {shape}"
                )
        if negative_pooled_prompt_embeds is not None and pooled_prompt_embeds is not None:
            if negative_pooled_prompt_embeds.shape != pooled_prompt_embeds.shape:  # both are concatenated
                raise ValueError(
                    f"`negative_pooled_prompt_embeds` {tuple(negative_pooled_prompt_embeds.shape)} must have "
                    f"`pooled_prompt_embeds`' shape {tuple(pooled_prompt_embeds.shape)}"
                )

    def check_per_encoder_prompts(
        self,
        prompt_2: Any,
        negative_prompt_2: Any,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        count: int,
        negative_prompt: Any = None,
    ) -> None:
        """SDXL's `prompt_2` / `negative_prompt_2` (the second CLIP's text): refused where no
        encoder reads them (SD, a refiner with one CLIP) and beside the embeddings they would
        be encoded into, as StableDiffusionXLPipeline refuses them; a string, or one text per
        prompt (`count` prompts). A `negative_prompt_2` without `negative_prompt` is refused
        where a missing negative prompt means zeros (`force_zeros_for_empty_prompt`):
        StableDiffusionXLPipeline would ignore it.

        Raises:
            ValueError, TypeError: as above, naming the argument.
        """
        given = {"prompt_2": prompt_2, "negative_prompt_2": negative_prompt_2}
        for name, value, embeds_name, embeds in (
            ("prompt_2", prompt_2, "prompt_embeds", prompt_embeds),
            ("negative_prompt_2", negative_prompt_2, "negative_prompt_embeds", negative_prompt_embeds),
        ):
            if value is not None and embeds is not None:
                raise ValueError(f"give at most one of `{name}` and `{embeds_name}` (the embeddings are its encoding)")
            texts_or_default(name, value, [""] * count)
        if negative_prompt_2 and negative_prompt is None and self.config.get("force_zeros_for_empty_prompt"):
            raise ValueError(
                "`negative_prompt_2` needs `negative_prompt`: without one, this pipeline's negative is zeros "
                "(force_zeros_for_empty_prompt=True) and the second encoder's text would be ignored"
            )
        family = FAMILIES[self.config.recipe]
        clip_count = sum(getattr(self, slot.model, None) is not None for slot in family.slots if slot.kind == "clip")
        check_readers(family.prompt_readers(clip_count, False), given, self.config.recipe)

    def check_text_encoders(self, prompt_is_text: bool, negative_is_text: bool) -> None:
        """Refuse text to encode when the pipeline has no encoder for it, naming the missing
        components (Stable Diffusion lets `text_encoder` and `tokenizer` be None when every
        prompt comes as embeddings).

        Args:
            prompt_is_text: the prompt comes as text (no `prompt_embeds`).
            negative_is_text: guidance needs the negative prompt encoded (no
                `negative_prompt_embeds`; a missing negative prompt means "").

        Raises:
            ValueError: there is text to encode and no slot of the recipe holds both a text
                encoder and its tokenizer.
        """
        if not (prompt_is_text or negative_is_text):
            return
        slots = FAMILIES[self.config.recipe].slots
        names = [name for slot in slots for name in (slot.model, slot.tokenizer)]
        if any(
            getattr(self, slot.model, None) is not None and getattr(self, slot.tokenizer, None) is not None
            for slot in slots
        ):
            return
        missing = ", ".join(f"`{name}`" for name in names if getattr(self, name, None) is None)
        if prompt_is_text:
            what = "`prompt` is text"
            instead = "pass `prompt_embeds` (and `negative_prompt_embeds` under guidance) instead"
        else:
            what = "classifier-free guidance needs the negative prompt encoded"
            instead = "pass `negative_prompt_embeds`, or guidance_scale <= 1"
        raise ValueError(f"{what}, but this pipeline has no {missing} to encode it; {instead}")
