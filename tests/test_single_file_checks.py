"""pipelines/single_file.py without building a model: every checkpoint type diffusers' SD and
SDXL pipelines read is read (diffusers' own `infer_diffusers_model_type` the reference), a hub
link is fetched as diffusers fetches it, shapes are read without the weights, and the refusals
tests/test_single_file.py does not reach (written from probe15's mutation run of the module)."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import save_file
from test_single_file import nothing_is_built  # noqa: F401  (the fixture below: diffusers' readers must not run)

from clipcond import CLIPConditionedPipeline
from clipcond.pipelines.single_file import checkpoint_family, checkpoint_shapes

K = sfu.CHECKPOINT_KEY_NAMES
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
LABEL_EMB = "model.diffusion_model.label_emb.0.0.weight"


def meta(*shape):
    return torch.empty(shape, device="meta")


def unet(in_channels=4, sdxl=False, **extra):
    tensors = {CONV_IN: meta(320, in_channels, 3, 3), K["v1"]: meta(320, 640, 1, 1)}
    if sdxl:
        tensors[LABEL_EMB] = meta(1280, 2816)
    return {**tensors, **extra}


# every checkpoint type diffusers' StableDiffusion[XL] pipelines read, as diffusers names it
CASES = {
    "v1": (unet(), "sd"),
    "v2": (unet(**{K["v2"]: meta(320, 1024)}), "sd"),
    "inpainting": (unet(9), "sd"),
    "inpainting_v2": (unet(9, **{K["v2"]: meta(320, 1024)}), "sd"),
    "xl_base": (unet(sdxl=True, **{K["xl_base"]: meta(1280)}), "sdxl"),
    "xl_refiner": (unet(sdxl=True, **{K["xl_refiner"]: meta(1280)}), "sdxl"),
    "xl_inpaint": (unet(9, sdxl=True, **{K["xl_base"]: meta(1280)}), "sdxl"),
    "playground-v2-5": (unet(sdxl=True, **{K["xl_base"]: meta(1280), "edm_mean": meta(1, 4, 1, 1)}), "sdxl"),
}


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_every_stable_diffusion_checkpoint_type_diffusers_reads_is_read(model_type) -> None:
    tensors, family = CASES[model_type]
    assert sfu.infer_diffusers_model_type(tensors) == model_type  # the reference: diffusers' own name
    assert checkpoint_family(tensors, "x.safetensors") == family


def test_a_hub_link_is_fetched_as_diffusers_fetches_it(tmp_path, monkeypatch) -> None:
    """The link's repo and file and the hub keywords reach `_get_model_file` as they do from
    diffusers' own `load_single_file_checkpoint` (the fetched file here is a LoRA: refused after)."""
    lora = str(tmp_path / "lora.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, lora)
    calls = []

    def fetch(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return lora

    import diffusers.utils.hub_utils

    monkeypatch.setattr(diffusers.utils.hub_utils, "_get_model_file", fetch)
    monkeypatch.setattr(sfu, "_get_model_file", fetch)
    link = "https://huggingface.co/org/repo/blob/main/m.safetensors"
    hub = dict(
        token="t",
        revision="r",
        cache_dir=str(tmp_path),
        force_download=True,
        proxies={"https": "p"},
        local_files_only=False,
    )
    with pytest.raises(ValueError, match="holds no Stable Diffusion UNet"):
        CLIPConditionedPipeline.from_single_file(link, **hub)
    sfu.load_single_file_checkpoint(link, **hub)  # the reference
    (ours_repo, ours), (peer_repo, peer) = calls
    assert ours_repo == peer_repo == "org/repo"
    assert ours == {key: peer[key] for key in ours} and set(hub) | {"weights_name", "user_agent"} == set(ours)


def test_a_file_diffusers_cannot_name_from_shapes_alone_is_refused_as_unknown(tmp_path) -> None:
    """diffusers' guess reads a value for a Z-Image ControlNet 2.x (`torch.all(w == 0)`), which a
    meta tensor lacks: the refusal still names the argument and says 'unknown'."""
    tensors = {K["z-image-turbo-controlnet-2.x"]: meta(4, 4), "control_noise_refiner.0.before_proj.weight": meta(4, 4)}
    with pytest.raises(RuntimeError):  # reading a meta tensor's value
        sfu.infer_diffusers_model_type(tensors)  # the premise: diffusers' guess fails on meta tensors
    with pytest.raises(ValueError, match="`pretrained_model_link_or_path` 'z.safetensors' is a 'unknown' checkpoint"):
        checkpoint_family(tensors, "z.safetensors")


def test_an_upscaler_checkpoint_is_refused_by_diffusers_name(tmp_path) -> None:
    """SD's x4 upscaler is an LDM UNet too (conv_in, 7 input channels) but no SD pipeline reads it."""
    tensors = {CONV_IN: meta(256, 7, 3, 3), K["upscale"]: meta(256)}
    assert sfu.infer_diffusers_model_type(tensors) == "upscale"
    with pytest.raises(ValueError, match="is a 'upscale' checkpoint"):
        checkpoint_family(tensors, "x4.safetensors")


def test_an_sd2_unclip_checkpoint_is_refused_not_read_as_sdxl(tmp_path) -> None:
    """SD 2.1 unCLIP's UNet has a `label_emb` (the noised CLIP image embedding, 1024 wide for
    ViT-H) like SDXL's; diffusers' guess calls the file "v2", and the noise augmentor gives it away."""
    tensors = unet(
        **{
            K["v2"]: meta(320, 1024),
            LABEL_EMB: meta(1280, 1024),
            "noise_augmentor.betas": meta(1000),
            "embedder.model.visual.proj": meta(1280, 1024),
        }
    )
    assert sfu.infer_diffusers_model_type(tensors) == "v2"  # the premise
    with pytest.raises(ValueError, match="'unclip.safetensors' is a Stable Diffusion 2 unCLIP checkpoint"):
        checkpoint_family(tensors, "unclip.safetensors")


UNET = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_shapes_are_read_without_the_weights(tmp_path, suffix) -> None:
    """The docstring's promise: shapes on the meta device, nothing allocated (a 7 GB file stays on disk)."""
    path = str(tmp_path / f"m{suffix}")
    if suffix == ".safetensors":
        save_file(UNET, path)
    else:
        torch.save({"state_dict": UNET}, path)
    shapes = checkpoint_shapes(path)
    assert set(shapes) == set(UNET)
    assert all(t.is_meta and t.shape == UNET[k].shape for k, t in shapes.items())


@pytest.mark.usefixtures("nothing_is_built")
def test_a_gguf_file_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 60)
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*GGUF file"):
        CLIPConditionedPipeline.from_single_file(str(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.usefixtures("nothing_is_built")
def test_a_file_without_tensors_is_refused(tmp_path, suffix) -> None:
    path = str(tmp_path / f"empty{suffix}")
    save_file({}, path) if suffix == ".safetensors" else torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*holds no tensors"):
        CLIPConditionedPipeline.from_single_file(path)


@pytest.mark.usefixtures("nothing_is_built")
def test_a_ckpt_that_is_not_a_state_dict_is_refused(tmp_path) -> None:
    path = str(tmp_path / "tensor.ckpt")
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*holds a Tensor, not a state dict"):
        CLIPConditionedPipeline.from_single_file(path)


@pytest.mark.parametrize("cut", [0, 200])
@pytest.mark.usefixtures("nothing_is_built")
def test_an_empty_or_truncated_ckpt_is_refused(tmp_path, cut) -> None:
    """torch.load raises EOFError / RuntimeError (not UnpicklingError) for these."""
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": UNET}, whole)
    path = tmp_path / "cut.ckpt"
    path.write_bytes(whole.read_bytes()[:cut])
    with pytest.raises(
        ValueError, match="pretrained_model_link_or_path.*neither a safetensors file nor a torch checkpoint: "
    ):
        CLIPConditionedPipeline.from_single_file(str(path))


@pytest.mark.usefixtures("nothing_is_built")
def test_a_pickle_with_code_is_refused_even_where_torch_defaults_to_full_unpickling(tmp_path, monkeypatch) -> None:
    """weights_only=True must be passed, not left to torch's default (an environment variable turns it off)."""
    import argparse

    path = str(tmp_path / "pickled.ckpt")
    torch.save({"state_dict": UNET, "args": argparse.Namespace(lr=1)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="argparse.Namespace"):
        CLIPConditionedPipeline.from_single_file(path)


@pytest.mark.usefixtures("nothing_is_built")
def test_a_safetensors_file_without_tensor_data_and_without_the_extension_is_told_to_be_renamed(tmp_path) -> None:
    """The header length check's boundary: a header that ends exactly at the file's end."""
    path = tmp_path / "download"
    save_file({}, str(path))
    with pytest.raises(ValueError, match="without the `.safetensors` extension"):
        CLIPConditionedPipeline.from_single_file(str(path))


@pytest.mark.usefixtures("nothing_is_built")
def test_a_file_with_a_length_prefix_but_no_json_header_is_not_called_safetensors(tmp_path) -> None:
    path = tmp_path / "odd.ckpt"
    path.write_bytes((16).to_bytes(8, "little") + b"not json" * 4)
    with pytest.raises(ValueError, match="neither a safetensors file nor a torch checkpoint") as raised:
        CLIPConditionedPipeline.from_single_file(str(path))
    assert "rename" not in str(raised.value)


@pytest.mark.usefixtures("nothing_is_built")
def test_a_file_without_a_unet_is_refused_naming_its_key_prefixes(tmp_path) -> None:
    """The message lists the first six top-level key prefixes, sorted, then `...`."""
    names = ["vae", "first_stage_model", "cond_stage_model", "a", "b", "c", "d"]
    path = str(tmp_path / "parts.safetensors")
    save_file({f"{name}.x.weight": torch.zeros(1) for name in names}, path)
    with pytest.raises(ValueError, match="holds no Stable Diffusion UNet") as raised:
        CLIPConditionedPipeline.from_single_file(path)
    assert "its keys start with a, b, c, cond_stage_model, d, first_stage_model, ...)" in str(raised.value)
    save_file({f"{name}.x.weight": torch.zeros(1) for name in names[1:]}, path)  # exactly six: no `...`
    with pytest.raises(ValueError, match=r"its keys start with a, b, c, cond_stage_model, d, first_stage_model\)"):
        CLIPConditionedPipeline.from_single_file(path)


@pytest.mark.usefixtures("nothing_is_built")
def test_the_refusals_after_reading_the_file_name_the_file(tmp_path) -> None:
    """Another family, no UNet, a `config` of the other family: each message names the file
    (the project's tests match the argument's name only)."""
    import json

    sd3 = str(tmp_path / "sd3.safetensors")
    save_file(
        {
            "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": torch.zeros(9216),
            "model.diffusion_model.pos_embed": torch.zeros(1, 36864, 1),
        },
        sd3,
    )
    lora = str(tmp_path / "lora.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, lora)
    sdxl = str(tmp_path / "sdxl.safetensors")
    save_file({**UNET, "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 56)}, sdxl)
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": None}))
    for path, kwargs in ((sd3, {}), (lora, {}), (sdxl, {"config": str(tmp_path / "sd")})):
        with pytest.raises(ValueError) as raised:
            CLIPConditionedPipeline.from_single_file(path, **kwargs)
        assert f"`pretrained_model_link_or_path` {path!r}" in str(raised.value), str(raised.value)


# ---------------------------------------------------------------- whole messages and edges
# (written from the 2026-12-02 mutation run of the module: the tests above matched parts)

A = "`pretrained_model_link_or_path`"


def _refusal(call, *args) -> str:
    """The message of the ValueError `call(*args)` raises."""
    with pytest.raises(ValueError) as raised:
        call(*args)
    return str(raised.value)


@pytest.mark.usefixtures("nothing_is_built")
def test_the_pickle_and_rename_refusals_say_what_to_do(tmp_path) -> None:
    import argparse

    pickled = str(tmp_path / "pickled.ckpt")
    torch.save({"state_dict": UNET, "args": argparse.Namespace(lr=1)}, pickled)
    assert _refusal(CLIPConditionedPipeline.from_single_file, pickled) == (
        f"{A} {pickled!r} is a pickle that holds more than weights (argparse.Namespace); reading it would run code "
        "from the file, so it is read only with torch.load(weights_only=True), as diffusers reads it. Convert it to "
        ".safetensors with a tool you trust"
    )
    download = str(tmp_path / "download")
    save_file(UNET, download)
    assert _refusal(CLIPConditionedPipeline.from_single_file, download) == (
        f"{A} {download!r} is a safetensors file without the `.safetensors` extension; diffusers picks its reader "
        "by the extension: rename the file to end in .safetensors"
    )


@pytest.mark.parametrize(
    ("header_length", "after", "safetensors"),
    [(1, b"{", True), (0, b"{}", False), (100, b"{}", False), (2, b"{}", True), (3, b"{}", False)],
    ids=["one_byte_header", "zero_length", "past_the_end", "to_the_end", "one_past_the_end"],
)
@pytest.mark.usefixtures("nothing_is_built")
def test_a_length_prefix_is_called_safetensors_only_when_it_fits_the_file(
    tmp_path, header_length, after, safetensors
) -> None:
    """The header length must be at least 1 and at most the bytes after the 8 of the length."""
    path = tmp_path / "odd.ckpt"
    path.write_bytes(header_length.to_bytes(8, "little") + after)
    with pytest.raises(ValueError) as raised:
        CLIPConditionedPipeline.from_single_file(str(path))
    assert ("without the `.safetensors` extension" in str(raised.value)) is safetensors
    assert ("neither a safetensors file nor a torch checkpoint" in str(raised.value)) is not safetensors


def test_the_family_refusals_are_whole() -> None:
    upscaler = {CONV_IN: meta(256, 7, 3, 3), K["upscale"]: meta(256)}
    assert _refusal(checkpoint_family, upscaler, "x4.safetensors") == (
        f"{A} 'x4.safetensors' is a 'upscale' checkpoint (diffusers' infer_diffusers_model_type), not a Stable "
        "Diffusion or SDXL one; for another family, load it with its diffusers pipeline's from_single_file and "
        "condition it with TextConditioner.from_pipeline(pipe)"
    )
    unclip = unet(**{K["v2"]: meta(320, 1024), LABEL_EMB: meta(1280, 1024), "noise_augmentor.betas": meta(1000)})
    assert _refusal(checkpoint_family, unclip, "unclip.safetensors") == (
        f"{A} 'unclip.safetensors' is a Stable Diffusion 2 unCLIP checkpoint (it has `noise_augmentor`: its UNet "
        "reads a CLIP image embedding through `label_emb`), not a text-to-image one; diffusers reads it with "
        "StableUnCLIPImg2ImgPipeline, from a diffusers folder"
    )
    assert _refusal(checkpoint_family, {"vae.x": meta(2)}, "vae.safetensors") == (
        f"{A} 'vae.safetensors' holds no Stable Diffusion UNet (no {CONV_IN!r}; its keys start with vae): a LoRA "
        "loads with pipe.load_lora_weights, a VAE with AutoencoderKL.from_single_file"
    )


def _config_folder(root, settings: bytes):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_bytes(settings)
    return root


@pytest.mark.parametrize(
    ("folder_family", "file_family"), [("sd", "sd"), ("sdxl", "sdxl"), ("sd", "sdxl"), ("sdxl", "sd")]
)
def test_a_config_folder_is_taken_only_for_a_file_of_its_family(tmp_path, folder_family, file_family) -> None:
    import json
    import pathlib

    from clipcond.pipelines.single_file import checked_config

    embedding = "text_time" if folder_family == "sdxl" else None
    folder = _config_folder(tmp_path / "config", json.dumps({"addition_embed_type": embedding}).encode())
    if folder_family == file_family:
        assert checked_config(pathlib.Path(folder), file_family, "m.safetensors") == str(folder)
        return
    assert _refusal(checked_config, folder, file_family, "m.safetensors") == (
        f"`config` {str(folder)!r} describes an {folder_family.upper()} UNet, but {A} 'm.safetensors' holds an "
        f"{file_family.upper()} one"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"addition_embed_type": "text_ti', r"cannot be read as JSON \(.*; a damaged file\?\)$"),
        (b'{"addition_embed_type": "\xff"}', r"cannot be read as JSON \('utf-8' codec can't decode .*"),
        (b"[]", "holds a list, not a JSON object$"),
    ],
    ids=["cut", "not_utf8", "list"],
)
def test_a_damaged_unet_config_in_the_config_folder_is_named(tmp_path, text, problem) -> None:
    from clipcond.pipelines.single_file import checked_config

    folder = _config_folder(tmp_path / "config", text)
    with pytest.raises(ValueError, match=rf"^`config` '{folder}': {folder}/unet/config.json {problem}"):
        checked_config(str(folder), "sd", "m.safetensors")
    assert checked_config(None, "sd", "m.safetensors") is None


def test_a_pipeline_left_with_meta_weights_is_refused_naming_them() -> None:
    from clipcond.pipelines.single_file import check_filled

    class Pipeline:
        components = {
            "scheduler": object(),
            "text_encoder": torch.nn.Linear(2, 2),
            "text_encoder_2": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
        }

    check_filled(Pipeline(), "m.safetensors")  # every weight loaded
    Pipeline.components["text_encoder_2"].to("meta")
    assert _refusal(check_filled, Pipeline(), "m.safetensors") == (
        f"{A} 'm.safetensors': diffusers' reader left 4 weights of `text_encoder_2` unloaded (0.weight, 0.bias, "
        "1.weight...); the file does not hold that model as `config` describes it"
    )
