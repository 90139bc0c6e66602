"""`clipcond generate --hires-scale` (A1111's hires fix, `clipcond.pipelines.hires_fix`): the PNG
against diffusers' own text-to-image and img2img pipelines chained by hand as A1111's code chains
its passes (the size, the interpolation, the schedule's length and the steps run written here from
A1111's `processing.py` and `setup_img2img_steps`), A1111's pixel upscalers against PIL calls
transcribed from its `resize_image` and `Upscaler.upscale`, the PNG's fields read back by
`--parameters-from`, and every mistake refused in one line before sampling."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_errors import one_error

from clipcond.cli import main
from clipcond.pipelines import generate
from clipcond.pipelines.hires_fix import (
    LATENT_UPSCALERS,
    hires_size,
    second_pass_schedule,
    upscale_image,
    upscale_latents,
    upscaler_name,
)
from clipcond.pipelines.png_parameters import apply_parameters, read_infotext

PROMPT, NEGATIVE, SEED = "a red circle", "blurry", 3


def _a1111_schedule(steps: int, strength: float) -> tuple[int, int]:
    """(schedule length, steps run) of A1111's hires pass: `setup_img2img_steps` with steps
    given, then k-diffusion's `sigmas[steps - t_enc - 1:]`."""
    length = int(steps / min(strength, 0.999))
    t_enc = steps - 1
    return length, len(range(length - t_enc - 1, length))


