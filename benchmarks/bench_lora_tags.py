"""A1111's LoRA tags: time per image of a prompt with ``<lora:style:0.7>`` in
`CLIPConditionedPipeline` against diffusers' StableDiffusionPipeline with `set_adapters` called
before each image, as ratios measured in one run.

    python benchmarks/bench_lora_tags.py --steps 10 --repeats 5   # writes runs/benchmarks/lora_tags.md
    python benchmarks/bench_lora_tags.py --steps 10 --repeats 5 --output benchmarks/results/lora_tags.md
                                                                   # update the recorded result

The components are `bench_pipeline.py`'s small SD-1.5-shaped ones (random weights) with two
random LoRAs (rank 4 on the UNet's attention and the text encoder's q/v projections) loaded
into each pipeline as "style" and "detail". Sides, on the CPU, rotating rounds:

- ours, tagged: the prompt carries the tag; the call activates "style" at 0.7 and puts the
  pipeline's LoRA state back afterwards (`clipcond.pipelines.lora_tags`);
- ours, set_adapters: ``set_adapters("style", 0.7)`` and the prompt without the tag (what a
  diffusers user writes), each image;
- diffusers: StableDiffusionPipeline, ``set_adapters("style", 0.7)`` and the prompt without the
  tag, each image (its own copies of the components and LoRAs).

Goal: tagged / diffusers <= 1.02 (the tag's bookkeeping is small beside an image). The images
of the tagged prompt equal diffusers' bit for bit (`tests/test_lora_tags.py`); here only time
is measured.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import components
from median_timing import median_seconds
from result_paths import add_output_argument, publish, ratio_table, run_line

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
NEGATIVE = "blurry, low quality"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per image (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (default 5)")
    add_output_argument(parser, "lora_tags.md", "report")
    return parser


def save_random_lora(folder: Path, seed: int) -> Path:
    """A random rank-4 LoRA for the small components' UNet and text encoder, saved the diffusers way."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    parts = components("small")
    torch.manual_seed(seed)
    parts["unet"].add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    encoder = parts["text_encoder"]
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), encoder
    )
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(parts["unet"])),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder)),
    )
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error(f"--repeats and --steps must be >= 1, got {args.repeats} and {args.steps}")

    import torch
    from diffusers import StableDiffusionPipeline

    from clipcond import CLIPConditionedPipeline

    def pipeline(parts: dict) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )

    with tempfile.TemporaryDirectory() as folder:
        loras = {name: save_random_lora(Path(folder) / name, seed) for name, seed in (("style", 1), ("detail", 2))}
        peer = pipeline(components("small"))
        ours = CLIPConditionedPipeline.from_pipe(pipeline(components("small")))
        for pipe in (peer, ours):
            pipe.set_progress_bar_config(disable=True)
            for name, lora in loras.items():
                pipe.load_lora_weights(lora, adapter_name=name)

    def image(pipe, prompt: str, set_first: bool) -> float:
        start = time.perf_counter()
        if set_first:
            pipe.set_adapters("style", 0.7)
        pipe(
            prompt,
            negative_prompt=NEGATIVE,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return time.perf_counter() - start

    sides = [
        ("tagged", lambda: image(ours, f"{PROMPT} <lora:style:0.7>", set_first=False)),
        ("ours_set", lambda: image(ours, PROMPT, set_first=True)),
        ("diffusers", lambda: image(peer, PROMPT, set_first=True)),
    ]
    for _, run in sides:
        run()  # warm-up
    seconds = median_seconds(sides, lambda run: run(), args.repeats)
    rows = [
        (
            "per image, the prompt tagged / diffusers with set_adapters",
            seconds["tagged"],
            seconds["diffusers"],
            "<= 1.02",
        ),
        ("per image, ours with set_adapters / diffusers", seconds["ours_set"], seconds["diffusers"], "<= 1.02"),
        ("per image, the prompt tagged / ours with set_adapters", seconds["tagged"], seconds["ours_set"], "<= 1.02"),
    ]
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    side = 8 * components("small")["unet"].config.sample_size
    lines = [
        "# A1111's LoRA tags: time per image",
        "",
        f"{run_line('bench_lora_tags.py', command)} torch {torch.__version__}. CPU, float32, {side}x{side}, "
        f"{args.steps} DDIM "
        f"steps, CFG 7.5 with a negative prompt, `bench_pipeline.py`'s small SD components with two random rank-4 "
        f"LoRAs; medians of {args.repeats} rotating rounds.",
        "",
        *ratio_table(rows, peer="reference", digits=3, ratio_digits=3),
    ]
    publish(args.output, lines)


if __name__ == "__main__":
    main()
