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
reached when the load fails partway or the loaded tensors are not finite (or missing), and the
setters (`set_adapters`, `fuse_lora`) refuse scales that are no finite numbers before any layer
changes. A tensor the file lacks is found in a text encoder by transformers' own report (its
`load_adapter` returns the missing keys; it initialises them, at random for `lora_A`, and only
logs it) and in the UNet by the meta device diffusers' default `low_cpu_mem_usage=True` leaves
it on. A `hotswap=True` load writes into an adapter already loaded: its tensors and scalings
are copied first and put back when the swap fails (diffusers swapped the UNet's adapter, then
refused the text encoders' part of the same file) or brings NaN. Not covered: a UNet tensor
missing under `low_cpu_mem_usage=False` (peft initialises it and diffusers only logs it), or a
hotswapped `lora_A` narrower than its layer (peft pads it with zeros, as it pads a smaller rank).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

from clipcond.lora_scale import check_lora_scale
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
            ValueError: weights holding NaN or infinite values, or missing a tensor of a layer
                they adapt (diffusers' UNet loader left it on the meta device; transformers drew a
                text encoder's at random), or, with `hotswap=True`, a tensor whose shape differs
                in more than the rank, naming the source and the tensor; or what diffusers'
                loader raises (a tensor of another shape: torch's RuntimeError, unchanged).
        """
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name):
            raise TypeError(
                "`adapter_name` must be None (a default name) or a non-empty string without '.' (it names the "
                f"adapter's layers in the models), got {adapter_name!r:.80}"
            )
        family = StableDiffusionXLLoraLoaderMixin if self.config.recipe == "sdxl" else StableDiffusionLoraLoaderMixin
        before = self._adapter_names()
        source = pretrained_model_name_or_path_or_dict
        swapped = _AdapterSnapshot.of(self, adapter_name) if kwargs.get("hotswap") else None
        try:
            with _missing_text_encoder_tensors(self, ("text_encoder", "text_encoder_2")) as missing:
                family.load_lora_weights(self, source, adapter_name=adapter_name, **kwargs)
            if missing:
                raise ValueError(
                    f"the LoRA weights of {_source_name(source)} have no tensor for {missing[0]}"
                    f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} (an incomplete or damaged "
                    "file?): nothing was loaded"
                )
            loaded = self._new_adapters(before)
            if swapped is not None:  # the adapter written in place is checked as a new one is
                swapped.check_shapes(_source_name(source))
                for component in swapped.components:
                    loaded.setdefault(component, []).append(adapter_name)
            self._check_loaded_adapters(loaded, source)
        except BaseException:
            self._delete_new_adapters(before)
            if swapped is not None:
                swapped.restore()
                self._text_weights_written()
            raise

    def _check_loaded_adapters(self, loaded: dict[str, list[str]], source: Any) -> None:
        """Refuse the tensors of the adapters `loaded` names (component -> adapter names) when
        they hold NaN or infinite values, or none at all (a tensor the file lacks is left on the
        meta device by diffusers' UNet loader)."""
        named = _source_name(source)
        for component, names in loaded.items():
            for key, value in getattr(self, component).named_parameters():
                if not any(f".{name}." in key for name in names):
                    continue
                if value.is_meta:
                    raise ValueError(
                        f"the LoRA weights of {named} have no tensor for {component}.{key} (an incomplete or damaged "
                        "file?): nothing was loaded"
                    )
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
        and `adapter_weights`: None, a number, a
        dict of per-component or per-block weights, or a list of those (one per adapter), every
        number finite (diffusers took NaN and infinity, which made every image NaN, and failed
        on a string or a tuple partway through the components); numpy's numbers and 0-d
        tensors are read as the floats they hold."""
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


@dataclass
class _AdapterSnapshot:
    """What diffusers' `hotswap=True` load overwrites in the adapter it swaps into: the values of
    its LoRA tensors (the same tensor objects, put back) and each layer's scaling (alpha / rank)."""

    adapter_name: str
    components: list[str]
    tensors: list[tuple[str, torch.Tensor, torch.Tensor]]  # ('component.key', the tensor, a copy of its values)
    scalings: list[tuple[dict, Any]]  # (a LoRA layer's `scaling` dict, the adapter's value in it)

    @classmethod
    def of(cls, pipeline: Any, adapter_name: str | None) -> _AdapterSnapshot:
        """The adapter `adapter_name` in every LoRA-loadable component of `pipeline` that has
        it (none when it is None or no component has it: diffusers refuses that hotswap)."""
        snapshot = cls(adapter_name or "", [], [], [])
        for component in pipeline._lora_loadable_modules:
            model = getattr(pipeline, component, None)
            if adapter_name is None or adapter_name not in (getattr(model, "peft_config", None) or ()):
                continue
            snapshot.components.append(component)
            for key, tensor in model.named_parameters():
                if f".{adapter_name}." in key:
                    snapshot.tensors.append((f"{component}.{key}", tensor, tensor.detach().clone()))
            for module in model.modules():
                scaling = getattr(module, "scaling", None)
                if isinstance(scaling, dict) and adapter_name in scaling:
                    value = scaling[adapter_name]
                    snapshot.scalings.append((scaling, value.clone() if torch.is_tensor(value) else value))
        return snapshot

    def check_shapes(self, named: str) -> None:
        """Refuse a swap that changed a tensor's shape in any dimension but the rank (`lora_A`'s
        first, `lora_B`'s second): peft swaps a larger tensor in whole, and a layer of another
        width would fail at the next call, after the text encoders' work."""
        for key, tensor, values in self.tensors:
            rank = 0 if ".lora_A." in key else 1 if ".lora_B." in key and key.endswith(".weight") else None
            if [size for dim, size in enumerate(tensor.shape) if dim != rank] != [
                size for dim, size in enumerate(values.shape) if dim != rank
            ]:
                raise ValueError(
                    f"the LoRA weights of {named} hold a tensor of shape {tuple(tensor.shape)} for {key}, which has "
                    f"{tuple(values.shape)} (a hotswap may change only the rank): nothing was swapped"
                )

    @torch.no_grad()
    def restore(self) -> None:
        """Put the values back (peft copies into the tensors, or swaps a larger rank in whole)."""
        for _, tensor, values in self.tensors:
            if tensor.shape == values.shape:
                tensor.copy_(values)
            else:
                tensor.data = values
        for scaling, value in self.scalings:
            if torch.is_tensor(value) and torch.is_tensor(scaling[self.adapter_name]):
                scaling[self.adapter_name].copy_(value)
            else:
                scaling[self.adapter_name] = value


@dataclass
class LoraState:
    """The LoRA adapters a pipeline's components hold and which of them are active (with their
    tensors' `requires_grad`, which peft switches with them). diffusers' `load_ip_adapter` loads
    a FaceID adapter's own LoRA as `faceid_<n>` and activates it alone (`set_adapters`), so a
    failed IP-Adapter load puts this back (`ip_adapter_loading.IPAdapterState`): taking the new
    adapter out alone would leave peft activating every adapter left. Scalings are not copied:
    that `set_adapters` sets only the new adapter's, which goes with it."""

    adapters: dict[str, set[str]]  # component -> its adapters' names
    layers: list[tuple[Any, Any]]  # (a peft LoRA layer, its active adapter or adapters)
    trainable: list[tuple[torch.nn.Parameter, bool]]  # each adapter tensor and its `requires_grad`

    @classmethod
    def of(cls, pipeline: Any) -> LoraState:
        from peft.tuners.tuners_utils import BaseTunerLayer

        adapters = pipeline._adapter_names()
        layers, trainable = [], []
        for component in adapters:
            model = getattr(pipeline, component)
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    active = module._active_adapter
                    layers.append((module, list(active) if isinstance(active, list) else active))
            trainable += [(value, value.requires_grad) for key, value in model.named_parameters() if ".lora_" in key]
        return cls(adapters, layers, trainable)

    def restore(self, pipeline: Any) -> None:
        """Take out the adapters loaded since; make active again what was, as trainable as it was."""
        pipeline._delete_new_adapters(self.adapters)
        for module, active in self.layers:
            module._active_adapter = active
        for value, requires_grad in self.trainable:
            value.requires_grad_(requires_grad)


def _source_name(source: Any) -> str:
    """How a refusal names what `load_lora_weights` was given."""
    return "the state dict" if isinstance(source, dict) else str(source)


@contextmanager
def _missing_text_encoder_tensors(pipeline: Any, components: tuple[str, ...]) -> Iterator[list[str]]:
    """While open, collect as 'component.key' the tensors of the adapter being loaded that
    transformers' `load_adapter` found in no state dict (diffusers' text-encoder loader drops
    the report it returns: transformers initialises those tensors, at random for `lora_A`).

    The pipeline's text encoders get an instance attribute `load_adapter` that records and
    returns transformers' report; it is taken away again when the block ends. transformers lists
    the tensors of adapters loaded earlier as missing too (it leaves them as they are): only the
    keys of the adapter being loaded (``.lora_A.<name>.``) count.
    """
    missing: list[str] = []
    wrapped = []
    for component in components:
        model = getattr(pipeline, component, None)
        load = getattr(model, "load_adapter", None)
        if load is None or "load_adapter" in vars(model):
            continue

        def recording_load(*args: Any, _load: Any = load, _component: str = component, **kwargs: Any) -> Any:
            report = _load(*args, **kwargs)
            name = kwargs.get("adapter_name")
            keys = sorted(getattr(report, "missing_keys", None) or ())
            missing.extend(f"{_component}.{key}" for key in keys if name is not None and f".{name}." in key)
            return report

        vars(model)["load_adapter"] = recording_load
        wrapped.append(model)
    try:
        yield missing
    finally:
        for model in wrapped:
            del vars(model)["load_adapter"]


__all__ = ["LoraState", "RecipeLoraLoaderMixin"]