def _diffusers_hires(folder, scale, steps, hires_steps, strength, upscale, n=1, **size) -> list[np.ndarray]:
    """diffusers' StableDiffusionPipeline, then `upscale` of its output, then its img2img pipeline
    over the last `hires_steps` of A1111's schedule, noise drawn again from each seed."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(folder)
    seeds = [SEED + index for index in range(n)]
    common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": 3.0, "num_images_per_prompt": n}
    latent = upscale[0] == "latent"
    first = sd(
        **common,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        output_type="latent" if latent else "np",
        **size,
    ).images
    factor = sd.vae_scale_factor
    if latent:
        height, width = first.shape[-2] * factor, first.shape[-1] * factor
        target = (int(width * scale) // factor, int(height * scale) // factor)
        image = torch.nn.functional.interpolate(first, size=target[::-1], mode=upscale[1], antialias=upscale[2])
    else:
        height, width = first.shape[1:3]
        target = (int(width * scale) // factor * factor, int(height * scale) // factor * factor)
        image = [upscale[1](Image.fromarray((255 * pixels).astype(np.uint8)), target) for pixels in first]
    length, run = _a1111_schedule(hires_steps, strength)
    ran = []
    images = StableDiffusionImg2ImgPipeline.from_pipe(sd)(
        **common,
        image=image,
        strength=min((run + 0.5) / length, 1.0),  # diffusers runs int(length x strength) = run steps
        num_inference_steps=length,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        callback_on_step_end=lambda pipe, step, timestep, tensors: ran.append(step) or {},
    ).images
    assert len(ran) == run
    return [np.asarray(image) for image in images]


def _generate(folder, output, *options: str) -> np.ndarray:
    argv = ["generate", PROMPT, "--negative", NEGATIVE, "--seed", str(SEED), "--model", str(folder)]
    assert main([*argv, "-o", str(output), "--steps", "4", *options]) == 0
    return np.asarray(Image.open(output))


def test_a_latent_hires_fix_draws_what_diffusers_pipelines_chained_as_a1111_draw(diffusers_sd_folder, tmp_path) -> None:
    # the default upscaler (Latent) and strength (0.7): a schedule of int(3 / 0.7) = 4 steps, the last 3 run
    options = ["--hires-scale", "1.5", "--hires-steps", "3", "--width", "32", "--height", "24"]
    written = _generate(diffusers_sd_folder, tmp_path / "latent.png", *options)
    expected = _diffusers_hires(diffusers_sd_folder, 1.5, 4, 3, 0.7, ("latent", "bilinear", False), width=32, height=24)
    assert written.shape == (36, 48, 3) and np.array_equal(written, expected[0])
    assert read_infotext(Image.open(tmp_path / "latent.png").info["parameters"]).fields["Hires steps"] == "3"
    # another mode, antialiased, with --hires-steps left to --steps and strength 0.45: int(4 / 0.45) = 8, the last 4
    options = ["--hires-scale", "1.25", "--hires-upscaler", "latent (bicubic antialiased)", "--hires-strength", "0.45"]
    written = _generate(diffusers_sd_folder, tmp_path / "bicubic.png", *options)
    expected = _diffusers_hires(diffusers_sd_folder, 1.25, 4, 4, 0.45, ("latent", "bicubic", True))[0]
    assert written.shape == (40, 40, 3) and np.array_equal(written, expected)


def test_each_latent_upscaler_interpolates_in_a1111s_mode() -> None:
    a1111 = {  # A1111's shared.latent_upscale_modes
        "Latent": {"mode": "bilinear", "antialias": False},
        "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
        "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
        "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
        "Latent (nearest)": {"mode": "nearest", "antialias": False},
        "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
    }
    assert list(LATENT_UPSCALERS) == list(a1111)
    latents = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    for name, mode in a1111.items():
        expected = torch.nn.functional.interpolate(latents, size=(9, 13), **mode)
        assert torch.equal(upscale_latents(latents, (26, 18), name, 2), expected), name


def test_an_sdxl_hires_fix_draws_what_diffusers_sdxl_pipelines_chained_draw(sdxl_pipe, tmp_path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = tmp_path / "sdxl"
    sdxl_pipe.save_pretrained(folder)
    written = _generate(folder, tmp_path / "sdxl.png", "--hires-scale", "1.5", "--hires-steps", "2")
    generator = [torch.Generator().manual_seed(SEED)]
    common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": 3.0}
    first = sdxl_pipe(**common, num_inference_steps=4, generator=generator, output_type="latent").images
    factor = sdxl_pipe.vae_scale_factor
    size = (int(first.shape[-2] * factor * 1.5) // factor, int(first.shape[-1] * factor * 1.5) // factor)
    latents = torch.nn.functional.interpolate(first, size=size, mode="bilinear", antialias=False)
    length, run = _a1111_schedule(2, 0.7)  # int(2 / 0.7) = 2 steps, both run
    expected = StableDiffusionXLImg2ImgPipeline.from_pipe(sdxl_pipe)(
        **common,
        image=latents,
        strength=min((run + 0.5) / length, 1.0),
        num_inference_steps=length,
        generator=[torch.Generator().manual_seed(SEED)],
    ).images[0]
    assert written.shape == (48, 48, 3) and np.array_equal(written, np.asarray(expected))


def test_a_pixel_hires_fix_decodes_resizes_as_a1111_and_encodes_again(diffusers_sd_folder, tmp_path) -> None:
    def lanczos(image, size):  # A1111's "Lanczos": by the scale, then to a multiple of 8, then to the size
        scale = max(size[0] / image.width, size[1] / image.height)
        eighths = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
        image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
        image = image if image.size == eighths else image.resize(eighths, Image.Resampling.LANCZOS)
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    options = ["--hires-scale", "1.7", "--hires-upscaler", "lanczos", "--n", "2", "--width", "40", "--height", "32"]
    written = _generate(diffusers_sd_folder, tmp_path / "lanczos.png", *options)
    expected = _diffusers_hires(diffusers_sd_folder, 1.7, 4, 4, 0.7, ("pixels", lanczos), n=2, width=40, height=32)
    # int(40 x 1.7) = 68 by int(32 x 1.7) = 54 pixels, two of them side by side
    assert written.shape == (54, 136, 3)
    assert np.array_equal(written[:, :68], expected[0]) and np.array_equal(written[:, 68:], expected[1])


@pytest.mark.parametrize(
    ("upscaler", "first_filter"), [("Lanczos", Image.Resampling.LANCZOS), ("Nearest", Image.Resampling.NEAREST)]
)
@pytest.mark.parametrize(
    ("source", "size"), [((30, 20), (57, 38)), ((32, 32), (64, 64)), ((40, 24), (40, 24)), ((30, 20), (30, 20))]
)
def test_a_pixel_upscaler_resizes_as_a1111s_resize_image(upscaler, first_filter, source, size) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8))
    # A1111: resize(im, w, h) -> upscaler.upscale(im, scale) -> resized by `scale` with the
    # upscaler's filter, then to int(side x scale // 8 * 8) with Lanczos if that differs; then to (w, h)
    scale = max(size[0] / image.width, size[1] / image.height)
    expected = image
    if scale > 1.0:
        expected = image.resize((int(image.width * scale), int(image.height * scale)), resample=first_filter)
        eighths = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
        if expected.size != eighths:
            expected = expected.resize(eighths, resample=Image.Resampling.LANCZOS)
    if expected.size != size:
        expected = expected.resize(size, resample=Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(upscale_image(image, size, upscaler)), np.asarray(expected))
    none = np.asarray(image.resize(size, resample=Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(upscale_image(image, size, "None")), none)


@pytest.mark.parametrize("strength", [0.05, 0.1, 0.3, 1 / 3, 0.45, 0.5, 0.55, 0.7, 0.9, 0.999, 1.0])
def test_the_second_pass_runs_the_last_steps_of_a1111s_schedule(strength) -> None:
    for steps in range(1, 120):
        length, run = _a1111_schedule(steps, strength)
        total, diffusers_strength = second_pass_schedule(steps, strength)
        assert (total, min(int(total * diffusers_strength), total)) == (length, run) == (length, steps)
    assert second_pass_schedule(1000, 1.0)[0] == _a1111_schedule(1000, 1.0)[0] == 1001  # A1111 divides by 0.999 at most
    with pytest.raises(ValueError, match="steps >= 1"):
        second_pass_schedule(0, 0.5)
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            second_pass_schedule(3, strength)


def test_the_hires_size_is_a1111s_rounded_down_to_the_vaes_factor() -> None:
    assert hires_size(512, 768, 2.0, 8) == (1024, 1536)
    assert hires_size(512, 512, 1.1, 8) == (560, 560)  # int(563.2) = 563 -> 560
    assert hires_size(520, 512, 1.5, 8) == (776, 768)  # 780 -> 776
    assert hires_size(33, 32, 1.5, 2) == (48, 48)  # int(49.5) = 49 -> 48


def test_upscaler_names_are_spelled_as_sampler_names_are() -> None:
    assert upscaler_name("latent  (NEAREST-exact)") == "Latent (nearest-exact)"
    assert upscaler_name("none") == "None"
    with pytest.raises(ValueError) as refused:
        upscaler_name("R-ESRGAN 4x+")
    assert str(refused.value) == (
        "no hires upscaler is named 'R-ESRGAN 4x+': A1111's upscalers clipcond has are Latent, Latent (antialiased), "
        "Latent (bicubic), Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact), Lanczos, Nearest, None"
    )


def test_the_png_holds_a1111s_hires_fields_and_draws_again_to_the_same_pixels(diffusers_sd_folder, tmp_path) -> None:
    first = tmp_path / "first.png"
    pixels = _generate(
        diffusers_sd_folder, first, "--hires-scale", "1.5", "--hires-upscaler", "Nearest", "--hires-strength", "0.6"
    )
    text = Image.open(first).info["parameters"]
    fields = read_infotext(text).fields
    assert fields["Size"] == "32x32"  # the first pass's, as A1111 writes it
    assert [fields[name] for name in ("Denoising strength", "Hires upscale", "Hires upscaler")] == [
        "0.6",
        "1.5",
        "Nearest",
    ]
    assert "Hires steps" not in fields  # A1111 writes it when given
    again = tmp_path / "again.png"
    assert (
        main(["generate", "--model", str(diffusers_sd_folder), "--parameters-from", str(first), "-o", str(again)]) == 0
    )
    assert np.array_equal(np.asarray(Image.open(again)), pixels)
    assert Image.open(again).info["parameters"] == text


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(list(argv))


A1111_HIRES = (
    "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model: v1-5, "
    "Denoising strength: 0.55, Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent (nearest-exact), "
    "Hires sampler: DPM++ 2M, Version: v1.10.1"
)


def test_parameters_from_an_a1111_png_apply_its_hires_fix_unless_given() -> None:
    args = _args()
    not_applied = apply_parameters(args, read_infotext(A1111_HIRES), "png")
    assert (args.hires_scale, args.hires_steps, args.hires_upscaler, args.hires_strength) == (
        2.0,
        12,
        "Latent (nearest-exact)",
        0.55,
    )
    assert (args.width, args.height, args.strength) == (512, 512, None)
    assert not_applied == ["Model", "Hires sampler"]
    given = _args(
        "--hires-scale", "1.5", "--hires-steps", "4", "--hires-upscaler", "Lanczos", "--hires-strength", "0.3"
    )
    apply_parameters(given, read_infotext(A1111_HIRES), "png")
    assert (given.hires_scale, given.hires_steps, given.hires_upscaler, given.hires_strength) == (
        1.5,
        4,
        "Lanczos",
        0.3,
    )
    # with --image the hires fix does not apply: its fields are named, the strength is the image's
    with_image = _args("--image", "source.png")
    not_applied = apply_parameters(with_image, read_infotext(A1111_HIRES), "png")
    assert (with_image.hires_scale, with_image.strength) == (None, 0.55)
    assert not_applied == ["Model", "Hires upscale", "Hires steps", "Hires upscaler", "Hires sampler"]
    # a text-to-image PNG without a hires fix: its strength is no hires strength
    plain = _args("--hires-scale", "2")
    apply_parameters(plain, read_infotext(A1111_HIRES.replace(", Hires upscale: 2", "")), "png")
    assert plain.hires_strength == 0.55
    no_hires = _args()
    not_applied = apply_parameters(no_hires, read_infotext(A1111_HIRES.replace(", Hires upscale: 2", "")), "png")
    assert (no_hires.hires_scale, no_hires.hires_strength, no_hires.hires_steps) == (None, None, 12)


def test_an_upscaler_clipcond_lacks_is_refused_naming_the_option_that_replaces_it(tmp_path, capsys) -> None:
    from PIL.PngImagePlugin import PngInfo

    png = tmp_path / "esrgan.png"
    chunk = PngInfo()
    chunk.add_text("parameters", A1111_HIRES.replace("Latent (nearest-exact)", "R-ESRGAN 4x+"))
    Image.new("RGB", (8, 8)).save(png, pnginfo=chunk)
    line = one_error(capsys, ["generate", "--parameters-from", str(png), "-o", str(tmp_path / "o.png")], 2)
    assert "Hires upscaler 'R-ESRGAN 4x+' cannot be read" in line and "give --hires-upscaler" in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hires-steps", "3"], "--hires-steps set the hires fix's second pass: give --hires-scale too"),
        (
            ["--hires-upscaler", "Lanczos", "--hires-strength", "0.5"],
            "--hires-upscaler, --hires-strength set the hires fix's second pass: give --hires-scale too",
        ),
        (["--hires-scale", "0.5"], "--hires-scale must be a finite number >= 1, got 0.5"),
        (["--hires-scale", "nan"], "--hires-scale must be a finite number >= 1, got nan"),
        (["--hires-scale", "2", "--hires-steps", "0"], "--hires-steps must be >= 1, got 0"),
        (["--hires-scale", "2", "--hires-strength", "0"], "--hires-strength must be in (0, 1], got 0.0"),
        (["--hires-scale", "2", "--hires-strength", "1.5"], "--hires-strength must be in (0, 1], got 1.5"),
        (
            ["--hires-scale", "2", "--image", "IMAGE"],
            "--hires-scale does not go with --image: the hires fix upscales an image drawn from the prompt (give "
            "--image a larger source instead)",
        ),
    ],
)
def test_hires_options_that_cannot_run_are_refused_before_the_model_loads(tmp_path, capsys, options, message) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32)).save(source)
    options = [str(source) if option == "IMAGE" else option for option in options]
    argv = ["generate", PROMPT, "-o", str(tmp_path / "o.png")]  # the bundled model, never loaded
    line = one_error(capsys, [*argv, *options], 2)
    assert message in line
    assert not (tmp_path / "o.png").exists()


def test_an_unknown_upscaler_is_the_parsers_error_listing_the_names(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--hires-scale", "2", "--hires-upscaler", "SwinIR 4x")
    err = capsys.readouterr().err
    assert "no hires upscaler is named 'SwinIR 4x'" in err and "Latent (nearest-exact), Lanczos, Nearest, None" in err


def test_what_needs_the_model_is_refused_before_sampling(diffusers_sd_folder, tmp_path, capsys) -> None:
    output = tmp_path / "o.png"
    # the bundled shapes model draws in pixel space: no VAE for the second pass
    line = one_error(capsys, ["generate", PROMPT, "-o", str(output), "--steps", "2", "--hires-scale", "2"], 2)
    assert line == (
        "error: --hires-scale needs a model with a VAE (the second pass is image to image on latents); this model "
        "works in pixel space, as the bundled shapes model does"
    )
    # 50 steps at strength 0.02: a schedule of 2,500 steps, more than the scheduler's 1,000
    argv = ["generate", PROMPT, "--model", str(diffusers_sd_folder), "-o", str(output), "--steps", "50"]
    line = one_error(capsys, [*argv, "--hires-scale", "2", "--hires-strength", "0.02"], 2)
    assert "the hires fix's 50 steps at --hires-strength 0.02 sample 2500" in line
    # more pixels a side than a PNG holds (a scale whose size a float cannot hold among them)
    for scale in ("1e308", "53687091.2"):  # 40 x 53687091.2 = 2**31 + 1
        line = one_error(capsys, [*argv, "--hires-scale", scale, "--width", "40"], 2)
        assert line.endswith(
            f"--hires-scale {float(scale)} gives more than 2147483647 pixels a side (a PNG's most) from 40 x 32: lower it"
        )
    # 32 x 67108863.96875 = 2**31 - 1 exactly: a PNG holds it (the memory does not)
    line = one_error(capsys, [*argv, "--hires-scale", "67108863.96875"], 2)
    assert "a side" not in line and "2147483647 x 2147483647 pixels (the hires fix's)" in line
    # more pixels than memory holds: named with the hires size
    line = one_error(capsys, [*argv, "--hires-scale", "100000", "--n", "4"], 2)
    assert "3200000 x 3200000 pixels (the hires fix's)" in line and "--hires-scale" in line
    assert not output.exists()


class _FirstPass:
    """A stand-in for the text-to-image pipeline: records its call, returns latents or pixels
    of the asked size for a VAE of factor 8."""

    vae_scale_factor = 8

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **arguments):
        self.calls.append(arguments)
        count, height, width = len(arguments["generator"]), arguments["height"], arguments["width"]
        if arguments["output_type"] == "latent":
            return SimpleNamespace(images=torch.randn(count, 4, height // 8, width // 8))
        return SimpleNamespace(images=np.random.default_rng(0).random((count, height, width, 3)))


@pytest.mark.parametrize("upscaler", ["Latent", "Nearest"])
def test_each_pass_gets_its_steps_size_fresh_seeds_and_step_callback(monkeypatch, upscaler) -> None:
    from clipcond.pipelines import CLIPConditionedImg2ImgPipeline
    from clipcond.pipelines.hires_fix import HiresFix, draw_with_hires_fix

    first, second = _FirstPass(), []
    monkeypatch.setattr(
        CLIPConditionedImg2ImgPipeline,
        "from_pipe",
        lambda pipe: lambda **arguments: second.append((pipe, arguments)) or SimpleNamespace(images=["drawn"]),
    )
    arguments = {"prompt": "p", "guidance_scale": 2.0, "height": 24, "width": 40}
    images, first_size = draw_with_hires_fix(
        first, HiresFix(1.5, 3, upscaler, 0.5), arguments, 4, [7, 8], lambda steps: ("callback", steps)
    )
    assert images == ["drawn"] and first_size == (40, 24)
    (called,) = first.calls
    assert {name: called[name] for name in ("prompt", "guidance_scale", "height", "width", "num_inference_steps")} == {
        **arguments,
        "num_inference_steps": 4,
    }
    assert called["callback_on_step_end"] == ("callback", 4)
    assert [generator.initial_seed() for generator in called["generator"]] == [7, 8]
    ((pipe, again),) = second
    assert pipe is first and "height" not in again and "width" not in again
    assert (again["prompt"], again["guidance_scale"]) == ("p", 2.0)
    # 60 x 36 rounded down to 8: 56 x 32; a schedule of int(3 / 0.5) = 6 steps, the last 3
    if upscaler == "Latent":
        assert tuple(again["image"].shape) == (2, 4, 4, 7)
    else:
        assert [image.size for image in again["image"]] == [(56, 32), (56, 32)]
    assert again["num_inference_steps"] == 6 and int(6 * again["strength"]) == 3
    assert again["callback_on_step_end"] == ("callback", 3)
    assert [generator.initial_seed() for generator in again["generator"]] == [7, 8]
    assert all(generator.get_state().equal(torch.Generator().manual_seed(7 + index).get_state())
               for index, generator in enumerate(again["generator"]))  # fmt: skip


def test_the_options_bounds_are_inclusive_and_the_defaults_a1111s() -> None:
    from clipcond.pipelines.hires_fix import HiresFix, hires_parameters, read_hires_fix

    assert read_hires_fix(_args("--hires-scale", "2")) == HiresFix(2.0, None, "Latent", 0.7)
    least = _args("--hires-scale", "1", "--hires-steps", "1", "--hires-strength", "1", "--hires-upscaler", "none")
    assert read_hires_fix(least) == HiresFix(1.0, 1, "None", 1.0)
    assert read_hires_fix(_args()) is None
    # a whole scale is written as A1111's UI writes it ("2"), another as given
    fields = hires_parameters(HiresFix(2.0, None, "Latent", 0.7))
    assert fields == {"Denoising strength": 0.7, "Hires upscale": 2, "Hires steps": None, "Hires upscaler": "Latent"}
    assert (
        type(fields["Hires upscale"]) is int
        and hires_parameters(HiresFix(1.25, 3, "None", 1.0))["Hires upscale"] == 1.25
    )
    assert hires_parameters(None) == {}
