"""A1111's ``<lora:name:0.8>`` tags in the prompts of a `CLIPConditionedPipeline` call: the named
adapters active at their multipliers for that call alone.

`reads_lora_tags` wraps `CLIPConditionedPipeline.__call__` (which its img2img and inpaint
siblings run, the prompt untouched before): in A1111's syntax (the pipeline's `syntax`
config), it takes the tags out of ``prompt`` (`clipcond.network_tags.split_network_tags`),
makes exactly the tagged adapters active, each at its multiplier in the text encoders and its
own in the UNet (`set_adapters` with per-component weights, as A1111 applies a tag to the
networks it loads for the call), runs the call on the text without the tags, and puts back
in every LoRA layer which adapters were active, their scales and which adapter tensors
require grad, even when the call fails (`_LayerState`: what diffusers' `set_adapters` changes).

As in A1111, the tags of ``prompt`` apply to the whole batch: here every prompt of a list must
carry the same tags (A1111 takes the first prompt's and drops the others' without a word).
Tags in a negative prompt or in ``prompt_2`` are refused by the pipeline's conditioner, as is
a tag in any prompt handed to a `TextConditioner`, which cannot activate the UNet's adapters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from clipcond.network_tags import LoraTag, split_network_tags


def _prompt_tags(prompt: Any) -> tuple[Any, tuple[LoraTag, ...]]:
    """`prompt` (a string, a list of strings, or anything the call checks itself) without its
    tags, and the tags every prompt carries.

    Raises:
        ValueError: prompts of one list with different tags, or a tag `split_network_tags` refuses.
    """
    if isinstance(prompt, str):
        return split_network_tags(prompt)
    if not isinstance(prompt, list) or not all(isinstance(text, str) for text in prompt) or not prompt:
        return prompt, ()
    split = [split_network_tags(text) for text in prompt]
    # the same adapters at the same multipliers, in any order
    sets = {tuple(sorted(found, key=lambda tag: tag.name)) for _, found in split}
    if len(sets) > 1:
        written = sorted(
            ", ".join(f"<lora:{tag.name}:{tag.text_encoder:g}:{tag.unet:g}>" for tag in found) or "none"
            for found in sets
        )
        raise ValueError(
            f"the prompts of one call carry different LoRA tags ({'; '.join(written)}): one set of adapters runs per "
            "call, so give every prompt the same tags (A1111 applies the first prompt's to all)"
        )
    return [text for text, _ in split], split[0][1]


def _lora_layers(pipeline: Any) -> dict[str, list[Any]]:
    """Each LoRA-loadable component's peft LoRA layers, in one walk of its modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {}
    for component in pipeline._lora_loadable_modules:
        model = getattr(pipeline, component, None)
        if model is not None:
            layers[component] = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    return layers


@dataclass
class _LayerState:
    """What `set_adapters` changes in one peft layer: its active adapters, its scalings (alpha /
    rank x weight, per adapter) and which of its adapter tensors require grad (peft's
    `set_adapter` makes those of the active adapters trainable)."""

    layer: Any
    active: Any
    scaling: dict
    trainable: list[tuple[torch.nn.Parameter, bool]]

    @classmethod
    def of(cls, layer: Any) -> _LayerState:
        active = layer._active_adapter
        adapter_tensors = [value for name in layer.adapter_layer_names for value in getattr(layer, name).parameters()]
        return cls(
            layer,
            list(active) if isinstance(active, list) else active,
            dict(layer.scaling),
            [(value, value.requires_grad) for value in adapter_tensors],
        )

    def restore(self) -> None:
        self.layer._active_adapter = self.active
        self.layer.scaling.clear()
        self.layer.scaling.update(self.scaling)
        for value, requires_grad in self.trainable:
            value.requires_grad_(requires_grad)


def _check_tags(pipeline: Any, tags: tuple[LoraTag, ...], layers: dict[str, list[Any]]) -> None:
    """Every tagged adapter is one the pipeline holds, and its LoRA layers (`layers`, by
    component) are switched on and not fused."""
    held = {name for names in pipeline._adapter_names().values() for name in names}
    missing = [tag.name for tag in tags if tag.name not in held]
    if missing:
        raise ValueError(
            f"LoRA tags name {missing}, which the pipeline holds no adapter of (loaded: {sorted(held)}): load each "
            "first with `load_lora_weights(path, adapter_name=name)`"
        )
    for component, found in layers.items():
        if any(layer.disable_adapters for layer in found):
            raise ValueError(
                f"the prompt's LoRA tags would do nothing: the {component}'s LoRA layers are switched off "
                "(`disable_lora()`); call `enable_lora()` first"
            )
        if any(layer.merged for layer in found):
            # peft would unmerge them to switch adapters, writing the base weights, and the call
            # could not put that back
            raise ValueError(
                f"the {component}'s LoRA is fused into its weights (`fuse_lora()`), and the prompt's LoRA tags switch "
                "adapters: call `unfuse_lora()` first, or take the tags out"
            )


@contextmanager
def tagged_adapters(pipeline: Any, tags: tuple[LoraTag, ...]) -> Iterator[None]:
    """The adapters `tags` name active at their multipliers (text encoders, UNet) while the
    block runs, and nothing else; afterwards each LoRA layer as it was (`_LayerState`)."""
    layers = _lora_layers(pipeline)
    _check_tags(pipeline, tags, layers)
    states = [_LayerState.of(layer) for found in layers.values() for layer in found]
    components = pipeline._lora_loadable_modules
    weights = [
        {component: tag.unet if component == "unet" else tag.text_encoder for component in components} for tag in tags
    ]
    try:
        pipeline.set_adapters([tag.name for tag in tags], weights)
        yield
    finally:
        for state in states:
            state.restore()


def reads_lora_tags(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call` (a pipeline's ``__call__``) reading A1111's LoRA tags in ``prompt`` (see the
    module docstring); in the compel and ComfyUI syntaxes, and without tags, `call` as it is."""

    @functools.wraps(call)
    def with_tags(self: Any, prompt: Any = None, *args: Any, **kwargs: Any) -> Any:
        if self.config.syntax != "a1111":
            return call(self, prompt, *args, **kwargs)
        prompt, tags = _prompt_tags(prompt)
        if not tags:
            return call(self, prompt, *args, **kwargs)
        with tagged_adapters(self, tags):
            return call(self, prompt, *args, **kwargs)

    return with_tags
