"""What prompt editing and AND cost in CLIPConditionedPipeline, as ratios measured in one run.

    python benchmarks/bench_prompt_language.py --steps 20 --repeats 5   # writes runs/benchmarks/prompt_language.md
    python benchmarks/bench_prompt_language.py --steps 20 --repeats 5 --output benchmarks/results/prompt_language.md
                                                                        # update the recorded result

On the SD-1.5-shaped components scaled down for a CPU (`bench_pipeline.components("small")`,
256x256, DDIM, guidance 7.5, random weights), one image per call:

1. a prompt edited in three segments (``a [red:[green:blue:0.66]:0.33] fox``) / the same call with a
   plain prompt: the two extra texts are encoded in the same batch as the first, then the
   context changes twice; goal <= 1.05;
2. an AND of two prompts (the UNet runs on 3 rows: unconditional + 2 parts) / the same number
   of steps of a hand-written loop that runs the UNet on a 3-row batch and nothing else (the
   cost of the larger batch alone); goal <= 1.05. The plain call (2 rows) is listed too.

Calls alternate and rotate (`median_timing.median_seconds`); the embedding cache is on, as by
default, so repeated calls encode nothing (the first, warm-up, call of each side encodes).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

from median_timing import median_seconds
from result_paths import add_output_argument, publish, ratio_table

EDITED = "a [red:[green:blue:0.66]:0.33] fox in the snow"
PLAIN = "a red fox in the snow"
AND = "a red fox in the snow AND a tall pine tree :0.7"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (default 5)")
    add_output_argument(parser, "prompt_language.md", "report")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 3 or args.repeats < 1:
        parser.error(f"--steps must be >= 3 and --repeats >= 1, got {args.steps} and {args.repeats}")

    import torch
    from bench_pipeline import components

    from clipcond import CLIPConditionedPipeline

    pipe = CLIPConditionedPipeline(**components("small"))
    pipe.set_progress_bar_config(disable=True)
    size = 256

    def call(prompt: str):
        def run():
            with torch.no_grad():
                pipe(
                    prompt,
                    negative_prompt="blurry",
                    num_inference_steps=args.steps,
                    height=size,
                    width=size,
                    generator=torch.Generator().manual_seed(0),
                    output_type="latent",
                )

        return run

    @torch.no_grad()
    def three_row_loop():
        """The UNet on a 3-row batch at every step, the scheduler step, nothing else."""
        pipe.scheduler.set_timesteps(args.steps)
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, size // factor, size // factor)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        context = pipe.conditioner.encode(["", "a red fox in the snow", " a tall pine tree"]).tokens
        for t in pipe.scheduler.timesteps:
            noise = pipe.unet(torch.cat([latents] * 3), t, encoder_hidden_states=context).sample
            uncond = noise[:1]
            combined = uncond + (noise[1:2] - uncond) * 7.5 + (noise[2:3] - uncond) * (0.7 * 7.5)
            latents = pipe.scheduler.step(combined, t, latents).prev_sample

    sides = {"edited": call(EDITED), "plain": call(PLAIN), "and": call(AND), "three rows": three_row_loop}
    for run in sides.values():  # warm-up: each side encodes its texts once
        run()

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    seconds = median_seconds(list(sides.items()), timed, args.repeats)
    rows = [
        ("3-segment edited prompt / plain prompt", seconds["edited"], seconds["plain"], "<= 1.05"),
        (
            "AND of two prompts / a loop running the UNet on the same 3-row batch",
            seconds["and"],
            seconds["three rows"],
            "<= 1.05",
        ),
        ("AND of two prompts (3 UNet rows) / plain prompt (2 rows), for scale", seconds["and"], seconds["plain"], "-"),
    ]
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Prompt editing and AND in CLIPConditionedPipeline",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Command: `python benchmarks/bench_prompt_language.py {command}`. "
        f"{args.steps} DDIM steps at {size}x{size}, medians of {args.repeats} rotating rounds.",
        "",
        *ratio_table(rows),
    ]
    publish(args.output, lines)


if __name__ == "__main__":
    main()
