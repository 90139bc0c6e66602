"""The image-argument checks of img2img and inpainting, called directly (no pipeline: cheap):
the count and pixel size they read off every accepted layout equal those diffusers'
`VaeImageProcessor.preprocess` makes of it, and each refusal and boundary holds as documented
in pipelines/image_inputs.py."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from clipcond.pipelines.image_inputs import (
    ImageBatch,
    check_batch_fits,
    check_denoising_start,
    check_image,
    check_mask,
    check_mask_fits,
    check_strength,
    holds_latents,
    steps_after_strength,
)

H, W = 32, 24  # multiples of 8: diffusers' preprocess keeps them

MASKS = {
    "tensor_hw": torch.rand(H, W),
    "tensor_1hw": torch.rand(1, H, W),
    "tensor_bhw": torch.rand(3, H, W),
    "tensor_b1hw": torch.rand(2, 1, H, W),
    "numpy_hw": np.random.rand(H, W).astype(np.float32),
    "numpy_hw1": np.random.rand(H, W, 1).astype(np.float32),
    "numpy_bhw": np.random.rand(3, H, W).astype(np.float32),
    "numpy_bhw1": np.random.rand(2, H, W, 1).astype(np.float32),
    "numpy_uint8": (np.random.rand(H, W) * 255).astype(np.uint8),
    "tensor_uint8": (torch.rand(1, 1, H, W) * 255).to(torch.uint8),
    "pil": PIL.Image.new("L", (W, H)),
    "list_of_two_tensors": [torch.rand(1, H, W), torch.rand(1, H, W)],
    "list_of_two_arrays": [np.random.rand(H, W).astype(np.float32)] * 2,
    "list_of_pil": [PIL.Image.new("L", (W, H))] * 3,
}


@pytest.mark.parametrize("name", list(MASKS))
def test_a_masks_count_and_size_are_those_diffusers_mask_processor_makes(name) -> None:
    mask = MASKS[name]
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    count, channels, height, width = processor.preprocess(mask).shape
    assert channels == 1
    assert check_mask(mask) == ImageBatch(count, height, width)


IMAGES = {
    "tensor_3hw": torch.rand(3, H, W),
    "tensor_b3hw": torch.rand(2, 3, H, W),
    "numpy_hw3": np.random.rand(H, W, 3).astype(np.float32),
    "numpy_bhw3": np.random.rand(2, H, W, 3).astype(np.float32),
    "pil": PIL.Image.new("RGB", (W, H)),
    "list_of_pil": [PIL.Image.new("RGB", (W, H))] * 3,
    "list_of_tensors": [torch.rand(1, 3, H, W), torch.rand(2, 3, H, W)],
    "list_of_arrays": [np.random.rand(H, W, 3).astype(np.float32)] * 2,
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_count_and_size_are_those_diffusers_image_processor_makes(name) -> None:
    image = IMAGES[name]
    count, channels, height, width = VaeImageProcessor(vae_scale_factor=8).preprocess(image).shape
    assert channels == 3
    assert check_image(image, "image", 8) == ImageBatch(count, height, width)


@pytest.mark.parametrize("shape, count", [((4, 4, 3), 1), ((2, 4, 4, 3), 2)])
def test_latents_are_counted_and_sized_in_pixels_of_the_vae_factor(shape, count) -> None:
    """(batch, 4, h, w) latents of a VAE of factor 8 are h * 8 x w * 8 pixels; diffusers'
    preprocess passes them through as they are."""
    latents = torch.rand(*shape[:-3], 4, shape[-2], shape[-1] * 2)
    assert VaeImageProcessor(vae_scale_factor=8).preprocess(latents).shape[-3] == 4
    assert check_image(latents, "image", 8, 4) == ImageBatch(count, 4 * 8, 6 * 8)
    assert holds_latents(latents, 4) and holds_latents([latents, latents], 4)
    assert not holds_latents(torch.rand(*shape[:-3], 3, 4, 6), 4)
    assert not holds_latents(torch.rand(4, 6), 4)
    assert not holds_latents(np.zeros((*shape[:-3], 4, 4, 6)), 4)
    assert check_image(torch.rand(2, 16, 3, 5), "image", 8, 16) == ImageBatch(2, 24, 40)  # 16 latent channels


@pytest.mark.parametrize(
    "value, message",
    [
        (
            torch.rand(2, 2, H, W),
            r"`mask_image` is a one-channel mask: \(batch, 1, H, W\), \(batch, H, W\), \(1, H, W\) or \(H, W\); got shape \(2, 2, 32, 24\)",
        ),
        (torch.rand(1, 1, 1, H, W), r"got shape \(1, 1, 1, 32, 24\)"),
        (
            np.zeros((H, W, 3), np.float32),
            r"\(batch, H, W, 1\), \(batch, H, W\), \(H, W, 1\) or \(H, W\); got shape \(32, 24, 3\)",
        ),
        (np.zeros((H, W, 4), np.float32), r"got shape \(32, 24, 4\)"),
        (np.zeros((2, H, W, 3), np.float32), r"got shape \(2, 32, 24, 3\)"),
        (np.zeros((2, 1, H, W), np.float32), r"got shape \(2, 1, 32, 24\)"),
        (np.zeros((W,), np.float32), r"got shape \(24,\)"),
        (
            [torch.rand(1, H, W), torch.rand(1, H, 16)],
            r"`mask_image` holds images of different sizes \[\(32, 16\), \(32, 24\)\]; give them one size",
        ),
        (
            torch.zeros(1, H, W, dtype=torch.int32),
            r"`mask_image` has dtype torch.int32; give a float mask in \[0, 1\] \(1: repaint\), e.g. `mask.float\(\)` or `mask.astype\(numpy.float32\)`, a uint8 mask \(255: repaint\) or a PIL image$",
        ),
        (np.zeros((H, W), np.int64), r"`mask_image` has dtype int64"),
    ],
)
def test_a_mask_of_another_layout_is_refused_with_its_shape(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_mask(value)


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.rand(3, W), r"`image` must be \(batch, channels, H, W\) or \(channels, H, W\), got shape \(3, 24\)"),
        (
            np.zeros((1, 1, H, W, 3)),
            r"`image` must be \(batch, H, W, channels\) or \(H, W, channels\), got shape \(1, 1, 32, 24, 3\)",
        ),
        (np.zeros((H, W, 4)), r"`image` has 4 channels \(last axis\); give RGB pixels \(3 channels\)"),
        (np.zeros((2, 3, H, W)), r"`image` has 24 channels \(last axis\)"),
        (
            torch.rand(5, H, W),
            r"`image` has 5 channels \(axis -3\); give RGB pixels \(3 channels\) or latents \(4 channels\)",
        ),
        (
            [PIL.Image.new("RGB", (W, H)), PIL.Image.new("RGB", (W, 16))],
            r"`image` holds images of different sizes \[\(16, 24\), \(32, 24\)\]",
        ),
        (PIL.Image.new("LA", (W, H)), r"`image` is a PIL image in mode 'LA'; give RGB images"),
    ],
)
def test_an_image_of_another_layout_is_refused_with_its_shape(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_image(value, "image", 8, 4)


def test_the_mask_must_be_the_images_size() -> None:
    check_mask_fits(ImageBatch(1, H, W), ImageBatch(3, H, W))
    with pytest.raises(
        ValueError,
        match=r"`mask_image` is 32x16 pixels but `image` is 32x24; give a mask of the image's size \(white: repaint, black: keep\)",
    ):
        check_mask_fits(ImageBatch(1, H, W), ImageBatch(1, H, 16))


@pytest.mark.parametrize("strength", [0, 0.0, 1, 1.0, 0.5, np.float64(0.25)])
def test_strength_takes_both_ends_of_0_to_1(strength) -> None:
    assert check_strength(strength) == float(strength) and type(check_strength(strength)) is float


@pytest.mark.parametrize("strength", [True, False, -1e-9, 1 + 1e-9, float("nan"), float("inf"), None, "1"])
def test_strength_outside_0_to_1_or_no_number_is_refused(strength) -> None:
    with pytest.raises(ValueError, match=r"`strength` must be a number in \[0, 1\], got "):
        check_strength(strength)


@pytest.mark.parametrize(
    "steps, strength, kept",
    [(10, 1.0, 10), (10, 0.1, 1), (10, 0.25, 2), (4, 0.5, 2), (3, 1, 3), (4, np.float32(0.7), 2)],
)
def test_steps_after_strength_are_diffusers_get_timesteps(steps, strength, kept) -> None:
    """diffusers: init_timestep = min(int(num_inference_steps * strength), num_inference_steps)."""
    assert steps_after_strength(steps, strength) == min(int(steps * strength), steps) == kept


def test_a_strength_that_runs_no_step_is_refused_with_both_numbers() -> None:
    expected = (
        "`strength` 0.09 runs int(10 x 0.09) = 0 of num_inference_steps=10 steps; raise `strength` or "
        "`num_inference_steps`"
    )
    with pytest.raises(ValueError) as refusal:
        steps_after_strength(10, 0.09)
    assert str(refusal.value) == expected


@pytest.mark.parametrize("custom", ["timesteps", "sigmas"])
def test_a_strength_that_runs_none_of_a_custom_schedule_says_to_give_more_of_it(custom) -> None:
    expected = (
        f"`strength` 0.3 runs int(3 x 0.3) = 0 of the 3 steps `{custom}` sets; raise `strength` or give more `{custom}`"
    )
    with pytest.raises(ValueError) as refusal:
        steps_after_strength(3, 0.3, custom)
    assert str(refusal.value) == expected


@pytest.mark.parametrize("count, outputs", [(1, 1), (1, 4), (2, 4), (3, 6), (4, 4)])
def test_a_batch_that_divides_the_outputs_fits(count, outputs) -> None:
    check_batch_fits(ImageBatch(count, H, W), outputs, "image")


@pytest.mark.parametrize("count, outputs", [(3, 4), (4, 2), (2, 1)])
def test_a_batch_that_does_not_divide_the_outputs_is_refused(count, outputs) -> None:
    with pytest.raises(
        ValueError,
        match=rf"`image` has {count} images for {outputs} outputs \(prompts x num_images_per_prompt\); give one image, or a number that divides the outputs",
    ):
        check_batch_fits(ImageBatch(count, H, W), outputs, "image")


@pytest.mark.parametrize(
    "denoising_start, denoising_end", [(None, None), (0.5, None), (0.5, 0.8), (1e-9, None), (1 - 1e-9, None)]
)
def test_denoising_start_inside_0_to_1_and_below_the_end_is_taken(denoising_start, denoising_end) -> None:
    check_denoising_start(denoising_start, None, denoising_end, True)
    if denoising_start is None:
        check_denoising_start(None, 0.5, None, False)


@pytest.mark.parametrize(
    "denoising_start, strength, denoising_end, reads_time_ids, message",
    [
        (
            0.5,
            None,
            None,
            False,
            r"`denoising_start` is SDXL's \(the refiner's part of a base \+ refiner run\), but this pipeline's UNet reads no time ids \(its addition_embed_type is not 'text_time'\); use `strength`",
        ),
        (0, None, None, True, r"`denoising_start` must be a fraction of the schedule in \(0, 1\), got 0"),
        (1, None, None, True, r"in \(0, 1\), got 1"),
        (1.5, None, None, True, r"in \(0, 1\), got 1.5"),
        (True, None, None, True, r"got True"),
        ("0.5", None, None, True, r"got '0.5'"),
        (
            0.5,
            0.3,
            None,
            True,
            r"give `strength` or `denoising_start`, not both \(got 0.3 and 0.5\): `denoising_start` sets where the schedule starts, and diffusers ignores `strength` then",
        ),
        (
            0.5,
            None,
            0.5,
            True,
            r"`denoising_start` 0.5 must be below `denoising_end` 0.5: the call runs the part of the schedule between them",
        ),
        (0.6, None, 0.5, True, r"must be below `denoising_end` 0.5"),
    ],
)
def test_denoising_start_refusals_in_full(denoising_start, strength, denoising_end, reads_time_ids, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_denoising_start(denoising_start, strength, denoising_end, reads_time_ids)


@pytest.mark.parametrize(
    "value, kind", [(None, "NoneType"), ("a.png", "str"), ([torch.rand(3, H, W), None], "NoneType")]
)
def test_no_image_type_is_refused_by_type(value, kind) -> None:
    with pytest.raises(
        TypeError,
        match=rf"`image` must be a PIL image, a numpy array, a torch tensor, or a non-empty list of one of these, got {kind}",
    ):
        check_image(value, "image")
    with pytest.raises(TypeError, match=rf"`mask_image` must be .* got {kind}"):
        check_mask(value)
    with pytest.raises(TypeError, match=r"`image` is a list that mixes \['Tensor', 'ndarray'\]; give one type"):
        check_image([torch.rand(3, H, W), np.zeros((H, W, 3))], "image")
    with pytest.raises(ValueError, match=r"`mask_image` must be .* got an empty list"):
        check_mask([])


def test_by_default_latents_are_one_pixel_a_cell_and_have_4_channels() -> None:
    """The documented defaults: vae_scale_factor=1, latent_channels=4."""
    assert check_image(torch.rand(2, 4, 5, 3), "image") == ImageBatch(2, 5, 3)
    with pytest.raises(ValueError, match=r"or latents \(4 channels\)"):
        check_image(torch.rand(5, 5, 3), "image")


MIXED_LISTS = {
    "pixels_and_latents": (
        "image",
        [torch.rand(3, H, W), torch.rand(4, H, W)],
        "['3-d latents', '3-d pixels']",
    ),
    "3d_and_4d_tensors": ("image", [torch.rand(3, H, W), torch.rand(1, 3, H, W)], "['3-d pixels', '4-d pixels']"),
    "3d_and_4d_arrays": (
        "image",
        [np.random.rand(H, W, 3), np.random.rand(1, H, W, 3)],
        "['3-d pixels', '4-d pixels']",
    ),
    "hw_and_1hw_mask_tensors": ("mask_image", [torch.zeros(H, W), torch.zeros(1, H, W)], "['2-d', '3-d']"),
    "hw_and_hw1_mask_arrays": (
        "mask_image",
        [np.zeros((H, W), np.float32), np.zeros((H, W, 1), np.float32)],
        "['2-d', '3-d']",
    ),
}


@pytest.mark.parametrize("name", list(MIXED_LISTS))
def test_a_list_mixing_layouts_is_refused_naming_them(name) -> None:
    """diffusers stacks a list's entries: one of another rank, or pixels beside latents, fails
    there (a RuntimeError from torch.stack, or "Input is in incorrect format") after the prompt is
    encoded. Refused here, naming the argument and the layouts."""
    argument, value, layouts = MIXED_LISTS[name]
    with pytest.raises(ValueError) as refusal:
        check_image(value, "image", 1, 4) if argument == "image" else check_mask(value)
    assert str(refusal.value) == (
        f"`{argument}` is a list that mixes layouts {layouts}; give every entry the same number of "
        "dimensions (and images all as pixels or all as latents)"
    )


def test_a_list_of_one_layout_and_pil_images_beside_arrays_stay_as_they_were() -> None:
    assert check_image([torch.rand(3, H, W), torch.rand(3, H, W)], "image") == ImageBatch(2, H, W)
    assert check_image([torch.rand(4, 4, 3), torch.rand(4, 4, 3)], "image", 8, 4) == ImageBatch(2, 32, 24)
    assert check_mask([torch.zeros(2, H, W), torch.zeros(1, H, W)]) == ImageBatch(3, H, W)
    with pytest.raises(TypeError, match="mixes"):  # a type mix stays a TypeError
        check_mask([PIL.Image.new("L", (W, H)), np.zeros((H, W), np.float32)])


def test_a_list_of_one_latents_tensor_holds_latents() -> None:
    latents = torch.rand(1, 4, 4, 6)
    assert holds_latents([latents], 4) and not holds_latents([torch.rand(1, 3, 32, 48)], 4)


# ---------------------------------------------------------------- pixel values


@pytest.mark.parametrize(
    "value, message",
    [
        (
            np.zeros((H, W, 3), np.uint8),
            r"^`image` has dtype uint8; give floats in \[0, 1\] \(or \[-1, 1\]\), e\.g\. "
            r"`image\.astype\(numpy\.float32\) / 255`, or a PIL image",
        ),
        (np.zeros((H, W, 3), bool), r"^`image` has dtype bool; "),
        (np.zeros((2, H, W, 3), np.int64), r"^`image` has dtype int64; "),
        (
            torch.zeros(1, 3, H, W, dtype=torch.uint8),
            r"^`image` has dtype torch\.uint8; .*e\.g\. `image\.float\(\) / 255`",
        ),
        (np.full((H, W, 3), 255.0, np.float32), r"^`image` holds values from 255 to 255; give pixels in \[0, 1\]"),
        (torch.full((3, H, W), -1.5), r"^`image` holds values from -1\.5 to -1\.5; "),
        ([np.zeros((H, W, 3), np.float32), np.full((H, W, 3), 1.25, np.float32)], r"^`image` holds values from 1\.25 "),
    ],
)
def test_pixels_that_are_no_floats_in_range_are_refused(value, message) -> None:
    """diffusers' image processor rescales neither: `numpy.asarray(pil_image)` gave another image."""
    with pytest.raises(ValueError, match=message):
        check_image(value, "image")


@pytest.mark.parametrize(
    "value",
    [
        np.ones((H, W, 3), np.float32),
        -np.ones((H, W, 3), np.float64),
        torch.zeros(3, H, W, dtype=torch.float16),
        torch.full((1, 3, H, W), float("nan")),  # left to the call's `non_finite` check
        torch.full((1, 4, H // 8, W // 8), 30.0),  # latents: no range
    ],
    ids=["ones", "minus_ones", "float16", "nan", "latents"],
)
def test_pixels_in_range_nan_and_latents_pass(value) -> None:
    check_image(value, "image", vae_scale_factor=8)
