"""A `load_ip_adapter` that fails leaves the pipeline as it was (pipelines/ip_adapter_loading.py).

diffusers' loader, on the same damaged files, registered the image encoder before failing
(a bare `KeyError` for a missing key), broke an adapter loaded before it (the next image call
failed inside the UNet), and loaded NaN weights silently. Here each damaged file is refused,
naming the file, and the pipeline's components, attention processors and image projection
are the objects of before: images with and without the earlier adapter stay bit-identical."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from test_ip_adapter import picture
from test_lora_pipeline import saved_lora
from tiny_ip_adapter import faceid_lora_state_dict, ip_adapter_state_dict, save_ip_adapter
from tiny_pipelines import copy_sharing_tokenizers, sd_components, shared_tokenizers_kept

from clipcond import CLIPConditionedPipeline
from clipcond.pipelines.ip_adapter_loading import describe_source


@pytest.fixture(scope="module")
def parts() -> Iterator[dict]:
    """The SD components the module's pipelines copy, their tokenizer shared: a test that
    changed it fails the module."""
    built = sd_components()
    built["scheduler"] = DDIMScheduler(steps_offset=1, clip_sample=False)
    with shared_tokenizers_kept(built):
        yield built


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory):
    """A good adapter (`good.safetensors`), its image encoder, and damaged copies of it."""
    folder = tmp_path_factory.mktemp("ip_adapter")
    save_ip_adapter(folder, parts["unet"], 0, name="good")
    good = folder / "good.safetensors"
    weights = load_file(good)
    raw = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (folder / "empty.safetensors").write_bytes(b"")
    save_file({k: v for k, v in weights.items() if k.startswith("image_proj.")}, str(folder / "no_layers.safetensors"))
    last = sorted(weights)[-1]
    save_file({k: v for k, v in weights.items() if k != last}, str(folder / "one_key_less.safetensors"))
    narrow = {k: v[:, :-1].contiguous() if k.startswith("ip_adapter.") else v for k, v in weights.items()}
    save_file(narrow, str(folder / "wrong_width.safetensors"))
    damaged = dict(weights)
    damaged[last] = damaged[last].clone()
    damaged[last][0, 0] = float("nan")
    save_file(damaged, str(folder / "nan.safetensors"))
    first = sorted(weights)[0]  # an image projection tensor: the attention layers are whole
    assert first.startswith("image_proj.")
    damaged = dict(weights)
    damaged[first] = damaged[first].clone()
    damaged[first].view(-1)[0] = float("inf")
    save_file(damaged, str(folder / "inf_projection.safetensors"))
    return folder


def _pipeline(parts) -> CLIPConditionedPipeline:
    pipe = CLIPConditionedPipeline(
        **copy_sharing_tokenizers(parts), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(pipe, folder, name: str) -> None:
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=f"{name}.safetensors")


def _image(pipe, **kwargs) -> np.ndarray:
    settings = dict(prompt="a red circle", num_inference_steps=2, guidance_scale=6.0, output_type="np")
    return pipe(generator=torch.Generator().manual_seed(0), **settings, **kwargs).images


def _state(pipe) -> tuple:
    unet = pipe.unet
    processors = {name: id(processor) for name, processor in unet.attn_processors.items()}
    return (
        pipe.image_encoder,
        pipe.feature_extractor,
        pipe.config.image_encoder,
        processors,
        unet.encoder_hid_proj,
        unet.config.encoder_hid_dim_type,
    )


DAMAGED = {
    "truncated": r"is not a readable safetensors file \(",
    "empty": r"is not a readable safetensors file \(",
    "no_layers": r"^the IP-Adapter weights of .* have no '1.to_k_ip.weight' \(an incomplete or damaged file",
    "one_key_less": r"^the IP-Adapter weights of .* have no '\d+.to_v_ip.weight' \(an incomplete or damaged file",
    "wrong_width": r"expected shape",
    "nan": r"^the IP-Adapter weights of .* hold NaN or infinite values \(.*; a damaged file\?\): nothing was loaded$",
    "inf_projection": r"^the IP-Adapter weights of .* hold NaN or infinite values \(encoder_hid_proj\.",
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_adapter_file_is_refused_and_the_pipeline_is_as_before(parts, folder, damage) -> None:
    pipe = _pipeline(parts)
    before, plain = _state(pipe), _image(pipe)
    with pytest.raises(ValueError, match=DAMAGED[damage]) as refusal:
        _load(pipe, folder, damage)
    if damage != "wrong_width":  # diffusers' own message there names no file
        assert f"{damage}.safetensors" in str(refusal.value)
    after = _state(pipe)
    assert after[:3] == before[:3] and after[3] == before[3] and after[4:] == before[4:]
    assert pipe.image_encoder is None
    assert np.array_equal(_image(pipe), plain)
    _load(pipe, folder, "good")  # and a good file still loads
    assert pipe.image_encoder is not None


@pytest.mark.parametrize("damage", ["no_layers", "nan", "truncated"])
def test_a_failed_load_keeps_the_adapter_loaded_before(parts, folder, damage) -> None:
    """The adapter loaded first still conditions the image, bit for bit, after a second load
    fails (diffusers' loader left its attention layers without an image projection)."""
    pipe = _pipeline(parts)
    _load(pipe, folder, "good")
    before = _state(pipe)
    with_image = _image(pipe, ip_adapter_image=picture(0))
    with pytest.raises(ValueError):
        _load(pipe, folder, damage)
    assert _state(pipe) == before
    assert np.array_equal(_image(pipe, ip_adapter_image=picture(0)), with_image)


def test_a_unet_that_projects_its_text_rows_gets_its_projection_back_after_a_failed_load(parts, tmp_path) -> None:
    """A UNet with `encoder_hid_dim_type="text_proj"` (Kolors' layout): diffusers' loader keeps
    its text projection as `text_encoder_hid_proj` beside the image projection. A failed load
    puts back what was (no such attribute at first, then the projection kept by a good load);
    the images with the adapter are diffusers'."""
    config = {key: value for key, value in parts["unet"].config.items() if not key.startswith("_")}
    torch.manual_seed(0)
    built = {
        **parts,
        "unet": UNet2DConditionModel(**{**config, "encoder_hid_dim_type": "text_proj", "encoder_hid_dim": 32}),
    }
    save_ip_adapter(tmp_path, built["unet"], 0, name="good")
    weights = load_file(tmp_path / "good.safetensors")
    save_file(
        {key: value for key, value in weights.items() if key != sorted(weights)[-1]}, str(tmp_path / "bad.safetensors")
    )
    ours = _pipeline(built)
    peer = StableDiffusionPipeline(
        **copy.deepcopy(built), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    peer.set_progress_bar_config(disable=True)
    projection, plain = ours.unet.encoder_hid_proj, _image(ours)
    assert isinstance(projection, torch.nn.Linear) and not hasattr(ours.unet, "text_encoder_hid_proj")
    with pytest.raises(ValueError, match=r"have no '\d+.to_v_ip.weight'"):
        _load(ours, tmp_path, "bad")
    assert not hasattr(ours.unet, "text_encoder_hid_proj") and ours.unet.encoder_hid_proj is projection
    assert ours.unet.config.encoder_hid_dim_type == "text_proj"
    assert np.array_equal(_image(ours), plain)
    for pipe in (ours, peer):
        _load(pipe, tmp_path, "good")
    assert ours.unet.text_encoder_hid_proj is projection
    with_image = _image(ours, ip_adapter_image=picture(0))
    assert np.array_equal(with_image, _image(peer, ip_adapter_image=picture(0)))
    with pytest.raises(ValueError, match=r"have no '\d+.to_v_ip.weight'"):
        _load(ours, tmp_path, "bad")
    assert ours.unet.text_encoder_hid_proj is projection
    assert np.array_equal(_image(ours, ip_adapter_image=picture(0)), with_image)


@pytest.mark.parametrize(
    "source, weight_name, named",
    [
        ({"image_proj": {}}, None, "the state dict"),
        ("folder", None, "folder"),
        ("folder", "a.bin", "folder (a.bin)"),
        (["one", "two"], ["a.bin", "b.bin"], "one (a.bin), two (b.bin)"),
        (["one", "two"], ("a.bin", "b.bin"), "one (a.bin), two (b.bin)"),
        (["one", "two"], "a.bin", "one (a.bin), two (a.bin)"),
        (["one", {"image_proj": {}}], ["a.bin", None], "one (a.bin), the state dict"),
    ],
)
def test_a_refusal_names_each_source_with_its_file(source, weight_name, named) -> None:
    assert describe_source(source, weight_name) == named


def _faceid_file(folder, unet, nan: bool = False) -> str:
    """A FaceID adapter with its LoRA in `folder/faceid.safetensors`; with `nan`, one NaN in its
    last image-key projection (read after the LoRA is loaded)."""
    state = ip_adapter_state_dict(unet, 0, face_id=True)
    state["ip_adapter"].update(faceid_lora_state_dict(unet))
    if nan:
        last = sorted(key for key in state["ip_adapter"] if key.endswith("_ip.weight"))[-1]
        state["ip_adapter"][last] = state["ip_adapter"][last].clone()
        state["ip_adapter"][last][0, 0] = float("nan")
    folder.mkdir(parents=True, exist_ok=True)
    flat = {f"{part}.{key}": value.contiguous() for part, values in state.items() for key, value in values.items()}
    save_file(flat, str(folder / "faceid.safetensors"))
    return str(folder)


def _load_faceid(pipe, folder) -> None:
    pipe.load_ip_adapter(folder, subfolder="", weight_name="faceid.safetensors", image_encoder_folder=None)


def test_a_failed_faceid_load_takes_its_lora_out_and_leaves_the_users_lora_active(parts, tmp_path) -> None:
    """diffusers' loader had loaded the adapter's LoRA as `faceid_0` and made it the only active
    adapter when its NaN check failed: `faceid_0` stayed and the user's `style` was switched off.
    (Taking `faceid_0` out alone would switch on every adapter left, `other` too.)"""
    style, other = saved_lora(tmp_path / "style"), saved_lora(tmp_path / "other", seed=2)
    peer = StableDiffusionPipeline(
        **copy_sharing_tokenizers(parts), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    peer.set_progress_bar_config(disable=True)
    ours = _pipeline(parts)
    for pipe in (peer, ours):
        pipe.load_lora_weights(style, adapter_name="style")
        pipe.load_lora_weights(other, adapter_name="other")
        pipe.set_adapters(["style"], [0.5])  # "other" loaded, not active
    with_style = _image(ours)
    trainable = {key: value.requires_grad for key, value in ours.unet.named_parameters()}
    with pytest.raises(ValueError, match=r"faceid\.safetensors\) hold NaN or infinite values"):
        _load_faceid(ours, _faceid_file(tmp_path / "nan", ours.unet, nan=True))
    assert ours.get_list_adapters() == {"unet": ["style", "other"], "text_encoder": ["style", "other"]}
    assert ours.get_active_adapters() == ["style"]
    assert np.array_equal(_image(ours), with_style)
    assert {key: value.requires_grad for key, value in ours.unet.named_parameters()} == trainable
    good = _faceid_file(tmp_path / "good", ours.unet)  # a whole FaceID file loads as in diffusers
    for pipe in (peer, ours):
        _load_faceid(pipe, good)
    assert (
        ours.get_list_adapters()
        == peer.get_list_adapters()
        == {
            "unet": ["style", "other", "faceid_0"],
            "text_encoder": ["style", "other"],
        }
    )
    assert ours.get_active_adapters() == peer.get_active_adapters() == ["faceid_0"]
    embeds = [torch.randn(2, 1, 1, ours.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))]
    ip = dict(ip_adapter_image_embeds=embeds)
    assert np.array_equal(_image(ours, **ip), _image(peer, **ip))


@pytest.mark.parametrize("weight_name", [None, "", ["good.safetensors", None], 3], ids=["none", "empty", "list", "int"])
def test_a_weight_name_that_names_no_file_is_refused_by_name(parts, folder, weight_name) -> None:
    """diffusers failed in `os.path.join` ("join() argument must be str ... not 'NoneType'")."""
    pipe = _pipeline(parts)
    sources = [str(folder)] * 2 if isinstance(weight_name, list) else str(folder)
    subfolders = [""] * 2 if isinstance(weight_name, list) else ""
    with pytest.raises(TypeError, match=r"^`weight_name` must name the adapter's file in the folder or repository"):
        pipe.load_ip_adapter(sources, subfolder=subfolders, weight_name=weight_name)
    assert pipe.image_encoder is None


def test_a_state_dict_needs_no_weight_name(parts, folder) -> None:
    pipe = _pipeline(parts)
    weights = load_file(folder / "good.safetensors")
    state = {
        part: {key.split(".", 1)[1]: value for key, value in weights.items() if key.startswith(f"{part}.")}
        for part in ("image_proj", "ip_adapter")
    }
    pipe.load_ip_adapter(state, subfolder="", weight_name=None, image_encoder_folder=None)
    assert len([p for p in pipe.unet.attn_processors.values() if hasattr(p, "scale")]) > 0


# ---------------------------------------------------------------- set_ip_adapter_scale


def _scales(pipe) -> list:
    return [processor.scale for processor in pipe.unet.attn_processors.values() if hasattr(processor, "scale")]


@pytest.mark.parametrize(
    "scale, error, message",
    [
        (object(), TypeError, r"^`scale` must be a finite number, a dict of block scales"),
        ("0.5", TypeError, r"^`scale` must be a finite number, a dict of block scales .* got '0.5'$"),
        ((0.5,), TypeError, r"^`scale` must be a finite number, a dict of block scales .* got \(0.5,\)$"),
        (True, TypeError, r"^`scale` must be a finite number, a dict of block scales .* got True$"),
        (torch.zeros(2), TypeError, r"^`scale` must be a finite number, a dict of block scales"),
        (float("nan"), ValueError, r"^`scale` must be finite, got nan$"),
        ([float("inf")], ValueError, r"^`scale` must be finite, got inf$"),
        ({"up": {"block_0": [0.0, float("nan")]}}, ValueError, r"^`scale` must be finite, got nan$"),
        ({"up": "high"}, TypeError, r"^`scale` must be a finite number, a dict of block scales .* got 'high'$"),
    ],
    ids=["object", "string", "tuple", "bool", "tensor", "nan", "inf_in_a_list", "nan_in_a_block", "text_in_a_dict"],
)
def test_a_scale_of_another_kind_is_refused_when_it_is_set(parts, folder, scale, error, message) -> None:
    """diffusers stored each of these: the first five failed inside the UNet at the next call
    (after the text was encoded), NaN and infinity made every image NaN."""
    pipe = _pipeline(parts)
    _load(pipe, folder, "good")
    pipe.set_ip_adapter_scale(0.7)
    with pytest.raises(error, match=message):
        pipe.set_ip_adapter_scale(scale)
    assert all(scales == [0.7] for scales in _scales(pipe))


@pytest.mark.parametrize(
    "scale",
    [np.float32(0.5), torch.tensor(0.5), {"down": 0.5, "up": 1.0}, {"up": {"block_0": [0.0, 1.0]}}, [0.25]],
    ids=["numpy", "0d_tensor", "parts", "blocks", "one_per_adapter"],
)
def test_the_scales_diffusers_takes_give_its_images(parts, folder, scale) -> None:
    peer = StableDiffusionPipeline(
        **copy_sharing_tokenizers(parts), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    peer.set_progress_bar_config(disable=True)
    ours = _pipeline(parts)
    for pipe in (peer, ours):
        _load(pipe, folder, "good")
        pipe.set_ip_adapter_scale(scale)
    assert np.array_equal(_image(ours, ip_adapter_image=picture(0)), _image(peer, ip_adapter_image=picture(0)))


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])
def test_a_damaged_image_encoder_is_named_by_its_file_before_anything_loads(parts, folder, tmp_path, damaged) -> None:
    """diffusers reads `image_encoder/` beside the adapter file: a cut `model.safetensors` there
    was reported as damage of the adapter file itself (`good.safetensors`)."""
    import shutil

    copy_of = shutil.copytree(folder, tmp_path / "adapter")
    file = copy_of / "image_encoder" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    pipe = _pipeline(parts)
    before = _state(pipe)
    with pytest.raises(ValueError) as refusal:
        _load(pipe, copy_of, "good")
    assert str(refusal.value).startswith(
        f"the IP-Adapter image encoder at {copy_of / 'image_encoder'} has damaged files (cut short, or overwritten?): "
        f"{file} "
    )
    assert "good.safetensors" not in str(refusal.value)
    assert _state(pipe)[:3] == before[:3] and pipe.image_encoder is None
    # a pipeline that has its image encoder already does not read the folder, as in diffusers
    _load(pipe, folder, "good")
    encoder = pipe.image_encoder
    _load(pipe, copy_of, "good")
    assert pipe.image_encoder is encoder


def test_a_damaged_image_encoder_beside_a_second_adapter_is_not_read_as_in_diffusers(parts, folder, tmp_path) -> None:
    """Of a list of sources, diffusers reads the image encoder of the first only: a damaged one
    beside the second adapter does not stop the load there, nor here, and the images agree."""
    import shutil

    second = shutil.copytree(folder, tmp_path / "second")
    cut = second / "image_encoder" / "model.safetensors"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    peer = StableDiffusionPipeline(
        **copy_sharing_tokenizers(parts), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    peer.set_progress_bar_config(disable=True)
    ours = _pipeline(parts)
    for pipe in (peer, ours):
        pipe.load_ip_adapter([str(folder), str(second)], subfolder="", weight_name=["good.safetensors"] * 2)
    images = [picture(0), picture(1)]
    assert np.array_equal(_image(ours, ip_adapter_image=images), _image(peer, ip_adapter_image=images))


def test_the_image_encoder_folder_checked_is_the_one_diffusers_reads(tmp_path) -> None:
    """`<source>/<subfolder>/<image_encoder_folder>`, or `<source>/<image_encoder_folder>` when
    that holds a "/"; of a list, the first source only, with the first subfolder (diffusers
    registers the encoder it reads there, and reads no other); none where the pipeline has its
    image encoder already."""
    from types import SimpleNamespace

    from clipcond.pipelines.ip_adapter_loading import check_image_encoder_folders

    def damaged(relative: str):
        where = tmp_path / relative
        where.mkdir(parents=True)
        (where / "config.json").write_text('{"cut', encoding="utf-8")
        return where

    inside, outside = damaged("adapter/sub/image_encoder"), damaged("adapter/models/encoder")
    pipe, source = SimpleNamespace(image_encoder=None), str(tmp_path / "adapter")
    for arguments, named in [
        ((source, "sub", "image_encoder"), inside),
        ((source, "sub", "models/encoder"), outside),
        (([source, "org/repo"], ["sub", ""], "image_encoder"), inside),
        (([source], ["sub", ""], "image_encoder"), inside),
    ]:
        with pytest.raises(ValueError, match=rf"^the IP-Adapter image encoder at {named} has damaged files"):
            check_image_encoder_folders(pipe, *arguments)
    check_image_encoder_folders(pipe, source, "", "image_encoder")  # adapter/image_encoder: none there
    check_image_encoder_folders(pipe, ["org/repo", source], ["", "sub"], "image_encoder")  # read from the first
    check_image_encoder_folders(pipe, [{}, source], ["", "sub"], "image_encoder")  # diffusers refuses a dict
    check_image_encoder_folders(pipe, [], "sub", "image_encoder")  # diffusers' own error: nothing to read
    check_image_encoder_folders(pipe, source, [], "image_encoder")  # likewise (was an IndexError here)
    check_image_encoder_folders(pipe, source, "sub", None)  # no image encoder asked for
    check_image_encoder_folders(pipe, "org/repo", "sub", "image_encoder")  # a hub id: not local
    check_image_encoder_folders(SimpleNamespace(image_encoder=object()), source, "sub", "image_encoder")
