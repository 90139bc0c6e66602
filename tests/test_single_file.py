"""`from_single_file` of our three pipelines against diffusers' own on the same file.

Tiny SD and SDXL pipelines are saved as diffusers folders (the `config=` of both loads) and
written as one original-format checkpoint by `tests/ldm_checkpoint.py`. That writer is
checked first against diffusers' reader (the file reads back to the same weights); then our
pipelines loaded from the file give images equal, bit for bit, to `StableDiffusion[XL]...
Pipeline.from_single_file` of the same file on the same call, with the components diffusers
loaded handed over as they are, and a file that is not an SD / SDXL checkpoint is refused,
naming the argument, before diffusers is asked to build anything. All offline.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from ldm_checkpoint import save_single_file
from safetensors.torch import save_file
from tiny_pipelines import build_sd, build_sdxl, sd_components

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline
from clipcond.pipelines.single_file import diffusers_pipeline_class

# SDXL's second encoder is wider than its first (1280 and 768); diffusers' reader tells them
# apart by width, so the tiny SDXL keeps them different too (see test_a_model_diffusers_...)
OPEN_CLIP_WIDTH = 48
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


def build_sdxl_of_widths(open_clip_width: int | None = OPEN_CLIP_WIDTH) -> StableDiffusionXLPipeline:
    """A tiny SDXL base whose OpenCLIP-G is `open_clip_width` wide beside a CLIP-L of `WIDTH`
    (None: both `WIDTH`): diffusers' reader tells SDXL's two encoders apart by width."""
    return build_sdxl(open_clip_width=open_clip_width)


def build_sd_inpaint() -> StableDiffusionInpaintPipeline:
    """A tiny SD inpainting pipeline (9-channel UNet) with a default DDIM scheduler: its
    `clip_sample: true` stays, as diffusers' inpaint constructor (unlike its text-to-image and
    img2img ones) keeps it, and ours does too."""
    parts = {**sd_components(unet_in_channels=9), "scheduler": DDIMScheduler()}
    return StableDiffusionInpaintPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


BUILDERS = {"sd": build_sd, "sd_inpaint": build_sd_inpaint, "sdxl": build_sdxl_of_widths}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (the pipeline, its diffusers folder, its single file); built on first use."""
    root = tmp_path_factory.mktemp("single_file")
    made = {}

    def get(name: str, suffix: str = ".safetensors"):
        if name not in made:
            pipeline = BUILDERS[name]()
            pipeline.save_pretrained(root / name)
            made[name] = pipeline
        path = root / f"{name}{suffix}"
        if not path.exists():
            save_single_file(made[name], path)
        return made[name], str(root / name), str(path)

    return get


def offline(folder: str) -> dict:
    return dict(config=folder, local_files_only=True)


def same_weights(model, other) -> bool:
    state, other_state = model.state_dict(), other.state_dict()
    return state.keys() == other_state.keys() and all(torch.equal(state[k], other_state[k]) for k in state)


def call_arguments(kind: str) -> dict:
    arguments = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    if kind == "text":
        return {**arguments, "height": 32, "width": 32}
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    if kind in ("img2img", "inpaint"):
        arguments.update(image=image, strength=0.75)
    if kind == "inpaint":
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., 8:24, 8:24] = 1
        arguments["mask_image"] = mask
    return arguments


SLOW = pytest.mark.slow(reason="loads a tiny pipeline from a file twice (2-5 s); SD text-to-image runs by default")
CASES = [
    pytest.param("sd", ".safetensors", CLIPConditionedPipeline, StableDiffusionPipeline, "text", id="sd-text"),
    pytest.param(
        "sdxl", ".safetensors", CLIPConditionedPipeline, StableDiffusionXLPipeline, "text", id="sdxl-text", marks=SLOW
    ),
    pytest.param(
        "sd",
        ".ckpt",
        CLIPConditionedImg2ImgPipeline,
        StableDiffusionImg2ImgPipeline,
        "img2img",
        id="sd-img2img-ckpt",
        marks=SLOW,
    ),
    pytest.param(
        "sd_inpaint",
        ".safetensors",
        CLIPConditionedInpaintPipeline,
        StableDiffusionInpaintPipeline,
        "inpaint",
        id="sd-inpaint",
        marks=SLOW,
    ),
]


