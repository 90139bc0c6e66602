"""How far clipcond's numbers are from diffusers' (and compel's) where the docs say they are not bit-equal.

On the tests' tiny components (`tests/tiny_pipelines.py`, seeded, nothing downloaded), each
figure with the settings of the test that shows the difference exists:

- `clip_skip` with `force_zeros_for_empty_prompt=False`: clipcond skips layers for the `""`
  that a missing negative reads, diffusers does not (docs/pipeline.md). Largest absolute
  difference of the `output_type="np"` images (values in [0, 1]) from diffusers', prompt
  "a red circle", `clip_skip=1`, seed 0: the base at 2 steps
  (tests/test_sdxl_pipeline.py::test_clip_skip_skips_layers_for_the_empty_negative_of_force_zeros_false),
  the refiner's img2img and inpainting at 4 steps on the tests' random 32x32 source and box
  mask (tests/test_sdxl_img2img_inpaint.py::test_a_refiner_without_zeros_skips_layers_for_its_empty_negative).
- SDXL's pooled projection by number of rows (docs/pipeline.md): `text_encoder_2`'s
  `text_projection` applied to the EOS states of 8 prompts, in products of 1, 2 and 3 rows
  against the 4-row product over the same first rows (windows starting at rows 0 to 4).
- An unmerged LoRA in the text encoders (docs/conditioning.md): a random rank-4 LoRA (peft,
  as tests/test_call_options.py injects it) in every CLIP's attention; diffusers'
  `encode_prompt` of one prompt repeated 4 times, each row against the first, and clipcond's
  `encode` of the same 4 prompts (it encodes the prompt once) against diffusers' rows.
- compel on a long prompt (docs/conditioning.md): `emphasis="compel"` against compel's own
  `EmbeddingsProvider` (as tests/test_emphasis.py calls it, `truncate=False`) on
  `COMPEL_PROMPT` (98 tokens, no weights: two windows), with compel's default `split_long_text_mode`
  (sentences, first window's EOS state copied) and with `SplitLongTextMode.WORDS`.

    OMP_NUM_THREADS=1 python benchmarks/peer_differences.py --output benchmarks/results/peer_differences.md

About 1 minute on one core. The rounding figures depend on the CPU's BLAS and the thread count,
which the output records.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_paths import REPO, default_output, write_result  # noqa: E402

PROMPT = "a red circle"
LORA_PROMPT = "a red circle above a blue square"  # tests/test_call_options.py's PROMPT
COMPEL_PROMPT = ", ".join(["a small red circle next to a large blue square"] * 9)
POOLED_PROMPTS = [
    "a red circle",
    "a blue square to the left of a green triangle",
    "blurry",
    "",
    "a photo of a cat",
    "oil painting",
    "x",
    "two yellow squares",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output("peer_differences.md"),
        help="the Markdown result (default: runs/benchmarks/peer_differences.md)",
    )
    return parser


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clip_skip_image_differences() -> dict[str, float]:
    """Largest |ours - diffusers'| of the np images, per pipeline (base, refiner img2img, inpaint)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
    from tiny_pipelines import build_sdxl, sdxl_refiner_components

    from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline

    def largest(peer, ours_class, steps: int, **inputs) -> float:
        ours = _quiet(ours_class.from_pipe(peer))
        images = [
            pipe(
                PROMPT,
                clip_skip=1,
                num_inference_steps=steps,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
                **inputs,
            ).images
            for pipe in (ours, peer)
        ]
        return float(np.abs(images[0] - images[1]).max())

    base = _quiet(StableDiffusionXLPipeline(**{**build_sdxl().components, "force_zeros_for_empty_prompt": False}))
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # the tests' source_image()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1  # the tests' box_mask()
    parts = sdxl_refiner_components()
    config = dict(add_watermarker=False, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    img2img = _quiet(StableDiffusionXLImg2ImgPipeline(**parts, **config))
    inpaint = _quiet(StableDiffusionXLInpaintPipeline(**parts, **config))
    return {
        "base, 2 steps": largest(base, CLIPConditionedPipeline, 2),
        "refiner img2img, 4 steps": largest(img2img, CLIPConditionedImg2ImgPipeline, 4, image=source),
        "refiner inpainting, 4 steps": largest(
            inpaint, CLIPConditionedInpaintPipeline, 4, image=source, mask_image=mask
        ),
    }


def pooled_projection_row_difference() -> float:
    """Largest difference of a 1-, 2- or 3-row `text_projection` product's rows from the 4-row one's."""
    import torch
    from tiny_pipelines import build_sdxl

    pipe = build_sdxl()
    ids = pipe.tokenizer_2(
        POOLED_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    projection = pipe.text_encoder_2.text_projection
    worst = 0.0
    with torch.no_grad():
        eos = pipe.text_encoder_2.text_model(ids).pooler_output  # (8, width)
        for start in range(len(POOLED_PROMPTS) - 3):
            four = projection(eos[start : start + 4])
            for rows in (1, 2, 3):
                worst = max(worst, (projection(eos[start : start + rows]) - four[:rows]).abs().max().item())
    return worst


def unmerged_lora_differences() -> dict[str, tuple[float, float]]:
    """Per family (SD, SDXL): (largest difference between diffusers' rows of one prompt repeated
    4 times, largest difference of clipcond's tokens from diffusers' rows)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from tiny_pipelines import build_sd, build_sdxl

    from clipcond import TextConditioner

    results = {}
    for family, build in (("SD", build_sd), ("SDXL", build_sdxl)):
        pipe = _quiet(build())
        for seed, name in enumerate(("text_encoder", "text_encoder_2")):
            if getattr(pipe, name, None) is not None:
                torch.manual_seed(seed)
                targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
                config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
                inject_adapter_in_model(config, getattr(pipe, name))
        prompts = [LORA_PROMPT] * 4
        with torch.no_grad():
            peer = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
            ours = TextConditioner.from_pipeline(pipe).encode(prompts).tokens
        rows = peer[0]  # (4, 77, width)
        results[family] = ((rows - rows[:1]).abs().max().item(), (ours - rows).abs().max().item())
    return results


def compel_long_prompt_differences() -> dict[str, dict[str, float]]:
    """Per family (SD, SDXL): largest |clipcond's compel tokens - compel's| per split mode."""
    import torch
    from compel.embeddings_provider import (
        DownweightMode,
        EmbeddingsProvider,
        ReturnedEmbeddingsType,
        SplitLongTextMode,
    )
    from tiny_pipelines import build_sd, build_sdxl

    from clipcond import TextConditioner

    modes = {
        "compel's default (sentences, first EOS copied)": SplitLongTextMode.SENTENCES
        | SplitLongTextMode.COPY_FIRST_CLS_TOKEN,
        "`SplitLongTextMode.WORDS`": SplitLongTextMode.WORDS,
    }
    results: dict[str, dict[str, float]] = {}
    for family, build, layer in (
        ("SD", build_sd, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED),
        ("SDXL", build_sdxl, ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED),
    ):
        pipe = build()
        encoders = [(pipe.tokenizer, pipe.text_encoder)]
        if family == "SDXL":
            encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
        results[family] = {}
        with torch.no_grad():
            ours = TextConditioner.from_pipeline(pipe, emphasis="compel", cache_size=0).encode(COMPEL_PROMPT).tokens
            for name, mode in modes.items():
                providers = [
                    EmbeddingsProvider(
                        tokenizer=tokenizer,
                        text_encoder=encoder,
                        returned_embeddings_type=layer,
                        downweight_mode=DownweightMode.MASK,
                        truncate=False,
                        split_long_text_mode=mode,
                    )
                    for tokenizer, encoder in encoders
                ]
                theirs = torch.cat(
                    [p.get_embeddings_for_weighted_prompt_fragments([[COMPEL_PROMPT]], [[1.0]]) for p in providers],
                    dim=-1,
                )  # (1, 2 * 77, width)
                if theirs.shape != ours.shape:
                    raise RuntimeError(f"compel gave {tuple(theirs.shape)}, clipcond {tuple(ours.shape)}")
                results[family][name] = (ours - theirs).abs().max().item()
    return results


def report(
    clip_skip: dict[str, float],
    pooled: float,
    lora: dict[str, tuple[float, float]],
    compel: dict[str, dict[str, float]],
) -> str:
    """The Markdown result."""
    import torch

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Differences from diffusers and compel that the docs quote (tiny components of the tests)",
        "",
        f"{when}; {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s). Command: `OMP_NUM_THREADS=1 python benchmarks/peer_differences.py "
        "--output benchmarks/results/peer_differences.md` (settings in the script's docstring).",
        "",
        "## `clip_skip` under `force_zeros_for_empty_prompt=False` (by design)",
        "",
        "| pipeline | largest image difference from diffusers' |",
        "|---|---:|",
        *(f"| {name} | {value:.4f} |" for name, value in clip_skip.items()),
        "",
        "## SDXL's pooled projection by number of rows (rounding)",
        "",
        f"Largest difference of a 1-, 2- or 3-row product's rows from the 4-row one's: {pooled:.1e}",
        "",
        "## An unmerged LoRA in the text encoders (rounding, where the BLAS varies by batch)",
        "",
        "| family | diffusers' rows of one prompt in a batch of 4 | clipcond's tokens against them |",
        "|---|---:|---:|",
        *(f"| {family} | {rows:.1e} | {ours:.1e} |" for family, (rows, ours) in lora.items()),
        "",
        "## compel on a long prompt (by design: other window edges)",
        "",
        f"Prompt: `{COMPEL_PROMPT}`",
        "",
        '| family | compel\'s split mode | largest token difference from `emphasis="compel"` |',
        "|---|---|---:|",
        *(
            f"| {family} | {mode} | {f'{value:.2f}' if value else '0 (equal)'} |"
            for family, by_mode in compel.items()
            for mode, value in by_mode.items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))  # tiny_pipelines: the tests' seeded components
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    text = report(
        clip_skip_image_differences(),
        pooled_projection_row_difference(),
        unmerged_lora_differences(),
        compel_long_prompt_differences(),
    )
    print(text)
    print(f"wrote {write_result(args.output, text)}")


if __name__ == "__main__":
    main()
