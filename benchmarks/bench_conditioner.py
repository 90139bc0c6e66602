"""Speed of TextConditioner against its peers, measured in one process on the CPU.

    python benchmarks/bench_conditioner.py --repeats 20        # writes runs/benchmarks/conditioner.md
    python benchmarks/bench_conditioner.py --rows emphasis     # only the emphasis-mode rows
    python benchmarks/bench_conditioner.py --repeats 20 --output benchmarks/results/conditioner.md
                                                               # update the recorded result

Rows (ratios < 1 mean clipcond is faster):
1. `sd` recipe, CLIP ViT-L/14-sized text tower (random weights), batch 8, float32:
   `cond.encode` / `StableDiffusionPipeline.encode_prompt` (no guidance), and
   `cond.pipeline_kwargs` / `encode_prompt` with a negative prompt (guidance on).
   Both sides run under `torch.no_grad()`, as inside a pipeline call; caching is off.
   Both return the same embeddings (the `outputs` column measures it).
2. Weighted long prompts (~150 tokens, A1111 weights vs the same weights in compel syntax),
   batch 4: `cond.encode` / `compel(prompts)` with `truncate_long_prompts=False`.
   Once with up-weights only, once with up- and down-weights. These outputs differ by design:
   clipcond multiplies each token's embedding by its weight; compel moves a token's embedding
   away from the empty prompt's by its weight and, per down-weighted fragment, encodes the
   prompt again without it and blends the two.
3. Emphasis modes (`TextConditioner(emphasis=...)`) on the weighted long prompts, each against
   the default "multiply" on the same prompts: "a1111", "comfy" and "compel" with up-weights,
   "compel" with down-weights too (it encodes the prompt once more per down-weighted fragment,
   as compel does).
4. `emphasis="compel"` against compel itself on short weighted prompts (one window), where both
   compute the same thing: the `outputs` column says how closely they agree.
5. Cached repeat: a repeated `cond.encode` of the same batch / the uncached call.

Each row: two warm-up calls per side, then medians of `--repeats` rounds whose order rotates
(`median_timing.median_seconds`), so neither side always runs first.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from median_timing import median_seconds
from result_paths import default_output, publish

if TYPE_CHECKING:
    import torch


def vit_l14_text_encoder():
    """A CLIP ViT-L/14-sized text tower (as in SD 1.x), random weights."""
    import torch
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


def seconds(function) -> float:
    """Wall time of one call of `function`."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def compare(ours, theirs, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of `ours` and `theirs` over `repeats` rounds whose order rotates."""
    for _ in range(warmup):
        ours()
        theirs()
    median = median_seconds([("ours", ours), ("theirs", theirs)], seconds, repeats)
    return median["ours"], median["theirs"]


def outputs_note(ours: torch.Tensor, theirs: torch.Tensor, by_design: str = "") -> str:
    """How the two sides' embeddings compare: equal, or how far apart (and why, when known)."""
    import torch

    if ours.shape != theirs.shape:
        gap = f"shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    else:
        gap = f"max abs diff {float((ours - theirs).abs().max()):.1e}"
    if by_design:
        return f"differ by design ({by_design}): {gap}"
    return f"{'equal' if ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5) else 'DIFFER'}: {gap}"


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


COMPEL_FORMULA = "compel's weighting formula"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per row (default 10)")
    parser.add_argument(
        "--output",
        "--out",
        type=Path,
        default=default_output("conditioner.md"),
        help="the markdown table (default: runs/benchmarks/conditioner.md; "
        "give benchmarks/results/conditioner.md to update the recorded result)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ROW_GROUPS,
        default=list(ROW_GROUPS),
        help="which groups of rows to run (default: all): " + ", ".join(ROW_GROUPS),
    )
    return parser


