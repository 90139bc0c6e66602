"""`load_lora_weights` all or nothing (pipelines/lora_loading.py): a LoRA file that fails to
load partway (a tensor of another shape in the text encoder or the UNet), holds NaN, or lacks a
tensor of a layer it adapts leaves no adapter in any component, and the pipeline gives the
images of before, bit for bit; an adapter loaded before stays active. diffusers' loader, on the
same files, kept the adapter in both models after the shape failure (the images changed), took
NaN silently, and left the missing tensor on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lora_pipeline import pair, run, saved_lora

DAMAGES = {
    "text_encoder_shape": RuntimeError,
    "unet_shape": RuntimeError,
    "nan": ValueError,
    "unet_tensor_missing": ValueError,
}
MESSAGES = {
    "nan": r"^the LoRA weights of .* hold NaN or infinite values \(unet\..*; a damaged file\?\): nothing was loaded$",
    "unet_tensor_missing": r"^the LoRA weights of .* have no tensor for unet\..*lora_A.*: nothing was loaded$",
}


def _damaged(folder, good, damage: str):
    """A copy of the LoRA folder `good` with its weights damaged as `damage` says."""
    path = next(good.glob("*.safetensors"))
    weights = load_file(path)
    down = sorted(key for key in weights if ".down." in key or "lora_A" in key)
    if damage == "text_encoder_shape":
        first = next(key for key in down if key.startswith("text_encoder."))
        weights[first] = weights[first][:, :-1].contiguous()
    elif damage == "unet_shape":
        first = next(key for key in down if key.startswith("unet."))
        weights[first] = weights[first][:, :-1].contiguous()
    elif damage == "nan":
        weights = {key: torch.full_like(value, float("nan")) for key, value in weights.items()}
    else:
        del weights[next(key for key in down if key.startswith("unet."))]
    folder.mkdir()
    save_file(weights, str(folder / path.name))
    return folder


def _adapters(pipe) -> dict:
    components = ["unet", "text_encoder", "text_encoder_2"]
    models = {name: getattr(pipe, name, None) for name in components}
    return {name: sorted(getattr(model, "peft_config", None) or ()) for name, model in models.items() if model}


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_lora_leaves_no_adapter_and_the_images_of_before(tmp_path, sdxl, damage) -> None:
    good = saved_lora(tmp_path / "good", sdxl)
    peer, ours = pair(sdxl)
    plain = run(ours)
    with pytest.raises(DAMAGES[damage], match=MESSAGES.get(damage)):
        ours.load_lora_weights(_damaged(tmp_path / "damaged", good, damage))
    assert all(names == [] for names in _adapters(ours).values())
    assert np.array_equal(run(ours), plain)
    for pipe in (peer, ours):  # a good LoRA still loads, as diffusers loads it
        pipe.load_lora_weights(good)
    assert np.array_equal(run(ours), run(peer))


@pytest.mark.parametrize("damage", ["text_encoder_shape", "nan"])
def test_a_failed_load_keeps_the_adapter_loaded_before(tmp_path, damage) -> None:
    first = saved_lora(tmp_path / "first", seed=1)
    second = saved_lora(tmp_path / "second", seed=2)
    _, ours = pair()
    ours.load_lora_weights(first, adapter_name="first")
    with_first, adapters = run(ours), _adapters(ours)
    with pytest.raises(DAMAGES[damage]):
        ours.load_lora_weights(_damaged(tmp_path / "damaged", second, damage), adapter_name="second")
    assert _adapters(ours) == adapters == {"unet": ["first"], "text_encoder": ["first"]}
    assert ours.get_active_adapters() == ["first"]
    assert np.array_equal(run(ours), with_first)


@pytest.mark.parametrize(
    "name", [1.5, "", "my.lora", ["a"], torch.zeros(1)], ids=["float", "empty", "dot", "list", "tensor"]
)
def test_an_adapter_name_that_cannot_name_layers_is_refused_naming_it(tmp_path, name) -> None:
    """torch refused these as module names ("module name should be a string", a KeyError for
    "") without naming the argument."""
    _, ours = pair()
    with pytest.raises(TypeError, match=r"^`adapter_name` must be None \(a default name\) or a non-empty string"):
        ours.load_lora_weights(saved_lora(tmp_path / "lora"), adapter_name=name)
    assert all(names == [] for names in _adapters(ours).values())
