"""Speed of TextConditioner against its peers, measured in one process on the CPU.

Run:  python benchmarks/bench_conditioner.py [--repeats 10] [--out benchmarks/results/conditioner.md]

Rows (ratios < 1 mean clipcond is faster):
1. `sd` recipe, CLIP ViT-L/14-sized text tower (random weights), batch 8, float32:
   `cond.encode` / `StableDiffusionPipeline.encode_prompt` (no guidance), and
   `cond.pipeline_kwargs` / `encode_prompt` with a negative prompt (guidance on).
   Both sides run under `torch.no_grad()`, as inside a pipeline call; caching is off.
2. Weighted long prompts (~150 tokens, A1111 weights vs the same weights in compel syntax),
   batch 4: `cond.encode` / `compel(prompts)` with `truncate_long_prompts=False`.
   Once with up-weights only, once with up- and down-weights.
3. Cached repeat: a repeated `cond.encode` of the same batch / the uncached call.

Timings are medians over interleaved repeats after warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch


def vit_l14_text_encoder():
    """A CLIP ViT-L/14-sized text tower (as in SD 1.x), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        projection_dim=768,
    )
    torch.manual_seed(0)
    return CLIPTextModel(config).eval()


def sd_pipeline(text_encoder, tokenizer):
    """A StableDiffusionPipeline holding the big text encoder and tiny image components
    (only the text side is timed)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=768,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def compare(ours, theirs, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of `ours` and `theirs`, interleaved so drift hits both alike."""
    for _ in range(warmup):
        ours()
        theirs()
    ours_times, their_times = [], []
    for _ in range(repeats):
        ours_times += timed(ours, 1)
        their_times += timed(theirs, 1)
    return statistics.median(ours_times), statistics.median(their_times)


PLAIN_PROMPTS = [
    "a photograph of an astronaut riding a horse on the moon",
    "a red circle to the left of a blue square",
    "an oil painting of a lighthouse at dusk, dramatic clouds",
    "two cats sleeping on a sofa next to a window",
    "a bowl of ramen with a soft boiled egg, studio lighting",
    "a watercolor map of an imaginary island with mountains",
    "a futuristic city skyline at night with flying cars",
    "a close-up portrait of an old fisherman, detailed wrinkles",
]

LONG_BODY = (
    "a {0} lighthouse standing on a rocky cliff above a stormy sea at dusk, {1} waves crashing against "
    "the rocks, seagulls circling the lantern room, a small fishing boat with a red sail fighting the "
    "swell, heavy clouds lit from below by the last orange light of the sun, rain streaks in the distance, "
    "a winding path with wooden fences leading up to the keeper's cottage with a warm yellow window, "
    "a wet stone wall, moss and lichen on the rocks, long exposure photograph, cinematic composition, "
    "highly detailed, {2}, {3} in the foreground"
)


def weighted_prompts(style: str, down: bool) -> list[str]:
    """Four ~150-token prompts with the same weights in A1111 (`ours`) or compel syntax."""

    def weight(text: str, value: float) -> str:
        if style == "a1111":
            return f"({text}:{value})"
        return f"({text}){value}"

    low = 0.7 if down else 1.2
    prompts = []
    for index in range(4):
        prompts.append(
            LONG_BODY.format(
                weight("white", 1.3),
                weight("enormous", 1.2 + 0.1 * index),
                weight("muted colors", low),
                weight("wild flowers", 1.4),
            )
        )
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/conditioner.md")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    from compel import Compel

    from clipcond import TextConditioner, clip_tokenizer

    tokenizer = clip_tokenizer()
    text_encoder = vit_l14_text_encoder()
    pipe = sd_pipeline(text_encoder, tokenizer)
    uncached = TextConditioner.from_pipeline(pipe, cache_size=0)
    cached = TextConditioner.from_pipeline(pipe)
    negatives = ["blurry, low quality"] * len(PLAIN_PROMPTS)
    rows = []

    def diffusers_encode():
        with torch.no_grad():
            pipe.encode_prompt(PLAIN_PROMPTS, "cpu", 1, False)

    def diffusers_encode_cfg():
        with torch.no_grad():
            pipe.encode_prompt(PLAIN_PROMPTS, "cpu", 1, True, negative_prompt=negatives)

    ours, theirs = compare(lambda: uncached.encode(PLAIN_PROMPTS), diffusers_encode, args.repeats)
    rows.append(("sd encode, ViT-L/14 text, batch 8 / diffusers encode_prompt", ours, theirs, "<= 1.00"))
    ours, theirs = compare(
        lambda: uncached.pipeline_kwargs(PLAIN_PROMPTS, negatives), diffusers_encode_cfg, args.repeats
    )
    rows.append(("sd prompt + negative, batch 8 / diffusers encode_prompt (CFG)", ours, theirs, "<= 1.00"))

    compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=False, device="cpu")

    def compel_encode(prompts):
        with torch.no_grad():
            embeds = compel(prompts)
        return embeds

    for down in (False, True):
        ours_prompts = weighted_prompts("a1111", down)
        their_prompts = weighted_prompts("compel", down)
        length = len(tokenizer(ours_prompts[0], add_special_tokens=False).input_ids)
        label = "up+down weights" if down else "up-weights only"
        ours, theirs = compare(
            lambda ours_prompts=ours_prompts: uncached.encode(ours_prompts),
            lambda their_prompts=their_prompts: compel_encode(their_prompts),
            args.repeats,
        )
        rows.append((f"weighted long prompts (~{length} tokens, {label}), batch 4 / compel", ours, theirs, "<= 0.80"))

    cold = statistics.median(timed(lambda: (cached.cache.clear_memory(), cached.encode(PLAIN_PROMPTS)), args.repeats))
    cached.encode(PLAIN_PROMPTS)
    warm = statistics.median(timed(lambda: cached.encode(PLAIN_PROMPTS), args.repeats * 10))
    rows.append(("cached repeat, batch 8 / uncached encode", warm, cold, "<= 0.01"))

    lines = [
        "# TextConditioner benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Command: `python benchmarks/bench_conditioner.py --repeats {args.repeats}`.",
        "",
        "| measurement | clipcond (ms) | peer (ms) | ratio | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for name, ours, theirs, goal in rows:
        lines.append(f"| {name} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | {ours / theirs:.3f} | {goal} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
