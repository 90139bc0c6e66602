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


__all__ = ["AdapterSnapshot", "LoraState"]