@pytest.mark.parametrize("name, suffix, ours_class, peer_class, kind", CASES)
def test_images_and_components_equal_diffusers_from_single_file(saved, name, suffix, ours_class, peer_class, kind):
    """First the writer against diffusers' reader (the file reads back to the original weights),
    then ours against diffusers' pipeline from that file: the same weights, scheduler, images."""
    original, folder, path = saved(name, suffix)
    peer = peer_class.from_single_file(path, **offline(folder))
    ours = ours_class.from_single_file(path, **offline(folder))
    assert type(ours) is ours_class
    for model in MODELS:
        if getattr(original, model, None) is not None:
            assert same_weights(getattr(original, model), getattr(peer, model)), model
            assert same_weights(getattr(peer, model), getattr(ours, model)), model
    assert dict(ours.scheduler.config) == dict(peer.scheduler.config)
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    arguments = call_arguments(kind)
    expected = peer(**arguments, generator=torch.Generator().manual_seed(0)).images
    got = ours(**arguments, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("family, stem", [("sd", "StableDiffusion"), ("sdxl", "StableDiffusionXL")])
def test_each_class_is_read_by_the_diffusers_pipeline_of_its_task(family, stem) -> None:
    class Subclass(CLIPConditionedInpaintPipeline):
        pass

    expected = {
        CLIPConditionedPipeline: f"{stem}Pipeline",
        CLIPConditionedImg2ImgPipeline: f"{stem}Img2ImgPipeline",
        CLIPConditionedInpaintPipeline: f"{stem}InpaintPipeline",
        Subclass: f"{stem}InpaintPipeline",
    }
    for ours, name in expected.items():
        assert diffusers_pipeline_class(ours, family) is getattr(diffusers, name)


def test_components_are_the_ones_diffusers_loaded_and_keywords_go_where_they_belong(saved, monkeypatch) -> None:
    _, folder, path = saved("sd")
    loaded = []
    reader = StableDiffusionPipeline.from_single_file.__func__

    def recording(cls, *args, **kwargs):
        loaded.append((args, kwargs, reader(cls, *args, **kwargs)))
        return loaded[-1][2]

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(recording))
    scheduler = EulerDiscreteScheduler()
    ours = CLIPConditionedPipeline.from_single_file(  # `config` as a Path, which diffusers takes as a str only
        pathlib.Path(path),
        config=pathlib.Path(folder),
        local_files_only=True,
        torch_dtype=torch.float16,
        scheduler=scheduler,
        clip_skip=1,
        emphasis="a1111",
    )
    [(args, kwargs, peer)] = loaded
    assert args == (path,) and kwargs["config"] == folder and "clip_skip" not in kwargs and "emphasis" not in kwargs
    assert kwargs["scheduler"] is scheduler and kwargs["torch_dtype"] is torch.float16
    for name, component in peer.components.items():
        assert getattr(ours, name) is component, name
    assert ours.unet.dtype == ours.text_encoder.dtype == torch.float16
    assert ours.config.clip_skip == 1 and ours.config.emphasis == "a1111"


