"""What a LoRA load changes in a pipeline, copied first so that a failed load can put it back.

`AdapterSnapshot`: the tensors and scalings of one adapter that diffusers' `hotswap=True` load
writes into (`lora_loading.RecipeLoraLoaderMixin.load_lora_weights`). `LoraState`: which
adapters the components hold and which are active, which a FaceID IP-Adapter's own LoRA
changes (`ip_adapter_loading.IPAdapterState`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AdapterSnapshot:
    """What diffusers' `hotswap=True` load overwrites in the adapter it swaps into: the values of
    its LoRA tensors (the same tensor objects, put back) and each layer's scaling (alpha / rank)."""

    adapter_name: str
    components: list[str]
    tensors: list[tuple[str, torch.Tensor, torch.Tensor]]  # ('component.key', the tensor, a copy of its values)
    scalings: list[tuple[dict, Any]]  # (a LoRA layer's `scaling` dict, the adapter's value in it)

    @classmethod
    def of(cls, pipeline: Any, adapter_name: str | None) -> AdapterSnapshot:
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

    def check_incoming(self, incoming: dict[str, torch.Tensor], named: str) -> None:
        """Refuse `incoming` (the swap's tensors, keyed as `component.<layer>.lora_A.weight`,
        peft's names without the adapter's) when one differs from the tensor it replaces in any
        dimension but the rank (`lora_A`'s first, `lora_B`'s second), before anything is
        swapped: peft pads a narrower tensor with zeros without a word and swaps a wider one in
        whole (the layer then fails at the next call, after the text encoders' work). Keys the
        adapter has no tensor for are left to peft, which refuses them."""
        held = {key: values.shape for key, _, values in self.tensors}
        for key, tensor in incoming.items():
            stem, dot, kind = key.rpartition(".")
            shape = held.get(f"{stem}.{self.adapter_name}{dot}{kind}")
            if shape is None:
                continue
            rank = 0 if stem.endswith(".lora_A") else 1 if stem.endswith(".lora_B") and kind == "weight" else None
            if [size for dim, size in enumerate(tensor.shape) if dim != rank] != [
                size for dim, size in enumerate(shape) if dim != rank
            ]:
                raise ValueError(
                    f"the LoRA weights of {named} hold a tensor of shape {tuple(tensor.shape)} for {key}, where "
                    f"adapter {self.adapter_name!r} has {tuple(shape)} (a hotswap may change only the rank): nothing "
                    "was swapped"
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
    """The LoRA adapters a pipeline's components hold, which of them are active, which layers
    peft has wrapped, and the `requires_grad` of every tensor: what a LoRA load changes besides
    the new adapter's own tensors. Loading injects peft layers around the base layers it adapts
    and freezes every base tensor; taking the new adapter out (`delete_adapters`) leaves both.
    A frozen tensor is more than a training matter: on one of our CPUs, the tiny SDXL pipeline
    with frozen tensors drew images up to 7.2e-7 away from those of before.
    `load_lora_weights` puts it all back when a load fails (`lora_loading`), and so does a
    failed IP-Adapter load (`ip_adapter_loading.IPAdapterState`): diffusers' `load_ip_adapter`
    loads a FaceID adapter's own LoRA as `faceid_<n>` and activates it alone (`set_adapters`),
    and taking it out alone would leave peft activating every adapter left. Scalings are not
    copied: that `set_adapters` sets only the new adapter's, which goes with it."""

    adapters: dict[str, set[str]]  # component -> its adapters' names
    layers: list[tuple[Any, Any]]  # (a peft LoRA layer, its active adapter or adapters)
    wrapped: dict[str, set[str]]  # component -> the names of its peft layers
    unconfigured: set[str]  # components without a `peft_config` (a failed UNet load leaves an empty one)
    trainable: list[tuple[torch.nn.Parameter, bool]]  # each tensor of the components and its `requires_grad`

    @classmethod
    def of(cls, pipeline: Any) -> LoraState:
        from peft.tuners.tuners_utils import BaseTunerLayer

        adapters = pipeline._adapter_names()
        layers, wrapped, trainable = [], {}, []
        for component in adapters:
            model = getattr(pipeline, component)
            wrapped[component] = set()
            for name, module in model.named_modules():
                if isinstance(module, BaseTunerLayer):
                    wrapped[component].add(name)
                    active = module._active_adapter
                    layers.append((module, list(active) if isinstance(active, list) else active))
            trainable += [(value, value.requires_grad) for value in model.parameters()]
        unconfigured = {component for component in adapters if not hasattr(getattr(pipeline, component), "peft_config")}
        return cls(adapters, layers, wrapped, unconfigured, trainable)

    def restore(self, pipeline: Any) -> None:
        """Take out the adapters loaded since and the peft layers wrapped for them (each base
        layer back in its place) and an empty `peft_config` where there was none; make active
        again what was; every tensor as trainable as it was."""
        pipeline._delete_new_adapters(self.adapters)
        for component, names in self.wrapped.items():
            _unwrap_layers_since(getattr(pipeline, component), names)
        for component in self.unconfigured:
            model = getattr(pipeline, component)
            if hasattr(model, "peft_config") and not model.peft_config:
                del model.peft_config
        for module, active in self.layers:
            module._active_adapter = active
        for value, requires_grad in self.trainable:
            value.requires_grad_(requires_grad)


def _unwrap_layers_since(model: torch.nn.Module, wrapped_before: set[str]) -> None:
    """Put back the base layer of each peft layer of `model` not named in `wrapped_before`
    (the adapters of such a layer were all loaded since, and are already taken out)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    since = [
        name
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and name not in wrapped_before
    ]
    for name in since:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).get_base_layer())


__all__ = ["AdapterSnapshot", "LoraState"]
