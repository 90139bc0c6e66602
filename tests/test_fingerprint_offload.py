"""Weights fingerprints under accelerate's offloading: a tower whose weights rest on the meta
device (sequential offload, `device_map` with `offload_folder`) is fingerprinted from the values
its hooks load, so a disk cache works there and agrees with the same weights not offloaded;
and what model offload's moves let the watch see (docs/conditioning.md, the cache)."""

from __future__ import annotations

import copy
import os

import accelerate
import pytest
import tiny_pipelines
import torch
from diffusers import StableDiffusionPipeline
from forward_counter import ForwardCounter
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.fingerprint import WeightsWatch, weights_hash

PROMPTS = ["a red fox in the snow", ""]


def _pipeline_embeds(pipe) -> torch.Tensor:
    """diffusers' own `encode_prompt`: (prompts, 77, width). Through a copy of the tokenizer: a
    call leaves its padding mode set on the tokenizer's backend, which the tokenizer part of
    the cache key reads, so conditioners made before and after it would not share keys."""
    apart = StableDiffusionPipeline(**{**pipe.components, "tokenizer": copy.deepcopy(pipe.tokenizer)})
    with torch.no_grad():
        return apart.encode_prompt(PROMPTS, "cpu", 1, False)[0]


def _read_back(pipe, cache_dir) -> torch.Tensor:
    """The tokens of a fresh conditioner on `cache_dir`, checked to come from the disk rows
    (the encoder does not run)."""
    counter = ForwardCounter(pipe.text_encoder)
    tokens = TextConditioner.from_pipeline(pipe, cache_dir=str(cache_dir)).encode(PROMPTS).tokens
    counter.handle.remove()
    assert counter.calls == 0
    return tokens


def test_a_sequentially_offloaded_encoder_has_a_disk_cache_shared_with_its_plain_self(tmp_path):
    pipe = tiny_pipelines.build_sd()
    expected = _pipeline_embeds(pipe)
    plain_hash = weights_hash([pipe.text_encoder])
    plain = TextConditioner.from_pipeline(pipe, cache_dir=str(tmp_path / "plain")).encode(PROMPTS).tokens
    assert torch.equal(plain, expected)
    accelerate.cpu_offload(pipe.text_encoder, execution_device=torch.device("cpu"))  # as enable_sequential_cpu_offload
    assert {weight.device.type for weight in pipe.text_encoder.parameters()} == {"meta"}
    assert torch.equal(_pipeline_embeds(pipe), expected)

    assert weights_hash([pipe.text_encoder]) == plain_hash
    assert torch.equal(_read_back(pipe, tmp_path / "plain"), expected)  # rows written without offload

    offloaded = TextConditioner.from_pipeline(pipe, cache_dir=str(tmp_path / "offloaded"))
    counter = ForwardCounter(pipe.text_encoder)
    assert torch.equal(offloaded.encode(PROMPTS).tokens, expected)
    assert torch.equal(offloaded.encode(PROMPTS).tokens, expected) and counter.calls == 1  # the second from memory
    assert torch.equal(_read_back(pipe, tmp_path / "offloaded"), expected)


