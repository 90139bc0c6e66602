"""Time per image (and, on a GPU, peak memory): CLIPConditionedPipeline / StableDiffusionPipeline
on the same components, and CLIPConditionedPipeline / StableDiffusionXLPipeline on SDXL-shaped ones.

`--size small` (the default): SD-1.5-shaped components scaled down to run on a CPU (random
weights): UNet with four levels (channels 32/64/128/128, two layers per block, cross-attention
on the first three), a four-level VAE, a 4-layer CLIP text encoder 128 wide. `--size sd15`:
the full Stable Diffusion 1.5 shapes (860M-parameter UNet, its VAE, the ViT-L/14 text
encoder), random weights, for a GPU. DDIM, classifier-free guidance 7.5. Both pipelines
share the very same module objects; runs alternate, medians are compared. A last table times
the text encoder alone on prompt and negative in one batch against two batches (what both
pipelines run, as diffusers' `encode_prompt` does), and what the difference is per image. Then
img2img and inpainting: `CLIPConditionedImg2ImgPipeline` / `StableDiffusionImg2ImgPipeline`
(strength 0.75) and `CLIPConditionedInpaintPipeline` / `StableDiffusionInpaintPipeline` with
the same plain UNet (the mask blend) and with an inpainting UNet of 9 input channels (the same
shapes otherwise, seed 1), on a random source image and a box mask. The SDXL rows end with the
same img2img and inpainting rows against `StableDiffusionXLImg2ImgPipeline` and
`StableDiffusionXLInpaintPipeline` (guidance 5.0).

The SDXL rows (`--family sdxl` or `both`, the default; CPU-sized whatever `--size` says):
SDXL-shaped components scaled down: a three-level UNet (channels 32/64/128, two layers per
block, cross-attention on the lower two, transformer depths 1/2 as SDXL's 2/10 scaled) with
SDXL's added "text_time" embedding, two CLIP text encoders (64 and 128 wide, the second with a
projection for the pooled vector), a four-level VAE, Euler, guidance 5.0 with a negative prompt.

    python benchmarks/bench_pipeline.py --steps 10 --repeats 5   # writes runs/benchmarks/pipeline.md
    python benchmarks/bench_pipeline.py --steps 10 --repeats 5 --output benchmarks/results/pipeline.md
                                                                   # update the recorded result
    python benchmarks/bench_pipeline.py --size sd15 --device cuda --dtype float16 --steps 20 --output benchmarks/results/pipeline_gpu.md
                                                                   # adds peak GPU memory, xformers and CPU offload
    python benchmarks/bench_pipeline.py --family sdxl --steps 10 --repeats 9   # the SDXL rows alone
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from median_timing import median_seconds
from result_paths import add_output_argument, write_result

if TYPE_CHECKING:
    import torch


def components(size: str = "small") -> dict:
    """The shared UNet, VAE, CLIP text encoder, tokenizer and DDIM scheduler (random weights,
    seed 0, on the current default device) for `size` "small" or "sd15"."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond import clip_tokenizer

    torch.manual_seed(0)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    if size == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD-1.5's
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                vocab_size=49408,
                projection_dim=768,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        ).eval()
        return dict(
            unet=unet.eval(), vae=vae.eval(), text_encoder=text, tokenizer=clip_tokenizer(), scheduler=scheduler
        )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 128, 128),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 64, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    ).eval()
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text, tokenizer=clip_tokenizer(), scheduler=scheduler)


