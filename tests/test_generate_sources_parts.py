"""`clipcond generate`'s source-image options on their own, with small PNGs and stand-in
pipelines: every refusal of `read_sources`, `_read_image` and `check_sources_against` whole,
the edges (a strength of exactly 1 taken, an image of exactly the VAE's factor taken), the
modes each file is read in (the image RGB, the mask one channel), and the option texts.

test_generate_sources.py and test_image_modes.py run tiny img2img and inpaint pipelines."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
from PIL import Image

from clipcond.errors import UsageError
from clipcond.pipelines.generate_sources import (
    SourceImages,
    add_source_arguments,
    check_sources_against,
    read_sources,
)


def arguments(**given) -> argparse.Namespace:
    values = {"image": None, "mask": None, "strength": None, "height": None, "width": None, **given}
    return argparse.Namespace(**values)


def refusal(**given) -> str:
    with pytest.raises(UsageError) as error:
        read_sources(arguments(**given))
    return str(error.value)


@pytest.fixture
def png(tmp_path):
    def write(name: str, size=(16, 8), mode="RGB", colour=(200, 10, 10)) -> str:
        path = tmp_path / name
        Image.new(mode, size, colour if mode == "RGB" else 255).save(path)
        return str(path)

    return write


def test_without_an_image_there_is_no_source() -> None:
    assert read_sources(arguments()) is None


@pytest.mark.parametrize("given", [{"mask": "m.png"}, {"strength": 0.5}])
def test_a_mask_or_strength_without_an_image_is_refused(given) -> None:
    assert refusal(**given) == "--mask and --strength need --image (the source image they apply to)"


@pytest.mark.parametrize("given", [{"height": 64}, {"width": 64}])
def test_a_size_with_an_image_is_refused(png, given) -> None:
    assert refusal(image=png("a.png"), **given) == (
        "--height and --width do not go with --image: the output takes the size of the source image"
    )


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.0000001, float("nan"), float("inf")])
def test_a_strength_outside_zero_to_one_is_refused(png, strength) -> None:
    assert refusal(image=png("a.png"), strength=strength) == f"--strength must be in (0, 1], got {strength}"


@pytest.mark.parametrize("strength", [1.0, 1e-6, 0.5])
def test_a_strength_in_zero_to_one_is_taken(png, strength) -> None:
    assert read_sources(arguments(image=png("a.png"), strength=strength)).strength == strength


def test_the_image_is_read_as_rgb_and_the_mask_as_one_channel(png) -> None:
    sources = read_sources(arguments(image=png("a.png", mode="L"), mask=png("m.png", mode="RGB")))
    assert isinstance(sources, SourceImages)
    assert (sources.image.mode, sources.image.size) == ("RGB", (16, 8))
    assert (sources.mask.mode, sources.mask.size) == ("L", (16, 8))
    assert sources.strength is None


def test_a_mask_of_another_size_is_refused_with_both_sizes(png) -> None:
    assert refusal(image=png("a.png", size=(16, 8)), mask=png("m.png", size=(12, 6), mode="L")) == (
        "--mask is 12 x 6 pixels and --image 16 x 8: the mask must have the image's size"
    )


@pytest.mark.parametrize("option", ["image", "mask"])
def test_a_missing_file_and_one_that_is_no_image_are_named_with_their_option(png, tmp_path, option) -> None:
    image = png("a.png")
    given = {"image": image} if option == "mask" else {}
    assert (
        refusal(**given, **{option: str(tmp_path / "none.png")}) == f"--{option} {tmp_path / 'none.png'}: no such file"
    )
    text = tmp_path / "text.png"
    text.write_text("not a picture")
    message = refusal(**given, **{option: str(text)})
    assert message == f"--{option} {text}: not an image that can be read: cannot identify image file '{text}'"


# ------------------------------------------------------------------ against the pipeline


def pipe(vae=True, factor=8, default=0.8):
    return SimpleNamespace(vae=object() if vae else None, vae_scale_factor=factor, default_strength=lambda: default)


def against(pipeline, image_size=(16, 8), strength=None, steps=10) -> str:
    sources = SourceImages(Image.new("RGB", image_size), None, strength)
    with pytest.raises(UsageError) as error:
        check_sources_against(pipeline, sources, steps)
    return str(error.value)


def test_a_model_without_a_vae_cannot_take_an_image() -> None:
    assert against(pipe(vae=False)) == (
        "--image needs a model with a VAE (it encodes the source into latents); this model works in pixel space, "
        "as the bundled shapes model does"
    )


def test_an_image_needs_one_latent_pixel_at_least() -> None:
    assert against(pipe(factor=8), image_size=(16, 7)) == "--image is 16 x 7 pixels: this model needs at least 8 x 8"
    assert check_sources_against(pipe(factor=8), SourceImages(Image.new("RGB", (8, 8)), None, None), 10) is None


def test_a_strength_that_leaves_no_step_is_refused_naming_where_it_came_from() -> None:
    assert against(pipe(), strength=0.05, steps=10) == (
        "--strength 0.05 runs int(10 x 0.05) = 0 of the --steps 10: raise --strength or --steps"
    )
    assert against(pipe(default=0.3), steps=3) == (
        "the default strength of this model 0.3 runs int(3 x 0.3) = 0 of the --steps 3: raise --strength or --steps"
    )
    assert check_sources_against(pipe(default=0.3), SourceImages(Image.new("RGB", (8, 8)), None, None), 4) is None


def test_the_option_texts() -> None:
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["image"] == (
        "source image (PNG, JPEG, ...): transform it as the prompt says (image to image); the output takes its "
        "size, rounded down to the model's multiple (8)"
    )
    assert helps["mask"] == (
        "with --image: an inpainting mask of the image's size; white is repainted, black kept (as in diffusers)"
    )
    assert helps["strength"] == (
        "with --image: how much of the source is noised, in (0, 1]; the last int(steps x strength) steps run. "
        "Default: diffusers' (image to image 0.8, SDXL 0.3; inpainting 1.0, SDXL 0.9999)"
    )
    assert parser.parse_args(["--strength", "0.5"]).strength == 0.5
    assert parser.parse_args([]).image is None