def _write(path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif path.suffix == ".safetensors":
        save_file(content, str(path))
    else:
        torch.save(content, path)
    return str(path)


class RunsCode:
    """Pickles as a call of os.system (the usual payload of a malicious .ckpt); never unpickled here."""

    def __reduce__(self):
        return (os.system, ("echo this must not run",))


BAD_FILES = {
    "garbage.safetensors": (b"\x00not a checkpoint" * 8, "not a readable safetensors file"),
    "garbage.ckpt": (b"\x00not a checkpoint" * 8, "neither a safetensors file nor a torch checkpoint"),
    "pickled.ckpt": ({"state_dict": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, "argparse.Namespace"),
    "malicious.ckpt": (
        {"state_dict": {"a": torch.zeros(1)}, "payload": RunsCode()},
        f"holds more than weights ({os.system.__module__}.system",
    ),
    "lora.safetensors": (
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
        "holds no Stable Diffusion UNet",
    ),
    "vae.safetensors": ({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, "holds no Stable Diffusion UNet"),
    "sd3.safetensors": (
        {
            "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": torch.zeros(9216),
            "model.diffusion_model.pos_embed": torch.zeros(1, 36864, 1),
        },
        "'sd3' checkpoint",
    ),
    "flux.safetensors": ({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, "'flux-schnell' checkpoint"),
}


@pytest.fixture
def nothing_is_built(monkeypatch):
    """diffusers' readers fail the test if called: refusals come before any model is built."""

    def called(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__}.from_single_file was called")

    for reader in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        monkeypatch.setattr(reader, "from_single_file", classmethod(called))


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_is_not_an_sd_checkpoint_is_refused_naming_it(tmp_path, nothing_is_built, name) -> None:
    content, words = BAD_FILES[name]
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match="pretrained_model_link_or_path") as raised:
        CLIPConditionedPipeline.from_single_file(path, config=str(tmp_path), local_files_only=True)
    assert words in str(raised.value)


def test_a_missing_path_a_folder_and_a_non_path_are_refused(tmp_path, nothing_is_built) -> None:
    with pytest.raises(FileNotFoundError, match="pretrained_model_link_or_path.*no file"):
        CLIPConditionedPipeline.from_single_file(str(tmp_path / "absent.safetensors"))
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*is a folder.*from_pretrained"):
        CLIPConditionedPipeline.from_single_file(tmp_path)
    with pytest.raises(TypeError, match="pretrained_model_link_or_path.*str or os.PathLike"):
        CLIPConditionedPipeline.from_single_file(3)
    checkpoint = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(checkpoint))
    with pytest.raises(TypeError, match="`config` must be a hub id or a local diffusers folder"):
        CLIPConditionedPipeline.from_single_file(checkpoint, config=123)


def test_links_not_to_a_hub_file_and_safetensors_without_the_extension_are_refused(saved, tmp_path, nothing_is_built):
    """A civitai download link or an http:// hub link is no hub file (diffusers asks the hub for
    repo None); a safetensors file named without its extension (a download saved under the link's
    name) is told to be renamed, as diffusers picks its reader by the extension."""
    for link in (
        "https://civitai.com/api/download/models/12345?type=Model",
        "http://huggingface.co/a/b/blob/main/m.safetensors",
    ):
        with pytest.raises(ValueError) as raised:
            CLIPConditionedPipeline.from_single_file(link)
        assert str(raised.value) == (
            f"`pretrained_model_link_or_path` {link!r} is a link but not to a file on the Hugging Face hub; only "
            "https://huggingface.co/<repo>/blob/main/<file> links are fetched (another revision: `revision=`): "
            "download other links (civitai's, for one) and pass the file's path"
        )
    _, folder, path = saved("sd")
    renamed = tmp_path / "12345"
    renamed.write_bytes(pathlib.Path(path).read_bytes())
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*without the `.safetensors` extension"):
        CLIPConditionedPipeline.from_single_file(str(renamed), **offline(folder))


def test_a_file_without_some_unet_weights_is_refused_naming_it(saved, tmp_path) -> None:
    """diffusers' reader leaves a UNet weight the file lacks on the meta device, and accelerate
    fails moving it (NotImplementedError, deep in diffusers): a ValueError naming the argument."""
    from safetensors.torch import load_file

    _, folder, path = saved("sd")
    tensors = load_file(path)
    del tensors["model.diffusion_model.out.2.bias"]
    lacking = save_file(tensors, str(tmp_path / "lacking.safetensors")) or str(tmp_path / "lacking.safetensors")
    with pytest.raises(ValueError, match="pretrained_model_link_or_path.*lacks weights"):
        CLIPConditionedPipeline.from_single_file(lacking, **offline(folder))


def test_a_config_folder_whose_tokenizer_lost_its_vocabulary_is_refused_before_diffusers_reads_it(
    saved, tmp_path
) -> None:
    """diffusers reads the tokenizers (and the configs) of `config`'s folder: with the
    vocabulary files gone, transformers built a tokenizer of its two special tokens and the
    pipeline loaded, reading every word as unknown."""
    import shutil

    _, folder, path = saved("sd")
    damaged = shutil.copytree(folder, tmp_path / "config")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (damaged / "tokenizer" / name).unlink()
    peer = StableDiffusionPipeline.from_single_file(path, **offline(str(damaged)))
    assert len(peer.tokenizer) == 2  # the premise: diffusers loads it
    with pytest.raises(
        ValueError,
        match=rf"^`config` '{damaged}': the pipeline saved at {damaged} has damaged files .*: tokenizer/merges.txt ",
    ):
        CLIPConditionedPipeline.from_single_file(path, **offline(str(damaged)))


def test_the_weights_of_the_config_folder_are_not_checked_as_diffusers_does_not_read_them(saved, tmp_path) -> None:
    """`config` lends the configs and tokenizers; the weights come from the file: a folder whose
    UNet weights were cut short still serves, and the UNet is the file's."""
    import shutil

    pipeline, folder, path = saved("sd")
    configs = shutil.copytree(folder, tmp_path / "config")
    weights = next((configs / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ours = CLIPConditionedPipeline.from_single_file(path, **offline(str(configs)))
    assert same_weights(ours.unet, pipeline.unet)


def test_a_config_folder_of_the_other_family_is_refused(tmp_path, nothing_is_built) -> None:
    """An SDXL file (a UNet with SDXL's added embedding) with an SD folder as `config`."""
    sdxl_unet = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 56),
    }
    path = _write(tmp_path / "sdxl.safetensors", sdxl_unet)
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": None}))
    with pytest.raises(
        ValueError, match="`config` .* describes an SD UNet, but `pretrained_model_link_or_path` .* SDXL"
    ):
        CLIPConditionedPipeline.from_single_file(path, **offline(str(tmp_path / "sd")))


@SLOW
def test_a_model_diffusers_reads_only_in_part_is_refused(tmp_path) -> None:
    """With both SDXL encoders of one width, diffusers' reader takes the first's keys for the
    second too and leaves its projection unloaded (meta): refused, naming the component."""
    pipeline = build_sdxl_of_widths(None)
    pipeline.save_pretrained(tmp_path / "folder")
    path = save_single_file(pipeline, tmp_path / "same_widths.safetensors")
    with pytest.raises(ValueError) as raised:
        CLIPConditionedPipeline.from_single_file(str(path), **offline(str(tmp_path / "folder")))
    assert str(raised.value) == (
        f"`pretrained_model_link_or_path` {str(path)!r}: diffusers' reader left 1 weights of `text_encoder_2` "
        "unloaded (text_projection.weight...); the file does not hold that model as `config` describes it"
    )
