"""``clipcond generate --image / --mask / --strength``: the PNG it writes against diffusers' own
img2img and inpainting pipelines loaded from the same folder (np.array_equal), and every
mistake refused in one line before the model loads (or, for what needs the model, before
sampling), with nothing written."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_cli_errors import one_error

from clipcond.cli import main


@pytest.fixture(scope="module")
def sd_folder(sd_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate-sources") / "sd"
    sd_pipe.save_pretrained(folder)
    return folder


def _write_image(path, size=(32, 32), mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)
    return path


def _diffusers_image(peer_class, folder, **kwargs) -> np.ndarray:
    import torch

    peer = peer_class.from_pretrained(folder)
    generator = [torch.Generator().manual_seed(3)]
    return np.asarray(peer(generator=generator, output_type="pil", **kwargs).images[0])


def _diffusers_inpaint(folder, source, mask, steps: int, **size) -> np.ndarray:
    """diffusers' StableDiffusionInpaintPipeline on `folder`, as `generate` is called in these tests."""
    from diffusers import StableDiffusionInpaintPipeline

    return _diffusers_image(
        StableDiffusionInpaintPipeline,
        folder,
        prompt="a red circle",
        image=Image.open(source).convert("RGB"),
        mask_image=Image.open(mask).convert("L"),
        num_inference_steps=steps,
        guidance_scale=3.0,
        **size,
    )


def test_image_to_image_writes_what_diffusers_img2img_gives(sd_folder, tmp_path) -> None:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    source = _write_image(tmp_path / "source.png")
    common = ["--steps", "4", "--seed", "3", "--negative", "blurry", "--model", str(sd_folder)]
    written = {}
    for strength in (0.5, None):  # None: diffusers' default (0.8)
        output = tmp_path / f"img2img-{strength}.png"
        given = [] if strength is None else ["--strength", str(strength)]
        assert main(["generate", "a red circle", "-o", str(output), "--image", str(source), *given, *common]) == 0
        expected = _diffusers_image(
            StableDiffusionImg2ImgPipeline,
            sd_folder,
            prompt="a red circle",
            negative_prompt="blurry",
            image=Image.open(source).convert("RGB"),
            num_inference_steps=4,
            guidance_scale=3.0,
            **({} if strength is None else {"strength": strength}),
        )
        written[strength] = np.asarray(Image.open(output))
        assert written[strength].shape == (32, 32, 3) and np.array_equal(written[strength], expected)
    assert not np.array_equal(written[0.5], written[None])
    # --n 2: a grid of two images, seeds 3 and 4, as diffusers gives them with a generator each
    grid = tmp_path / "grid.png"
    assert main(["generate", "a red circle", "-o", str(grid), "--image", str(source), "--n", "2", *common]) == 0
    peer = StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder)
    images = peer(
        prompt="a red circle",
        negative_prompt="blurry",
        image=Image.open(source).convert("RGB"),
        num_inference_steps=4,
        guidance_scale=3.0,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(seed) for seed in (3, 4)],
    ).images
    cells = np.asarray(Image.open(grid))
    assert cells.shape == (32, 64, 3)
    assert np.array_equal(cells[:, :32], np.asarray(images[0])) and np.array_equal(cells[:, 32:], np.asarray(images[1]))


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (53, 43)], ids=["the UNet's size", "48x40", "53x43"])
def test_inpainting_writes_what_diffusers_inpaint_gives_at_the_sources_size(sd_folder, tmp_path, size) -> None:
    """The output takes the source's size rounded down to the VAE's multiple, as img2img does
    (diffusers' inpainting, called without a size, would draw the UNet's default size)."""
    source, mask = _write_image(tmp_path / "source.png", size=size), tmp_path / "mask.png"
    mask_pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask_pixels[8:24, 8:24] = 255
    Image.fromarray(mask_pixels, "L").save(mask)
    output = tmp_path / "inpaint.png"
    argv = ["generate", "a red circle", "-o", str(output), "--image", str(source), "--mask", str(mask)]
    assert main([*argv, "--steps", "3", "--seed", "3", "--model", str(sd_folder)]) == 0
    from diffusers import StableDiffusionInpaintPipeline

    factor = StableDiffusionInpaintPipeline.from_pretrained(sd_folder).vae_scale_factor
    height, width = size[1] // factor * factor, size[0] // factor * factor
    expected = _diffusers_inpaint(sd_folder, source, mask, steps=3, height=height, width=width)
    written = np.asarray(Image.open(output))
    assert written.shape == (height, width, 3) and np.array_equal(written, expected)


