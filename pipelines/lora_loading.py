"""LoRA loading for a pipeline that stands in for Stable Diffusion or for SDXL.

diffusers has one LoRA mixin per family: `StableDiffusionLoraLoaderMixin` loads into `unet`
and `text_encoder`, `StableDiffusionXLLoraLoaderMixin` also into `text_encoder_2` (keys
prefixed `text_encoder_2.`) and maps SGM-named UNet blocks by the UNet's config. One
`CLIPConditionedPipeline` class serves both, so its loader follows its recipe: an SDXL
pipeline loads, lists, fuses and unloads as `StableDiffusionXLPipeline` does, any other as
`StableDiffusionPipeline` does. The two mixins share every other method (`lora_state_dict`,
`load_lora_into_unet`, `load_lora_into_text_encoder` are copies of one another).
"""

from __future__ import annotations

from typing import Any

from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin


class RecipeLoraLoaderMixin(StableDiffusionXLLoraLoaderMixin):
    """`load_lora_weights`, `fuse_lora`, `unfuse_lora` and the adapter methods of the family
    the pipeline's recipe names (`self.config.recipe`)."""

    @property
    def _lora_loadable_modules(self) -> list[str]:
        if self.config.recipe == "sdxl":
            return list(StableDiffusionXLLoraLoaderMixin._lora_loadable_modules)
        return list(StableDiffusionLoraLoaderMixin._lora_loadable_modules)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: Any, adapter_name: str | None = None, **kwargs):
        """diffusers' `load_lora_weights` of the pipeline's family (see the module docstring)."""
        family = StableDiffusionXLLoraLoaderMixin if self.config.recipe == "sdxl" else StableDiffusionLoraLoaderMixin
        return family.load_lora_weights(
            self, pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, **kwargs
        )

    def fuse_lora(self, components: list[str] | None = None, **kwargs) -> None:
        """Fuse the LoRA layers into the weights of `components` (default: every loadable one)."""
        super().fuse_lora(components=components or self._lora_loadable_modules, **kwargs)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs) -> None:
        """Undo `fuse_lora` on `components` (default: every loadable one)."""
        super().unfuse_lora(components=components or self._lora_loadable_modules, **kwargs)


__all__ = ["RecipeLoraLoaderMixin"]