# SDXL's shapes by size: UNet and VAE settings over their shared ones, the width of the UNet's
# time ids, and each text encoder as (width, layers, heads, activation); the second one's width
# is the pooled vector's. "full" is diffusers' stabilityai/stable-diffusion-xl-base-1.0 configs.
SDXL_SHAPES = {
    "small": dict(
        unet=dict(
            sample_size=32,
            block_out_channels=(32, 64, 128),
            attention_head_dim=(2, 4, 8),
            transformer_layers_per_block=(1, 1, 2),
            norm_num_groups=16,
        ),
        vae=dict(block_out_channels=(16, 32, 64, 64), norm_num_groups=16),
        ids_width=32,
        encoders=((64, 3, 4, "quick_gelu"), (128, 4, 4, "quick_gelu")),
    ),
    "full": dict(
        unet=dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
        ),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024, scaling_factor=0.13025),
        ids_width=256,
        encoders=((768, 12, 12, "quick_gelu"), (1280, 32, 20, "gelu")),
    ),
}


def sdxl_components(size: str = "small") -> dict:
    """SDXL-shaped components (random weights, seed 0, on the current default device): `unet`,
    `vae`, `scheduler` (Euler, SDXL's betas), `text_encoder`, `tokenizer`, `text_encoder_2` (with
    projection), `tokenizer_2`. `size` "small": scaled down for a CPU; "full": SDXL base 1.0's
    shapes (2.6B UNet, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders, 1024 px VAE)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from clipcond import clip_tokenizer

    shapes = SDXL_SHAPES[size]
    first, second = shapes["encoders"]
    ids_width, pooled_width = shapes["ids_width"], second[0]

    def clip_config(width: int, layers: int, heads: int, activation: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            hidden_act=activation,
            max_position_embeddings=77,
            vocab_size=49408,
            projection_dim=pooled_width,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True,
        cross_attention_dim=first[0] + second[0],
        addition_embed_type="text_time",
        addition_time_embed_dim=ids_width,
        projection_class_embeddings_input_dim=6 * ids_width + pooled_width,
        **shapes["unet"],
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **shapes["vae"]
    )
    with torch.device("cpu"):  # the scheduler's tables stay on the CPU (set_timesteps reads them with numpy)
        scheduler = EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            timestep_spacing="leading",
        )
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        scheduler=scheduler,
        text_encoder=CLIPTextModel(clip_config(*first)).eval(),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(*second)).eval(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
    )


def sdxl_rows(args: argparse.Namespace) -> list[str]:
    """Seconds per image of CLIPConditionedPipeline (cache on, cache off) and
    StableDiffusionXLPipeline on the same SDXL-shaped components (`sdxl_components` of
    ``--sdxl-size``) on ``--device`` in ``--dtype``, alternating, medians of ``--repeats``; then
    img2img and inpaint, and on a GPU `enable_model_cpu_offload()`; as markdown lines with the
    ratios."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"

    def fresh_parts() -> dict:
        with device:  # random init straight on the device (a 2.6B-parameter UNet inits slowly on a CPU)
            parts = sdxl_components(args.sdxl_size)
        for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
            parts[module].to(device, dtype)
        return parts

    def make_peer(parts: dict) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(**parts, add_watermarker=False)

    parts = fresh_parts()
    sides, timed, median, peak = time_sides(make_peer(parts), dtype, 5.0, args, on_gpu)
    lines = [
        "## SDXL: CLIPConditionedPipeline / StableDiffusionXLPipeline (same components)",
        "",
        settings_line(args, parts, device, "Euler", 5.0, SHAPES_IN_WORDS["sdxl", args.sdxl_size]),
        "",
        *pipeline_table(median, peak, "StableDiffusionXLPipeline", on_gpu),
        *image_task_rows(parts, PROMPT, NEGATIVE, args.steps, on_gpu, args.repeats, family="sdxl"),
    ]
    if on_gpu:
        del sides
        for module in ("unet", "vae", "text_encoder", "text_encoder_2"):  # off the GPU: offload peaks read alone
            parts[module].to("cpu")
        lines += offload_rows(fresh_parts, make_peer, "StableDiffusionXLPipeline", timed, args.repeats)
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per image (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed images per pipeline (default 5)")
    parser.add_argument(
        "--size", choices=["small", "sd15"], default="small", help="Stable Diffusion's components (default small)"
    )
    parser.add_argument(
        "--sdxl-size",
        choices=["small", "full"],
        default="small",
        help="SDXL's components: scaled down (default) or SDXL base 1.0's shapes (for a GPU)",
    )
    parser.add_argument("--device", default="cpu", help='"cpu" (default), "cuda" or "cuda:N"')
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument(
        "--family",
        choices=["sd", "sdxl", "both"],
        default="both",
        help="which rows: Stable Diffusion's, SDXL's or both (default)",
    )
    add_output_argument(parser, "pipeline.md", "table")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")

    lines = sd_rows(args, parser) if args.family != "sdxl" else []
    if args.family != "sd":
        lines += sdxl_rows(args)
    text = "\n".join(lines)
    print(text)
    print(f"wrote {write_result(args.output, text)}")


def sd_rows(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The Stable Diffusion tables (and, on a GPU, memory, xformers and offload), as markdown lines."""
    import torch
    from diffusers import StableDiffusionPipeline

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")

    def fresh_parts() -> dict:
        with device:  # random init straight on the device (an 860M-parameter UNet inits slowly on a CPU)
            parts = components(args.size)
        for module in ("unet", "vae", "text_encoder"):
            parts[module].to(device, dtype)
        return parts

    def make_peer(parts: dict) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )

    parts = fresh_parts()
    sides, timed, median, peak = time_sides(make_peer(parts), dtype, 7.5, args, on_gpu)
    lines = [
        "# Time per image: CLIPConditionedPipeline / StableDiffusionPipeline (same components)",
        "",
        settings_line(args, parts, device, "DDIM", 7.5, SHAPES_IN_WORDS["sd", args.size]),
        "",
        *pipeline_table(median, peak, "StableDiffusionPipeline", on_gpu),
        *text_batch_rows(parts, PROMPT, NEGATIVE, median["peer"], on_gpu, max(args.repeats, 20)),
        *image_task_rows(parts, PROMPT, NEGATIVE, args.steps, on_gpu, args.repeats),
    ]
    if on_gpu:
        pipes = dict(sides)
        lines += xformers_rows(pipes["ours"], pipes["peer"], timed, args.repeats)
        for module in ("unet", "vae", "text_encoder"):  # off the GPU: the offload peaks are read alone
            parts[module].to("cpu")
        lines += offload_rows(fresh_parts, make_peer, "StableDiffusionPipeline", timed, args.repeats)
    return lines


# (family, size) -> the components in words, for the results' settings line
SHAPES_IN_WORDS = {
    ("sd", "small"): "SD-1.5-shaped UNet/VAE/CLIP scaled down",
    ("sd", "sd15"): "full Stable Diffusion 1.5 shapes (860M UNet, VAE, ViT-L/14 text encoder)",
    ("sdxl", "small"): "SDXL-shaped UNet (text_time added embedding), two CLIPs (the second with projection) and "
    "VAE, scaled down",
    ("sdxl", "full"): "SDXL base 1.0's shapes (2.6B UNet, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders, VAE)",
}


# the prompt and negative every table times
PROMPT, NEGATIVE = "a red circle to the left of a blue square", "blurry"


def time_sides(peer, dtype, guidance: float, args: argparse.Namespace, on_gpu: bool):
    """(sides, timer, median seconds by side, peak memory by side) of ours (cache on and off)
    and `peer` (`three_sides`) on PROMPT at ``--steps`` and `guidance` (`image_timer`), warmed
    and timed ``--repeats`` times (`warm_and_time`)."""
    sides = three_sides(peer, dtype)
    timed = image_timer(PROMPT, NEGATIVE, args.steps, guidance, on_gpu)
    median, peak = warm_and_time(sides, timed, args.repeats, on_gpu)
    return sides, timed, median, peak


def image_timer(prompt: str, negative: str, steps: int, guidance: float, on_gpu: bool):
    """pipe -> seconds of one text-to-image call with these settings (seed 0, numpy output),
    the GPU synchronised around it."""
    import torch

    def timed(pipe) -> float:
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def settings_line(args: argparse.Namespace, parts: dict, device, sampler: str, guidance: float, shapes: str) -> str:
    """The line under a table's title: where, dtype, image size, steps, guidance, repeats, shapes."""
    import torch

    side = parts["unet"].config.sample_size * 8  # the VAE downsamples by 8 in every size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (
        f"{where}, {args.dtype}, {side}x{side}, {args.steps} {sampler} steps, CFG {guidance} with a negative prompt, "
        f"medians of {args.repeats} alternating runs; {shapes} (random weights)"
    )


def three_sides(peer, dtype) -> list[tuple[str, object]]:
    """The sides of a table, on the peer's modules: ours as shipped (a repeated prompt comes from
    the embedding cache), ours with the cache off (every call encodes, as the peer does), the
    peer. `from_pipe` is told the dtype: it casts the shared modules to float32 otherwise."""
    from clipcond import CLIPConditionedPipeline

    ours = CLIPConditionedPipeline.from_pipe(peer, torch_dtype=dtype)
    uncached = CLIPConditionedPipeline.from_pipe(peer, torch_dtype=dtype)
    uncached.conditioner.cache = None
    if peer.unet.dtype != dtype:
        raise SystemExit(f"the pipelines run in {peer.unet.dtype}, not the asked {dtype}")
    return [("ours", ours), ("ours_uncached", uncached), ("peer", peer)]


def warm_and_time(sides: list[tuple[str, object]], timed, repeats: int, on_gpu: bool) -> tuple[dict, dict]:
    """Run each of `sides` ("ours", "ours_uncached", "peer") once to warm it up, reading its peak
    GPU memory there on a GPU; then `timed` over alternating runs. Returns (median seconds per
    side over `repeats`, peak GiB per side, empty on the CPU)."""
    import torch

    peak = {}
    for name, pipe in sides:
        pipe.set_progress_bar_config(disable=True)
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        timed(pipe)  # warm-up, and the peak memory of one image
        if on_gpu:
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
    return median_seconds(sides, timed, repeats), peak


def pipeline_table(median: dict, peak: dict, peer_name: str, on_gpu: bool) -> list[str]:
    """Markdown lines: seconds per image (and peak GPU memory) of ours with the cache on and off
    and of the peer `peer_name`, then the two ratios."""
    memory = lambda name: f" {peak[name]:.2f} |" if on_gpu else ""  # noqa: E731
    return [
        "| pipeline | seconds per image |" + (" peak GPU memory (GiB) |" if on_gpu else ""),
        "|---|---|" + ("---|" if on_gpu else ""),
        f"| CLIPConditionedPipeline (embedding cache on, the default) | {median['ours']:.3f} |" + memory("ours"),
        f"| CLIPConditionedPipeline (cache off) | {median['ours_uncached']:.3f} |" + memory("ours_uncached"),
        f"| {peer_name} | {median['peer']:.3f} |" + memory("peer"),
        "",
        f"ratio ours/peer: **{median['ours'] / median['peer']:.3f}** with the cache, "
        f"**{median['ours_uncached'] / median['peer']:.3f}** without (goal <= 1.02)",
        "",
    ]


def text_batch_rows(
    parts: dict, prompt: str, negative: str, seconds_per_image: float, on_gpu: bool, repeats: int
) -> list[str]:
    """The text encoder on prompt and negative in one batch of 2 against two batches of 1 (the
    two encodes of diffusers' `encode_prompt`, which the pipelines run), alternating, medians of
    `repeats`; as markdown lines with the difference's share of `seconds_per_image`."""
    import torch

    encoder, tokenizer = parts["text_encoder"], parts["tokenizer"]
    ids = tokenizer([prompt, negative], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = ids.input_ids.to(encoder.device)

    def timed(batches: list[torch.Tensor]) -> float:
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                encoder(batch)
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    sides = [("one batch", [ids]), ("two batches", [ids[:1], ids[1:]])]
    for _, batches in sides:
        timed(batches)  # warm-up
    median = median_seconds(sides, timed, repeats)
    extra = median["two batches"] - median["one batch"]
    return [
        f"Text encoder on prompt and negative (medians of {repeats} alternating runs):",
        "",
        "| text encoder runs | milliseconds |",
        "|---|---|",
        *(f"| {name} | {median[name] * 1e3:.2f} |" for name, _ in sides),
        "",
        f"two batches (diffusers' encode_prompt, and ours since it is bit-identical to it) cost {extra * 1e3:+.2f} ms "
        f"per uncached image: {extra / seconds_per_image:+.2%} of StableDiffusionPipeline's {seconds_per_image:.3f} s",
        "",
    ]


def image_task_rows(
    parts: dict, prompt: str, negative: str, steps: int, on_gpu: bool, repeats: int, family: str = "sd"
) -> list[str]:
    """Seconds per image of our img2img and inpaint pipelines against diffusers' on the same
    modules (alternating, medians of `repeats`), as markdown lines. `family` "sd": against
    StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline, guidance 7.5; "sdxl" (SDXL
    components): against their SDXL siblings, guidance 5.0, no watermark."""
    import torch
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )

    from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline

    if family == "sdxl":
        img2img_peer, inpaint_peer, guidance = StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, 5.0
        peer_settings = dict(add_watermarker=False)
    else:
        img2img_peer, inpaint_peer, guidance = StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, 7.5
        peer_settings = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    unet = parts["unet"]
    torch.manual_seed(1)
    with unet.device:  # random init on the UNet's device (a full-size one inits slowly on a CPU)
        inpainting_unet = UNet2DConditionModel(**{**unet.config, "in_channels": 9}).to(dtype=unet.dtype).eval()
    side = unet.config.sample_size * 8
    source = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(2)).to(unet.device)
    mask = torch.zeros(1, 1, side, side, device=unet.device)
    mask[..., side // 4 : 3 * side // 4, side // 8 : side // 2] = 1
    tasks = [
        (
            "img2img, strength 0.75",
            img2img_peer,
            CLIPConditionedImg2ImgPipeline,
            {},
            dict(strength=0.75),
        ),
        (
            "inpaint, plain UNet (mask blend)",
            inpaint_peer,
            CLIPConditionedInpaintPipeline,
            {},
            dict(mask_image=mask),
        ),
        (
            "inpaint, inpainting UNet (9 channels)",
            inpaint_peer,
            CLIPConditionedInpaintPipeline,
            dict(unet=inpainting_unet),
            dict(mask_image=mask),
        ),
    ]
    rows, ratios = [], []
    for name, peer_class, our_class, swapped, call in tasks:
        peer = peer_class(**{**parts, **swapped}, **peer_settings)
        ours = our_class.from_pipe(peer, torch_dtype=unet.dtype)  # float32 otherwise, shared modules too
        for pipe in (peer, ours):
            pipe.set_progress_bar_config(disable=True)

        def timed(pipe, call=call) -> float:
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            pipe(
                prompt,
                image=source,
                negative_prompt=negative,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
                **call,
            )
            if on_gpu:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        sides = [("ours", ours), ("peer", peer)]
        for _, pipe in sides:
            timed(pipe)  # warm-up
        median = median_seconds(sides, timed, repeats)
        ratio = median["ours"] / median["peer"]
        rows.append(f"| {name} | {median['ours']:.3f} | {median['peer']:.3f} | {ratio:.3f} |")
        ratios.append(ratio)
    peers = "their SDXL siblings" if family == "sdxl" else "diffusers' pipelines"
    return [
        f"img2img and inpainting against {peers} on the same modules (medians of {repeats} alternating "
        "runs, embedding cache on):",
        "",
        "| task | ours (s per image) | diffusers (s per image) | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        f"worst ratio ours/peer: **{max(ratios):.3f}** (goal <= 1.02)",
        "",
    ]


def offload_rows(fresh_parts, make_peer, peer_name: str, timed, repeats: int) -> list[str]:
    """Seconds per image and peak GPU memory with `enable_model_cpu_offload()` (accelerate hooks
    move each model to the GPU only while it runs), as markdown lines: ours with the cache on
    (the default), ours with it off, and the peer (`make_peer(parts)`, named `peer_name`). Each
    pipeline gets its own copy of the components (`fresh_parts()`: same seed, same weights), so
    their hooks never meet; runs alternate and the medians of `repeats` runs are compared."""
    import torch

    from clipcond import CLIPConditionedPipeline

    ours = CLIPConditionedPipeline(**fresh_parts())
    uncached = CLIPConditionedPipeline(**fresh_parts())
    uncached.conditioner.cache = None
    peer = make_peer(fresh_parts())
    sides = [
        ("CLIPConditionedPipeline (cache on)", ours),
        ("CLIPConditionedPipeline (cache off)", uncached),
        (peer_name, peer),
    ]
    for _, pipe in sides:  # all weights on the CPU before any peak is read
        device = pipe.device
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_model_cpu_offload(device=device)
    torch.cuda.empty_cache()
    peak = {}
    for name, pipe in sides:
        timed(pipe)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        timed(pipe)
        peak[name] = torch.cuda.max_memory_allocated() / 2**30
    median = median_seconds(sides, timed, repeats)
    rows = [f"| {name} | {median[name]:.3f} | {peak[name]:.2f} |" for name, _ in sides]
    peer_time = median[peer_name]
    ratios = ", ".join(
        f"{median[name] / peer_time:.3f} ({label})"
        for name, label in ((sides[0][0], "cache on"), (sides[1][0], "cache off"))
    )
    for _, pipe in sides:
        pipe.remove_all_hooks()
    return [
        f"With `enable_model_cpu_offload()` (medians of {repeats} alternating runs, each pipeline on its own "
        "copy of the components):",
        "",
        "| pipeline | seconds per image | peak GPU memory (GiB) |",
        "|---|---|---|",
        *rows,
        "",
        f"ratio ours/peer with offload: {ratios}",
        "",
    ]


def xformers_rows(ours, peer, timed, repeats: int) -> list[str]:
    """Seconds per image of ours and the peer with xformers attention on the shared UNet and VAE
    (alternating, medians), as markdown lines; none when xformers is not installed."""
    try:
        import xformers
    except ImportError:
        return []
    try:
        ours.enable_xformers_memory_efficient_attention()  # the modules are shared: the peer's too
    except (NotImplementedError, RuntimeError) as error:  # e.g. a wheel built for another torch
        reason = str(error).strip().splitlines()[0]
        return [f"xformers {xformers.__version__} is installed but its attention does not run here: {reason}", ""]
    sides = [("CLIPConditionedPipeline", ours), ("StableDiffusionPipeline", peer)]
    for _, pipe in sides:
        timed(pipe)  # warm-up
    median = median_seconds(sides, timed, repeats)
    ours.disable_xformers_memory_efficient_attention()
    ratio = median["CLIPConditionedPipeline"] / median["StableDiffusionPipeline"]
    return [
        f"With `enable_xformers_memory_efficient_attention()` (xformers {xformers.__version__}, medians of "
        f"{repeats} alternating runs):",
        "",
        "| pipeline | seconds per image |",
        "|---|---|",
        *(f"| {name} | {median[name]:.3f} |" for name, _ in sides),
        "",
        f"ratio ours/peer: {ratio:.3f}",
        "",
    ]


if __name__ == "__main__":
    main()