def test_source_image_mistakes_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch) -> None:
    import clipcond.pipelines.generate as generate

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(generate, "load_pipeline", no_loading)
    source = str(_write_image(tmp_path / "source.png"))
    small_mask = str(_write_image(tmp_path / "mask.png", size=(16, 32), mode="L"))
    (tmp_path / "notes.png").write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "source.png").read_bytes()[:100])
    out = str(tmp_path / "out.png")
    cases = [
        (["--mask", small_mask], "--mask and --strength need --image"),
        (["--strength", "0.5"], "--mask and --strength need --image"),
        (["--image", source, "--strength", "0"], "--strength must be in (0, 1], got 0.0"),
        (["--image", source, "--strength", "1.5"], "--strength must be in (0, 1], got 1.5"),
        (["--image", source, "--strength", "nan"], "--strength must be in (0, 1], got nan"),
        (["--image", source, "--height", "64"], "--height and --width do not go with --image"),
        (["--image", str(tmp_path / "missing.png")], "--image " + str(tmp_path / "missing.png") + ": no such file"),
        (["--image", str(tmp_path)], "no such file"),
        (["--image", str(tmp_path / "notes.png")], "notes.png: not an image that can be read"),
        (["--image", str(truncated)], "truncated.png: not an image that can be read"),
        (["--image", source, "--mask", small_mask], "--mask is 16 x 32 pixels and --image 32 x 32"),
    ]
    for extra, message in cases:
        line = one_error(capsys, ["generate", "a", "-o", out, "--model", str(tmp_path), *extra], 2)
        assert message in line, (extra, line)
    assert not (tmp_path / "out.png").exists()


def test_what_needs_the_model_is_refused_before_sampling(sd_folder, tmp_path, capsys) -> None:
    import tiny_pipelines
    from diffusers import StableDiffusionPipeline

    source = str(_write_image(tmp_path / "source.png"))
    out = str(tmp_path / "out.png")
    common = ["generate", "a", "-o", out, "--model", str(sd_folder)]
    line = one_error(capsys, [*common, "--image", source, "--strength", "0.5", "--steps", "1"], 2)
    assert "--strength 0.5 runs int(1 x 0.5) = 0 of the --steps 1" in line
    line = one_error(capsys, [*common, "--image", source, "--steps", "1"], 2)  # the default strength, 0.8
    assert "the default strength of this model 0.8 runs int(1 x 0.8) = 0" in line
    # a VAE that halves the image (factor 2) cannot take a source 1 pixel wide
    components = tiny_pipelines.sd_components()
    components["vae"] = tiny_pipelines._small_vae(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    halving = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None)
    halving.save_pretrained(tmp_path / "halving")
    narrow = str(_write_image(tmp_path / "narrow.png", size=(1, 32)))
    argv = ["generate", "a", "-o", out, "--model", str(tmp_path / "halving"), "--image", narrow]
    assert "--image is 1 x 32 pixels: this model needs at least 2 x 2" in one_error(capsys, argv, 2)
    assert not (tmp_path / "out.png").exists()


def test_out_of_memory_with_a_source_image_names_its_size(tmp_path, capsys, monkeypatch) -> None:
    from diffusers import DDIMScheduler

    import clipcond.pipelines.generate as generate

    class Hungry:
        vae = "a VAE"
        vae_scale_factor = 8
        unet_reads_a_mask = False
        scheduler = DDIMScheduler()  # --steps is checked against it
        config = SimpleNamespace(syntax="a1111")

        def default_strength(self):
            return 0.8

        def __call__(self, *args, **kwargs):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(generate, "_load", lambda model, loras, embeddings: Hungry())
    monkeypatch.setattr(generate, "check_prompt_against", lambda pipe, *texts: None)
    monkeypatch.setattr(generate, "source_pipeline", lambda pipe, sources: pipe)
    source = str(_write_image(tmp_path / "source.png", size=(48, 32)))
    png = tmp_path / "a.png"
    line = one_error(capsys, ["generate", "a", "-o", str(png), "--image", source, "--model", str(tmp_path)], 1)
    assert "out of memory sampling 1 image(s) of 32 x 48 pixels (--image's height x width); nothing was written" in line
    assert "Lower --n or the --image size" in line and not png.exists()


