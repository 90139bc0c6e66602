"""A torchao int8 CLIP under accelerate's sequential offload (`cpu_offload`: its weights rest on
the meta device, their `Int8Tensor` values in the hooks' state dict): the disk cache's hash reads
them from there, and equals that of the same weights not offloaded; a write into an offloaded
weight's inner tensors is seen by the memory cache, as it is without offload.
"""

from __future__ import annotations

import pytest
import tiny_pipelines
import torch
from accelerate import cpu_offload
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.fingerprint import weights_hash

PROMPTS = ["a red circle to the left of a blue square", "a (green:1.3) triangle"]
CPU = torch.device("cpu")


def int8_clip(folder, offloaded: bool) -> CLIPTextModel:
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    config = TorchAoConfig(quant_type=Int8WeightOnlyConfig())
    model = CLIPTextModel.from_pretrained(folder, quantization_config=config, device_map="cpu").eval()
    if offloaded:
        cpu_offload(model, CPU, offload_buffers=True)
    return model


def value_projection(model: CLIPTextModel) -> torch.Tensor:
    """The first layer's value-projection weight, where its values are: in the offload hook's
    state dict when the model is offloaded, on the layer otherwise."""
    layer = getattr(model, "text_model", model).encoder.layers[0].self_attn.v_proj  # transformers 5: no text_model
    hook = layer.__dict__.get("_hf_hook")
    return layer.weight if hook is None else hook.weights_map["weight"]


def encode(model: CLIPTextModel, **kwargs) -> torch.Tensor:
    conditioner = TextConditioner("sd", clip=[(model, tiny_pipelines.clip_tokenizer())], **kwargs)
    return conditioner.encode(PROMPTS).tokens


def test_disk_cache_hashes_an_offloaded_int8_encoder_as_the_same_weights_in_memory(tiny_clip_text_path, tmp_path):
    offloaded = int8_clip(tiny_clip_text_path, offloaded=True)
    resident = int8_clip(tiny_clip_text_path, offloaded=False)
    assert type(value_projection(offloaded)).__name__ == "Int8Tensor"
    assert getattr(offloaded, "text_model", offloaded).encoder.layers[0].self_attn.v_proj.weight.qdata.is_meta
    assert weights_hash([offloaded]) == weights_hash([resident])
    ours = encode(offloaded, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(ours, encode(resident, cache_size=0))
    # the second conditioner over the resident model finds the first one's entries on disk
    assert torch.equal(encode(resident, cache_dir=str(tmp_path / "cache")), ours)


def test_a_write_into_an_offloaded_int8_weight_is_seen_by_the_memory_cache(tiny_clip_text_path) -> None:
    offloaded = int8_clip(tiny_clip_text_path, offloaded=True)
    resident = int8_clip(tiny_clip_text_path, offloaded=False)
    conditioner = TextConditioner("sd", clip=[(offloaded, tiny_pipelines.clip_tokenizer())])
    before = conditioner.encode(PROMPTS).tokens
    with torch.no_grad():
        for model in (offloaded, resident):
            value_projection(model).qdata.mul_(-1)
    after = conditioner.encode(PROMPTS).tokens
    reference = encode(resident, cache_size=0)  # the same write, no offload, no cache
    assert not torch.equal(reference, before)
    assert torch.equal(after, reference)