def _device_map(model: nn.Module) -> dict[str, str]:
    """Every module of `model` on the CPU but the odd layers of its encoder, on disk."""
    layers = next(name for name, part in model.named_modules() if isinstance(part, nn.ModuleList))
    device_map = {}

    def cover(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path == layers:
                device_map.update({f"{path}.{index}": "disk" if index % 2 else "cpu" for index in range(len(child))})
            elif layers.startswith(f"{path}."):
                cover(child, f"{path}.")
            else:
                device_map[path] = "cpu"

    cover(model, "")
    return device_map


def test_a_disk_offloaded_encoder_has_a_disk_cache_and_sees_its_file_change(tmp_path):
    base = tiny_pipelines.build_sd()
    plain = _pipeline_embeds(base)
    base.text_encoder.save_pretrained(tmp_path / "text_encoder")
    plain_hash = weights_hash([base.text_encoder])
    device_map = _device_map(base.text_encoder)
    encoder = CLIPTextModel.from_pretrained(
        tmp_path / "text_encoder", device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    assert {weight.device.type for weight in encoder.parameters()} == {"cpu", "meta"}
    pipe = StableDiffusionPipeline(**{**base.components, "text_encoder": encoder})
    expected = _pipeline_embeds(pipe)
    assert torch.equal(expected, plain)
    assert weights_hash([encoder]) == plain_hash

    cond = TextConditioner.from_pipeline(pipe, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(cond.encode(PROMPTS).tokens, expected)
    assert torch.equal(_read_back(pipe, tmp_path / "cache"), expected)

    # New offloaded values on disk (the checkpoint replaced): the forward loads them, the
    # fingerprint follows.
    state = WeightsWatch([encoder]).state()
    weights_file = next((tmp_path / "text_encoder").glob("*.safetensors"))
    changed = {
        name: tensor * 1.5 if ".layers.1." in name else tensor for name, tensor in load_file(weights_file).items()
    }
    save_file(changed, tmp_path / "new.safetensors", metadata={"format": "pt"})
    os.replace(tmp_path / "new.safetensors", weights_file)
    new_expected = _pipeline_embeds(pipe)
    assert not torch.equal(new_expected, expected)
    assert WeightsWatch([encoder]).state()[1] != state[1]
    assert torch.equal(cond.encode(PROMPTS).tokens, new_expected)
    assert torch.equal(_read_back(pipe, tmp_path / "cache"), new_expected)


class Pair(nn.Module):
    """Two linear layers, one inside the other's parent: paths with dots."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(3, 3)
        self.block = nn.Sequential(nn.Linear(3, 2))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.block(self.first(inputs))


@pytest.mark.parametrize("preload", [False, True], ids=["hook-per-layer", "preloaded-block"])
def test_the_state_of_offloaded_weights_stays_across_forwards_and_follows_their_values(preload):
    module = Pair()
    plain_hash = weights_hash([module])
    values = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    accelerate.cpu_offload(
        module, torch.device("cpu"), state_dict=values, preload_module_classes=["Sequential"] if preload else None
    )
    watch = WeightsWatch([module])
    first = watch.state()
    module(torch.ones(1, 3))  # the hooks put new meta tensors back after the forward
    assert watch.state() == first
    assert watch.content_hash() == plain_hash

    with torch.no_grad():
        values["block.0.weight"].mul_(2.0)  # what the next forward loads
    written = watch.state()
    assert written != first
    values["first.bias"] = values["first.bias"].clone()  # the same values in a new tensor
    replaced = watch.state()
    assert replaced != written and replaced[0] == written[0] + 1
    module.to(torch.float64)  # the hook casts what it loads to the module's dtype
    assert watch.state()[1] != replaced[1]

    expected = Pair().double()
    expected.load_state_dict(values)
    assert watch.content_hash() == weights_hash([expected])


def test_a_meta_weight_its_offload_hook_cannot_load_is_refused_by_name():
    module = nn.Sequential(nn.Linear(2, 2))
    accelerate.cpu_offload(module, torch.device("cpu"))
    del module[0]._hf_hook.weights_map.dataset["0.bias"]
    with pytest.raises(
        ValueError, match=r"^cannot fingerprint weights on the meta device \(0\.0\.bias\): the accelerate hook"
    ):
        weights_hash([module])


def test_a_round_trip_under_model_offload_needs_weights_written():
    """The documented gap: under `enable_model_cpu_offload` a write that ends on the same dtype
    and device is not seen (the hook gives the weights a new storage at every move on an
    accelerator); `weights_written()` is the remedy."""
    pipe = tiny_pipelines.build_sd()
    pipe.enable_model_cpu_offload(device="cpu")
    cond = TextConditioner.from_pipeline(pipe)
    before = cond.encode(PROMPTS).tokens
    pipe.text_encoder.to(torch.bfloat16).to(torch.float32)  # rounds every weight
    expected = _pipeline_embeds(pipe)
    assert not torch.equal(expected, before)
    cond.weights_written()
    assert torch.equal(cond.encode(PROMPTS).tokens, expected)


def test_a_cast_and_back_of_an_offloaded_clip_conditioned_pipeline_is_seen() -> None:
    """`pipe.to(torch.bfloat16).to(torch.float32)` rounds the weights; under model offload hooks
    no mark sees it, so `CLIPConditionedPipeline.to` tells its conditioners (the documented
    remedy, `weights_written`): the next encode equals diffusers' on the rounded weights."""
    from diffusers import StableDiffusionPipeline
    from tiny_pipelines import build_sd

    from clipcond import CLIPConditionedPipeline

    prompt = ["a red fox in the snow"]
    pipe = CLIPConditionedPipeline.from_pipe(build_sd())
    pipe.enable_model_cpu_offload(device="cpu")
    before = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    pipe.to(torch.bfloat16)
    pipe.to(torch.float32)
    after = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    peer = StableDiffusionPipeline(
        **{name: getattr(pipe, name) for name in names},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with torch.no_grad():
        expected = peer.encode_prompt(prompt, "cpu", 1, False)[0]
    assert not torch.equal(expected, before)
    assert torch.equal(after, expected)