# the groups of rows, in the order of the module docstring
ROW_GROUPS = ("diffusers", "compel", "emphasis", "compel-same", "cache")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    import torch
    from compel import Compel

    from clipcond import TextConditioner, clip_tokenizer

    tokenizer = clip_tokenizer()
    text_encoder = vit_l14_text_encoder()
    pipe = sd_pipeline(text_encoder, tokenizer)
    uncached = TextConditioner.from_pipeline(pipe, cache_size=0)
    cached = TextConditioner.from_pipeline(pipe)
    negatives = ["blurry, low quality"] * len(PLAIN_PROMPTS)
    rows = []

    @torch.no_grad()
    def diffusers_encode():
        return pipe.encode_prompt(PLAIN_PROMPTS, "cpu", 1, False)[0]

    @torch.no_grad()
    def diffusers_encode_cfg():
        return torch.cat(pipe.encode_prompt(PLAIN_PROMPTS, "cpu", 1, True, negative_prompt=negatives))

    def ours_cfg():
        kwargs = uncached.pipeline_kwargs(PLAIN_PROMPTS, negatives)
        return torch.cat([kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]])

    if "diffusers" in args.rows:
        ours, theirs = compare(lambda: uncached.encode(PLAIN_PROMPTS), diffusers_encode, args.repeats)
        note = outputs_note(uncached.encode(PLAIN_PROMPTS).tokens, diffusers_encode())
        rows.append(("sd encode, ViT-L/14 text, batch 8 / diffusers encode_prompt", ours, theirs, "<= 1.00", note))
        ours, theirs = compare(ours_cfg, diffusers_encode_cfg, args.repeats)
        note = outputs_note(ours_cfg(), diffusers_encode_cfg())
        rows.append(("sd prompt + negative, batch 8 / diffusers encode_prompt (CFG)", ours, theirs, "<= 1.00", note))

    compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=False, device="cpu")

    @torch.no_grad()
    def compel_encode(prompts):
        return compel(prompts)

    for down in (False, True) if "compel" in args.rows else ():
        ours_prompts = weighted_prompts("a1111", down)
        their_prompts = weighted_prompts("compel", down)
        length = len(tokenizer(ours_prompts[0], add_special_tokens=False).input_ids)
        label = "up+down weights" if down else "up-weights only"
        ours, theirs = compare(
            lambda ours_prompts=ours_prompts: uncached.encode(ours_prompts),
            lambda their_prompts=their_prompts: compel_encode(their_prompts),
            args.repeats,
        )
        why = COMPEL_FORMULA + (", extra passes per down-weight" if down else "")
        note = outputs_note(uncached.encode(ours_prompts).tokens, compel_encode(their_prompts), why)
        name = f"weighted long prompts (~{length} tokens, {label}), batch 4 / compel"
        rows.append((name, ours, theirs, "<= 0.80", note))

    up_prompts, down_prompts = weighted_prompts("a1111", False), weighted_prompts("a1111", True)
    emphasis_rows = (
        ("a1111", up_prompts, "up-weights"),
        ("comfy", up_prompts, "up-weights"),
        ("compel", up_prompts, "up-weights"),
        ("compel", down_prompts, "up+down weights: one more pass per down-weighted fragment"),
    )
    for mode, prompts, label in emphasis_rows if "emphasis" in args.rows else ():
        moded = TextConditioner.from_pipeline(pipe, cache_size=0, emphasis=mode)
        ours, theirs = compare(
            lambda moded=moded, prompts=prompts: moded.encode(prompts),
            lambda prompts=prompts: uncached.encode(prompts),
            args.repeats,
        )
        note = outputs_note(moded.encode(prompts).tokens, uncached.encode(prompts).tokens, f"{mode}'s formula")
        goal = "<= 1.10" if "down" not in label else "-"
        rows.append(
            (f'emphasis="{mode}", long prompts ({label}), batch 4 / emphasis="multiply"', ours, theirs, goal, note)
        )

    short_ours = [f"a ({word}:1.3) fox in the (snow:0.7), oil painting" for word in ("red", "white", "tiny", "old")]
    short_fragments = [
        ["a ", word, " fox in the ", "snow", ", oil painting"] for word in ("red", "white", "tiny", "old")
    ]
    short_weights = [[1.0, 1.3, 1.0, 0.7, 1.0]] * 4
    same_as_compel = TextConditioner.from_pipeline(pipe, cache_size=0, emphasis="compel")
    provider = Compel(tokenizer=tokenizer, text_encoder=text_encoder, device="cpu").conditioning_provider

    @torch.no_grad()
    def compel_fragments():
        return torch.cat(
            [
                provider.get_embeddings_for_weighted_prompt_fragments([fragments], [weights])
                for fragments, weights in zip(short_fragments, short_weights)
            ]
        )

    if "compel-same" in args.rows:
        ours, theirs = compare(lambda: same_as_compel.encode(short_ours), compel_fragments, args.repeats)
        note = outputs_note(same_as_compel.encode(short_ours).tokens, compel_fragments())
        name = 'emphasis="compel", short weighted prompts, batch 4 / compel (the same computation)'
        rows.append((name, ours, theirs, "<= 1.00", note))

    if "cache" in args.rows:
        cached.encode(PLAIN_PROMPTS)
        warm, cold = compare(
            lambda: cached.encode(PLAIN_PROMPTS),
            lambda: (cached.cache.clear_memory(), cached.encode(PLAIN_PROMPTS)),
            args.repeats,
        )
        note = outputs_note(cached.encode(PLAIN_PROMPTS).tokens, uncached.encode(PLAIN_PROMPTS).tokens)
        rows.append(("cached repeat, batch 8 / uncached encode", warm, cold, "<= 0.01", note))

    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# TextConditioner benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Command: `python benchmarks/bench_conditioner.py {command}`. "
        f"Medians of {args.repeats} rounds per row, the order of the two sides rotating each round.",
        "",
        "| measurement | clipcond (ms) | peer (ms) | ratio | goal | outputs |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, ours, theirs, goal, note in rows:
        lines.append(f"| {name} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | {ours / theirs:.3f} | {goal} | {note} |")
    lines += [
        "",
        "The compel rows time two different computations: clipcond multiplies each token's embedding by its "
        "weight; compel moves it away from the empty prompt's embedding by its weight and encodes the prompt "
        "once more per down-weighted fragment (without it), blending the results. They are the same prompts "
        "and weights, not the same output.",
    ]
    publish(args.output, lines)


if __name__ == "__main__":
    main()
