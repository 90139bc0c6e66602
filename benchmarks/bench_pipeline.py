"""Time per image: CLIPConditionedPipeline / StableDiffusionPipeline on the same components.

SD-1.5-shaped components scaled down to run on a CPU (random weights): UNet with four
levels (channels 32/64/128/128, two layers per block, cross-attention on the first three),
a four-level VAE, a 4-layer CLIP text encoder 128 wide; DDIM, classifier-free guidance 7.5.
Both pipelines share the very same module objects; runs alternate, medians are compared.

    python benchmarks/bench_pipeline.py --steps 10 --repeats 5   # writes benchmarks/results/pipeline.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def components() -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 128, 128), cross_attention_dim=128, attention_head_dim=8, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                        num_attention_heads=4, max_position_embeddings=77, vocab_size=49408,
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False)  # fmt: skip
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text, tokenizer=clip_tokenizer(), scheduler=scheduler)


def main() -> None:
    from diffusers import StableDiffusionPipeline

    from clipcond import CLIPConditionedPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "pipeline.md"))
    args = parser.parse_args()
    parts = components()
    ours = CLIPConditionedPipeline(**parts)
    peer = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for pipe in (ours, peer):
        pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a red circle to the left of a blue square", "blurry"

    def timed(pipe) -> float:
        start = time.perf_counter()
        pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
        return time.perf_counter() - start

    # ours twice: as shipped (the repeated prompt comes from the embedding cache) and with the
    # cache turned off (every call encodes, as the peer does)
    uncached = CLIPConditionedPipeline(**parts)
    uncached.set_progress_bar_config(disable=True)
    uncached.conditioner.cache = None
    sides = [("ours", ours), ("ours_uncached", uncached), ("peer", peer)]
    for _, pipe in sides:
        timed(pipe)  # warm-up
    times = {name: [] for name, _ in sides}
    for repeat in range(args.repeats):
        for name, pipe in sides if repeat % 2 == 0 else sides[::-1]:
            times[name].append(timed(pipe))
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["ours"] / median["peer"]
    ratio_uncached = median["ours_uncached"] / median["peer"]
    lines = [
        "# Time per image: CLIPConditionedPipeline / StableDiffusionPipeline (same components)",
        "",
        f"CPU, float32, 256x256, {args.steps} DDIM steps, CFG 7.5 with a negative prompt, medians of {args.repeats} "
        "alternating runs; SD-1.5-shaped UNet/VAE/CLIP scaled down (random weights)",
        "",
        "| pipeline | seconds per image |",
        "|---|---|",
        f"| CLIPConditionedPipeline (embedding cache on, the default) | {median['ours']:.3f} |",
        f"| CLIPConditionedPipeline (cache off) | {median['ours_uncached']:.3f} |",
        f"| StableDiffusionPipeline | {median['peer']:.3f} |",
        "",
        f"ratio ours/peer: **{ratio:.3f}** with the cache, **{ratio_uncached:.3f}** without (goal <= 1.02)",
        "",
    ]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