def test_an_inpainting_model_needs_a_mask_and_a_saved_task_pipeline_loads(tmp_path, capsys) -> None:
    """A 9-channel inpainting UNet: text to image refuses it before any work (it failed inside
    the first step), `generate` without --mask says what to give, and with --image and --mask
    writes what diffusers' inpainting pipeline gives. A saved CLIPConditioned img2img or
    inpainting folder loads in `generate` (it was an AttributeError)."""
    import tiny_pipelines
    from diffusers import StableDiffusionInpaintPipeline

    from clipcond.pipelines import CLIPConditionedImg2ImgPipeline, CLIPConditionedPipeline

    inpainting = StableDiffusionInpaintPipeline(
        **tiny_pipelines.sd_components(unet_in_channels=9), safety_checker=None, feature_extractor=None
    )
    with pytest.raises(ValueError, match="reads 9 input channels and predicts 4: an inpainting UNet"):
        CLIPConditionedPipeline.from_pipe(inpainting)("a red circle", num_inference_steps=1)
    inpainting.save_pretrained(tmp_path / "inpainting")
    source, out = _write_image(tmp_path / "source.png"), tmp_path / "out.png"
    mask = _write_image(tmp_path / "mask.png", mode="L", seed=1)
    common = ["generate", "a red circle", "-o", str(out), "--model", str(tmp_path / "inpainting"), "--steps", "2"]
    for extra in ([], ["--image", str(source)]):
        assert "its UNet is an inpainting UNet" in one_error(capsys, [*common, *extra], 2)
    assert main([*common, "--image", str(source), "--mask", str(mask), "--seed", "3"]) == 0
    assert np.array_equal(
        np.asarray(Image.open(out)), _diffusers_inpaint(tmp_path / "inpainting", source, mask, steps=2)
    )
    CLIPConditionedImg2ImgPipeline.from_pipe(tiny_pipelines.build_sd()).save_pretrained(tmp_path / "saved-img2img")
    argv = [
        "generate",
        "a",
        "-o",
        str(tmp_path / "t2i.png"),
        "--model",
        str(tmp_path / "saved-img2img"),
        "--steps",
        "2",
    ]
    assert main(argv) == 0


def test_a_photo_turned_by_its_exif_orientation_is_read_upright(tmp_path) -> None:
    """A camera JPEG stored sideways with an EXIF orientation tag is read as it is shown (and as
    diffusers' `load_image` reads it), the mask too."""
    import argparse

    from diffusers.utils import load_image

    from clipcond.pipelines.generate_sources import read_sources

    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)  # stored 32 wide, 16 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "mask.png", exif=exif)
    args = argparse.Namespace(
        image=str(tmp_path / "photo.png"), mask=str(tmp_path / "mask.png"), strength=None, height=None, width=None
    )
    sources = read_sources(args)
    assert sources.image.size == (16, 32) and sources.mask.size == (16, 32)
    assert np.array_equal(np.asarray(sources.image), np.asarray(load_image(str(tmp_path / "photo.png"))))


def test_a_pixel_space_model_refuses_a_source_image_in_one_line(tmp_path, capsys) -> None:
    """The bundled shapes model has no VAE to encode a source (it was a ValueError traceback)."""
    source = str(_write_image(tmp_path / "source.png"))
    line = one_error(capsys, ["generate", "a red circle", "-o", str(tmp_path / "out.png"), "--image", source], 2)
    assert "--image needs a model with a VAE" in line and not (tmp_path / "out.png").exists()


def test_non_finite_latents_count_the_steps_the_strength_leaves(sd_folder, tmp_path, capsys, monkeypatch) -> None:
    """`--strength 0.5` of `--steps 4` runs 2 steps: the message counts those, not `--steps`."""
    import torch
    from diffusers import DDIMScheduler  # the tiny SD pipeline's

    original = DDIMScheduler.step

    def step_into_nan(self, model_output, timestep, sample, *args, **kwargs):
        (latents, *rest) = original(self, model_output, timestep, sample, *args, return_dict=False)
        return (torch.full_like(latents, float("nan")), *rest)

    monkeypatch.setattr(DDIMScheduler, "step", step_into_nan)
    source, output = _write_image(tmp_path / "source.png"), tmp_path / "a.png"
    argv = ["generate", "a red circle", "-o", str(output), "--image", str(source), "--strength", "0.5"]
    line = one_error(capsys, [*argv, "--steps", "4", "--model", str(sd_folder)], 1)
    assert line == (
        "error: the latents became NaN or infinite at step 1 of 2, so the image would be black; nothing was "
        "written. Try another --steps or --seed, or a lower --guidance"
    )
    assert not output.exists()
