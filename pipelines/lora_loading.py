"""LoRA loading for a pipeline that stands in for Stable Diffusion or for SDXL.

diffusers has one LoRA mixin per family: `StableDiffusionLoraLoaderMixin` loads into `unet`
and `text_encoder`, `StableDiffusionXLLoraLoaderMixin` also into `text_encoder_2` (keys
prefixed `text_encoder_2.`) and maps SGM-named UNet blocks by the UNet's config. One
`CLIPConditionedPipeline` class serves both, so its loader follows its recipe: an SDXL
pipeline loads, lists, fuses and unloads as `StableDiffusionXLPipeline` does, any other as
`StableDiffusionPipeline` does. The two mixins share every other method (`lora_state_dict`,
`load_lora_into_unet`, `load_lora_into_text_encoder` are copies of one another).

The methods that write the text encoders' weights where a tensor's version counter cannot see
it (peft merges and unmerges through `.data`: `fuse_lora`, `unfuse_lora`, and
`unload_lora_weights`, which puts merged weights back as the same tensors) tell the
pipeline's conditioners (`TextConditioner.weights_written`), so that no cached embedding of
the weights before is served.

Loading is all or nothing: `load_lora_weights` takes a new adapter out of every component it
reached when the load fails partway or the loaded tensors are not finite, with the peft layers
wrapped for it and the `requires_grad` it switched off (`LoraState`), and the
setters (`set_adapters`, `fuse_lora`) refuse scales that are no finite numbers before any layer
changes. A file in which a layer has one of its two LoRA tensors only is refused as it is
read (`lora_state_dict`), before any component changes: diffusers let peft or transformers
initialise the other one (at random for a `lora_A`) or left it on the meta device. A
`hotswap=True` load writes into an adapter already loaded: its tensors and scalings are copied
first and put back when the swap fails (diffusers swapped the UNet's adapter, then refused the
text encoders' part of the same file) or brings NaN; its UNet tensors are checked against the
adapter's before the swap (`AdapterSnapshot.check_incoming`): peft padded a narrower one with
zeros without a word.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

from clipcond.lora_scale import check_lora_scale
from clipcond.pipelines.lora_snapshots import AdapterSnapshot, LoraState
from clipcond.scalars import finite_number_tree

_WEIGHT_FORMS = (
    "a finite number, a dict of weights per component or block ({'unet': {'down': 0.5}, 'text_encoder': 1.0}) "
    "or a list of those, one per adapter"
)


class RecipeLoraLoaderMixin(StableDiffusionXLLoraLoaderMixin):
    """`load_lora_weights`, `fuse_lora`, `unfuse_lora` and the adapter methods of the family
    the pipeline's recipe names (`self.config.recipe`)."""

    @property
    def _lora_loadable_modules(self) -> list[str]:
        if self.config.recipe == "sdxl":
            return list(StableDiffusionXLLoraLoaderMixin._lora_loadable_modules)
        return list(StableDiffusionLoraLoaderMixin._lora_loadable_modules)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: Any, adapter_name: str | None = None, **kwargs):
        """diffusers' `load_lora_weights` of the pipeline's family (see the module docstring),
        all or nothing: a load that fails partway, or that loads NaN or infinite weights, takes
        the new adapter out of every component it reached, so the pipeline gives the images of
        before. (diffusers' loader left the adapter in the text encoder and the UNet after a
        tensor of another shape failed the load, and took NaN weights silently.)

        Raises:
            TypeError: an `adapter_name` that is no non-empty string without '.' (torch's
                module-name errors named no argument).
            ValueError: weights holding NaN or infinite values, a layer's LoRA tensor without
                the other (`lora_state_dict`, before any change), or, with `hotswap=True`, a
                UNet tensor whose shape differs from the adapter's in more than the rank
                (before the swap), naming the source and the tensor; or what diffusers' loader
                raises (a tensor of another shape: torch's RuntimeError, unchanged).
        """
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name):
            raise TypeError(
                "`adapter_name` must be None (a default name) or a non-empty string without '.' (it names the "
                f"adapter's layers in the models), got {adapter_name!r:.80}"
            )
        family = StableDiffusionXLLoraLoaderMixin if self.config.recipe == "sdxl" else StableDiffusionLoraLoaderMixin
        before = LoraState.of(self)
        source = pretrained_model_name_or_path_or_dict
        swapped = AdapterSnapshot.of(self, adapter_name) if kwargs.get("hotswap") else None
        if swapped is not None and swapped.components:
            swapped.check_incoming(self._unet_tensors(source, kwargs), _source_name(source))
        try:
            family.load_lora_weights(self, source, adapter_name=adapter_name, **kwargs)
            loaded = self._new_adapters(before.adapters)
            if swapped is not None:  # the adapter written in place is checked as a new one is
                for component in swapped.components:
                    loaded.setdefault(component, []).append(adapter_name)
            self._check_loaded_adapters(loaded, source)
        except BaseException:
            before.restore(self)
            if swapped is not None:
                swapped.restore()
                self._text_weights_written()
            raise

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: Any, **kwargs: Any) -> Any:
        """diffusers' `lora_state_dict` (which `load_lora_weights` reads the weights with),
        refusing weights in which a layer has one of its two LoRA tensors only (`_unpaired`):
        diffusers' loaders let peft or transformers initialise the other (at random for a
        `lora_A`: the images then depended on the seed before the load; zeros for a `lora_B`:
        the layer silently did nothing), or, in the UNet under the default
        `low_cpu_mem_usage=True`, left it on the meta device.

        Raises:
            ValueError: naming the source, the tensor missing and the one beside it (or the one
                diffusers' converter of kohya's format looked for: it raised a bare KeyError).
        """
        named = _source_name(pretrained_model_name_or_path_or_dict)
        try:
            read = super().lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        except KeyError as error:  # diffusers' converters of other formats (kohya's) index the weights
            key = error.args[0] if error.args else None
            if not (isinstance(key, str) and "lora" in key):
                raise
            raise ValueError(
                f"the LoRA weights of {named} have no tensor for {key} (an incomplete or damaged file?): nothing was "
                "loaded"
            ) from error
        unpaired = _unpaired(read[0] if isinstance(read, tuple) else read)
        if unpaired:
            missing, present = unpaired[0]
            more = f"; {len(unpaired) - 1} more layers lack a tensor" if len(unpaired) > 1 else ""
            raise ValueError(
                f"the LoRA weights of {named} have no tensor for {missing} (beside {present}{more}; an incomplete "
                "or damaged file?): nothing was loaded"
            )
        return read

    def _unet_tensors(self, source: Any, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The UNet tensors `load_lora_weights(source, **kwargs)` would load, keyed as peft
        names them (`unet.<layer>.lora_A.weight`), read as diffusers' loader reads them (the
        family's `lora_state_dict`, then `convert_unet_state_dict_to_peft` where the keys are
        not peft's already, as the UNet's `load_lora_adapter` does). A hotswap reads its
        weights twice: here, to check them, and in diffusers' loader."""
        from diffusers.utils import convert_unet_state_dict_to_peft

        options = {key: value for key, value in kwargs.items() if key not in ("hotswap", "low_cpu_mem_usage")}
        if self.config.recipe == "sdxl":
            options["unet_config"] = self.unet.config
        weights = self.lora_state_dict(dict(source) if isinstance(source, dict) else source, **options)[0]
        unet = {key.removeprefix("unet."): value for key, value in weights.items() if key.startswith("unet.")}
        if unet and "lora_A" not in next(iter(unet)):
            unet = convert_unet_state_dict_to_peft(unet)
        return {f"unet.{key}": value for key, value in unet.items()}

    def _check_loaded_adapters(self, loaded: dict[str, list[str]], source: Any) -> None:
        """Refuse the tensors of the adapters `loaded` names (component -> adapter names) when
        they hold NaN or infinite values."""
        named = _source_name(source)
        for component, names in loaded.items():
            for key, value in getattr(self, component).named_parameters():
                if not any(f".{name}." in key for name in names):
                    continue
                if not bool(torch.isfinite(value.detach()).all()):
                    raise ValueError(
                        f"the LoRA weights of {named} hold NaN or infinite values ({component}.{key}; a damaged "
                        "file?): nothing was loaded"
                    )

    def _adapter_names(self) -> dict[str, set[str]]:
        """The peft adapters of each LoRA-loadable component the pipeline has."""
        names = {}
        for component in self._lora_loadable_modules:
            model = getattr(self, component, None)
            if model is not None:
                names[component] = set(getattr(model, "peft_config", None) or ())
        return names

    def _new_adapters(self, before: dict[str, set[str]]) -> dict[str, list[str]]:
        """The adapters each component has now and had not in `before`."""
        now = self._adapter_names()
        new = {component: sorted(names - before.get(component, set())) for component, names in now.items()}
        return {component: names for component, names in new.items() if names}

    def _delete_new_adapters(self, before: dict[str, set[str]]) -> None:
        """Take out of each component the adapters it did not have in `before`."""
        from diffusers.utils.peft_utils import delete_adapter_layers

        new = self._new_adapters(before)
        for component, names in new.items():
            model = getattr(self, component)
            if hasattr(model, "delete_adapters"):  # a diffusers model
                model.delete_adapters(names)
            else:  # a transformers text encoder, as diffusers' `delete_adapters` takes it out
                for name in names:
                    delete_adapter_layers(model, name)
        if new:
            self._text_weights_written()

    def set_adapters(self, adapter_names: list[str] | str, adapter_weights: float | dict | list | None = None) -> None:
        """diffusers' `set_adapters`, with `adapter_names` checked first (`_loaded_adapter_names`)
        and `adapter_weights`: None, a number, a dict of per-component or per-block weights, or
        a list of those (one per adapter), every number finite (diffusers took NaN and infinity,
        which made every image NaN, and failed on a string or a tuple partway through the
        components); numpy's numbers and 0-d tensors are read as the floats they hold."""
        adapter_names = self._loaded_adapter_names(adapter_names, "adapter_names")
        if adapter_weights is not None:
            adapter_weights = finite_number_tree(adapter_weights, "adapter_weights", _WEIGHT_FORMS)
        super().set_adapters(adapter_names, adapter_weights)

    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        """diffusers' `delete_adapters`, every name checked first: diffusers skipped a name no
        component holds without a word, after deleting the names before it."""
        super().delete_adapters(self._loaded_adapter_names(adapter_names, "adapter_names"))

    def set_lora_device(self, adapter_names: list[str], device: torch.device | str | int) -> None:
        """diffusers' `set_lora_device`, every name checked first (diffusers skipped unknown names)."""
        super().set_lora_device(self._loaded_adapter_names(adapter_names, "adapter_names"), device)

    def _loaded_adapter_names(self, adapter_names: Any, argument: str) -> list[str]:
        """`adapter_names` (a name or a non-empty list of names) as a list, each the name of an
        adapter some component holds.

        Raises:
            TypeError: neither a string nor a list or tuple of strings.
            ValueError: an empty list (diffusers' `set_adapters` failed on it with a bare
                `KeyError: 'unet'`), or a name no component holds.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"`{argument}` must be an adapter's name or a list of names, got {adapter_names!r:.80}")
        if not names:
            raise ValueError(f"`{argument}` must name at least one adapter (`disable_lora()` turns them all off)")
        loaded = {name for held in self.get_list_adapters().values() for name in held}
        unknown = [name for name in names if name not in loaded]
        if unknown:
            raise ValueError(f"`{argument}` names adapters no component holds: {unknown}; loaded: {sorted(loaded)}")
        return list(names)

    def _components(self, components: Any) -> list[str]:
        """`components` of `fuse_lora` / `unfuse_lora`: every loadable one of the family when
        None, else a list of their names (diffusers read a string's letters as names)."""
        if components is None:
            return self._lora_loadable_modules
        if not isinstance(components, (list, tuple)) or not all(isinstance(name, str) for name in components):
            raise TypeError(
                f"`components` must be a list of component names (of {self._lora_loadable_modules}), got "
                f"{components!r:.80}"
            )
        return list(components)

    def fuse_lora(
        self,
        components: list[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        """diffusers' `fuse_lora`: fuse the LoRA layers into the weights of `components`
        (default: every loadable one of the family; an empty list is refused, as there), at
        `lora_scale`, checking for NaN with `safe_fusing`, only `adapter_names` when given
        (each checked: diffusers fused nothing for a name no component holds, without a word).
        A `lora_scale` that is no finite number is refused before any weight changes (diffusers
        fused NaN or infinity into the base weights, which `unfuse_lora` cannot take out again);
        numpy's numbers and 0-d tensors are read as the floats they hold."""
        lora_scale = check_lora_scale(lora_scale, optional=False)
        components = self._components(components)
        if adapter_names is not None:
            adapter_names = self._loaded_adapter_names(adapter_names, "adapter_names")
        try:
            super().fuse_lora(components, lora_scale, safe_fusing, adapter_names, **kwargs)
        finally:
            self._text_weights_written()

    def unfuse_lora(self, components: list[str] | None = None, **kwargs) -> None:
        """diffusers' `unfuse_lora`: undo `fuse_lora` on `components` (default: every loadable
        one of the family; an empty list is refused, as there)."""
        components = self._components(components)
        try:
            super().unfuse_lora(components, **kwargs)
        finally:
            self._text_weights_written()

    def unload_lora_weights(self) -> None:
        """diffusers' `unload_lora_weights`: remove the LoRA layers (weights a `fuse_lora`
        merged stay merged, as there)."""
        try:
            super().unload_lora_weights()
        finally:
            self._text_weights_written()

    def _text_weights_written(self) -> None:
        """Tell the pipeline's conditioners that the text encoders' weights may have changed.
        peft merges and unmerges through `.data`, which bumps no version counter, and unloading
        puts the merged tensors back as the same objects: the embedding cache cannot see it."""
        for conditioner in getattr(self, "_conditioners", {}).values():
            conditioner.weights_written()


# The names of a LoRA layer's two tensors in the formats diffusers' `lora_state_dict` returns:
# peft's and diffusers' (attention processors' and text encoders' too). It converts kohya's
# `lora_down` / `lora_up` to these, failing with a KeyError where one is missing.
_HALVES = (
    (".lora_A.", ".lora_B."),
    (".lora.down.", ".lora.up."),
    ("_lora.down.", "_lora.up."),
    (".lora_linear_layer.down.", ".lora_linear_layer.up."),
)


def _unpaired(state_dict: dict) -> list[tuple[str, str]]:
    """(the missing tensor's key, the key of the one beside it) for each LoRA layer of which
    `state_dict` holds one weight tensor of the two, sorted by the missing key. Biases
    (`lora_B.bias`) and DoRA's magnitudes have no other half and are not looked at."""
    keys = set(state_dict)
    missing = []
    for key in keys:
        if not key.endswith(".weight"):
            continue
        for down, up in _HALVES:
            for this, other in ((down, up), (up, down)):
                if this in key:
                    partner = key.replace(this, other, 1)
                    if partner not in keys:
                        missing.append((partner, key))
    return sorted(missing)


def _source_name(source: Any) -> str:
    """How a refusal names what `load_lora_weights` was given."""
    return "the state dict" if isinstance(source, dict) else str(source)


__all__ = ["RecipeLoraLoaderMixin"]
