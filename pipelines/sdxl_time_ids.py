"""SDXL's micro-conditioning: the "time ids" an SDXL UNet reads beside the pooled text.

The base model was trained on (original size, crop corner, target size), the refiner on
(original size, crop corner, aesthetic score) (Podell et al. 2023, section 2.2). Defaults and
the negative rows follow diffusers, so that images equal `StableDiffusionXLPipeline`'s:

- original and target size default to the image's (height, width), the crop corner to (0, 0);
- base model: the negative rows read `negative_original_size`, `negative_crops_coords_top_left`
  and `negative_target_size` only when both negative sizes are given (as diffusers'
  text-to-image pipeline), and the positive ids otherwise;
- base model in img2img and inpainting (as diffusers' SDXL img2img and inpaint pipelines): the
  negative rows read `negative_original_size` (default: `original_size`), the positive
  `crops_coords_top_left` (diffusers' img2img reads no `negative_crops_coords_top_left` for a
  base model; kept, so that images equal its) and `negative_target_size` (default: `target_size`);
- refiner, in every task: the negative rows read `negative_original_size` (default: `original_size`),
  `negative_crops_coords_top_left` (default (0, 0)) and `negative_aesthetic_score` (as
  diffusers' SDXL img2img pipeline, whose `requires_aesthetics_score` this is).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from clipcond.scalars import as_float

BASE_ONLY = ("target_size", "negative_target_size")
REFINER_ONLY = ("aesthetic_score", "negative_aesthetic_score")


@dataclass(frozen=True)
class SizeConditioning:
    """The micro-conditioning arguments of one call, as given (None: the default).

    Attributes:
        original_size, target_size, negative_original_size, negative_target_size:
            (height, width) in pixels.
        crops_coords_top_left, negative_crops_coords_top_left: (top, left) in pixels.
        A pixel count may be any integer (numpy's too) or an integral float, as diffusers takes
        them; it is read as an int.
        aesthetic_score, negative_aesthetic_score: the refiner's scores (defaults 6.0, 2.5).
    """

    original_size: Any = None
    crops_coords_top_left: Any = None
    target_size: Any = None
    negative_original_size: Any = None
    negative_crops_coords_top_left: Any = None
    negative_target_size: Any = None
    aesthetic_score: Any = None
    negative_aesthetic_score: Any = None

    def __post_init__(self) -> None:
        for name in REFINER_ONLY:  # numpy's numbers and 0-d tensors read as Python floats, as diffusers takes them
            object.__setattr__(self, name, as_float(getattr(self, name)))

    def given(self) -> list[str]:
        """The names of the arguments that were given."""
        return [name for name in self.__dataclass_fields__ if getattr(self, name) is not None]

    def check(self, reads_time_ids: bool, requires_aesthetics_score: bool) -> None:
        """Refuse what the UNet cannot read, before any work.

        Raises:
            TypeError: a size or corner that is not a pair of integers (integral floats
                pass), or a score that is not a finite number.
            ValueError: any of them for a UNet without time ids; target sizes for a refiner,
                aesthetic scores for a base model (each would be silently ignored).
        """
        given = self.given()
        if given and not reads_time_ids:
            raise ValueError(
                f"`{given[0]}` is SDXL's micro-conditioning, but this pipeline's UNet reads no time ids "
                "(its addition_embed_type is not 'text_time')"
            )
        unread = REFINER_ONLY if not requires_aesthetics_score else BASE_ONLY
        for name in given:
            if name in unread:
                model = "a refiner (requires_aesthetics_score=True)" if name in REFINER_ONLY else "a base model"
                raise ValueError(f"`{name}` is read by {model} only; this pipeline's UNet does not read it")
        for name in given:
            value = getattr(self, name)
            if name in REFINER_ONLY:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise TypeError(f"`{name}` must be a finite number, got {value!r}")
            elif not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_is_pixel_count, value)):
                raise TypeError(
                    f"`{name}` must be a pair of ints (in pixels; numpy integers and integral floats are read as "
                    f"ints), got {value!r}"
                )

    def time_ids(
        self,
        height: int,
        width: int,
        requires_aesthetics_score: bool,
        dtype: torch.dtype,
        from_image: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) time ids, (1, 6) each for a base model, (1, 5) for a refiner,
        for an image of `height` x `width` pixels; `from_image`: img2img's and inpainting's
        negative rows for a base model (module docstring)."""
        original = _pixels(self.original_size, (height, width))
        crops = _pixels(self.crops_coords_top_left, (0, 0))
        negative_crops = _pixels(self.negative_crops_coords_top_left, (0, 0))
        if requires_aesthetics_score:
            score = 6.0 if self.aesthetic_score is None else self.aesthetic_score
            negative_score = 2.5 if self.negative_aesthetic_score is None else self.negative_aesthetic_score
            positive = original + crops + (score,)
            negative = _pixels(self.negative_original_size, original) + negative_crops + (negative_score,)
        else:
            target = _pixels(self.target_size, (height, width))
            positive = original + crops + target
            negative = positive
            if from_image:
                negative_original = _pixels(self.negative_original_size, original)
                negative = negative_original + crops + _pixels(self.negative_target_size, target)
            elif self.negative_original_size is not None and self.negative_target_size is not None:
                negative = (
                    _pixels(self.negative_original_size, original)
                    + negative_crops
                    + _pixels(self.negative_target_size, target)
                )
        return torch.tensor([positive], dtype=dtype), torch.tensor([negative], dtype=dtype)


def _is_pixel_count(item: Any) -> bool:
    """Whether `item` is a whole number of pixels: an integer (Python's or numpy's, not a bool)
    or an integral float (64.0), as diffusers, which puts them in a float tensor, takes them."""
    if isinstance(item, bool):
        return False
    if isinstance(item, numbers.Integral):
        return True
    return isinstance(item, numbers.Real) and float(item).is_integer()


def _pixels(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    """A checked (a, b) pair as Python ints; `default` when it was not given (None)."""
    return default if value is None else tuple(int(item) for item in value)


__all__ = ["SizeConditioning"]
