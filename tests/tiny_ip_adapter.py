"""Tiny random IP-Adapters and image encoders for the IP-Adapter tests, built locally.

The state dict is laid out as diffusers' `create_ip_adapter_state_dict` (and
`create_ip_adapter_faceid_state_dict`) in its tests/models/unets/test_models_unet_2d_condition.py
lay it out, which is the layout of the published adapter files: "ip_adapter" holds a key and
a value projection of the image tokens for every cross-attention, numbered 1, 3, 5... in the
UNet's processor order; "image_proj" the image projection's weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

IMAGE_SIZE = 32


def ip_adapter_state_dict(unet: UNet2DConditionModel, seed: int = 0, face_id: bool = False) -> dict:
    """A random IP-Adapter for `unet`: {"image_proj": ..., "ip_adapter": ...}, the image
    projection an `ImageProjection` to 4 tokens or, for FaceID, an
    `IPAdapterFaceIDImageProjection`; image embeddings are `cross_attention_dim` wide."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterFaceIDImageProjection

    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)
    attention = {}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention reads no image tokens
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        else:
            block = int(name.split(".")[1])
            hidden = channels[block] if name.startswith("down_blocks") else channels[::-1][block]
        for projection in ("to_k_ip", "to_v_ip"):
            attention[f"{key}.{projection}.weight"] = torch.randn(hidden, width, generator=generator) / width**0.5
        key += 2
    torch.manual_seed(seed)
    if face_id:
        layer = IPAdapterFaceIDImageProjection(cross_attention_dim=width, image_embed_dim=width, mult=2, num_tokens=4)
        file_names = {"ff.net.0.proj": "proj.0", "ff.net.2": "proj.2", "norm": "norm"}
    else:
        layer = ImageProjection(cross_attention_dim=width, image_embed_dim=width, num_image_text_embeds=4)
        file_names = {"image_embeds": "proj", "norm": "norm"}
    image_proj = {}
    for name, tensor in layer.state_dict().items():
        module, kind = name.rsplit(".", 1)
        image_proj[f"{file_names[module]}.{kind}"] = tensor
    return {"image_proj": image_proj, "ip_adapter": attention}


def faceid_lora_state_dict(unet: UNet2DConditionModel, seed: int = 0, rank: int = 4) -> dict:
    """The LoRA a FaceID adapter file carries beside its layers, in its "ip_adapter" part:
    `<n>.<to_q|to_k|to_v|to_out>_lora.<down|up>.weight` for every attention processor `n` in
    the UNet's order (self-attention included), as diffusers' `_load_ip_adapter_loras` reads it."""
    generator = torch.Generator().manual_seed(seed)
    channels, width = list(unet.config.block_out_channels), unet.config.cross_attention_dim
    lora = {}
    for number, name in enumerate(unet.attn_processors):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        else:
            block = int(name.split(".")[1])
            hidden = channels[block] if name.startswith("down_blocks") else channels[::-1][block]
        reads = width if name.endswith("attn2.processor") else hidden  # what to_k and to_v take in
        for projection, fan_in in (("to_q", hidden), ("to_k", reads), ("to_v", reads), ("to_out", hidden)):
            lora[f"{number}.{projection}_lora.down.weight"] = torch.randn(rank, fan_in, generator=generator) / 10
            lora[f"{number}.{projection}_lora.up.weight"] = torch.randn(hidden, rank, generator=generator) / 10
    return lora


def image_encoder(projection_dim: int, seed: int = 0) -> CLIPVisionModelWithProjection:
    """A tiny CLIP vision tower whose image embeddings are `projection_dim` wide (32x32 images)."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(config).eval()


def save_ip_adapter(folder: Path, unet: UNet2DConditionModel, seed: int = 0, name: str = "ip_adapter") -> str:
    """Write a random adapter for `unet` as `folder/<name>.safetensors` (keys "image_proj.*" and
    "ip_adapter.*", as published adapter files have them) and, once, a tiny image encoder in
    `folder/image_encoder`; returns the weight file's name."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = ip_adapter_state_dict(unet, seed)
    flat = {f"{part}.{key}": tensor.contiguous() for part, tensors in state.items() for key, tensor in tensors.items()}
    save_file(flat, folder / f"{name}.safetensors")
    if not (folder / "image_encoder").exists():
        image_encoder(unet.config.cross_attention_dim).save_pretrained(folder / "image_encoder")
    return f"{name}.safetensors"
