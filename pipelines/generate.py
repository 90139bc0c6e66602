"""``clipcond generate``: prompt -> PNG with a saved pipeline.

`--model` takes a folder (or hub id) holding a saved `CLIPConditionedPipeline`, or any diffusers
Stable Diffusion pipeline, which is then driven through clipcond's conditioner
(`CLIPConditionedPipeline.from_pipe`). With `--n` above 1 the images are written as one grid.

A pipeline folder may hold `vocabulary.txt`, the words its training captions used (one per
line; the bundled shapes model has one): a prompt with other words, or an empty prompt, is
then named in a warning before sampling, since such a model draws shapes whatever it is asked.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

# The tiny shapes model shipped as package data (found through importlib, so the same in a
# wheel install and in an editable checkout, where clipcond.pipelines lives outside clipcond/).
BUNDLED_MODEL = Path(str(importlib.resources.files("clipcond") / "data" / "shapes-model"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `generate`."""
    parser.add_argument("prompt", help='the prompt, e.g. "a red circle to the left of a blue square"')
    parser.add_argument("-o", "--output", default="out.png", help="PNG to write (a grid when --n > 1)")
    parser.add_argument("--model", help="saved CLIPConditionedPipeline or diffusers SD pipeline (folder or hub id)")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--n", type=int, default=1, help="images to generate (written as a grid)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument(
        "--lora", help="LoRA weights to load (a folder or file saved by diffusers' save_lora_weights, or a hub id)"
    )
    parser.add_argument(
        "--lora-scale", type=float, help="scale of the --lora weights in the UNet and text encoder (default 1)"
    )
    parser.add_argument("--clip-skip", type=int, help="skip this many final CLIP layers (as in diffusers)")


def warn_about_vocabulary(prompt: str, model: str | Path) -> str | None:
    """The warning for a prompt the model at `model` never read in training (None when it has
    no `vocabulary.txt`, or the prompt uses only its words); printed to stderr too."""
    from clipcond.pipelines.vocabulary import VOCABULARY_FILE, read_vocabulary, unknown_words

    path = Path(model) / VOCABULARY_FILE
    vocabulary = read_vocabulary(model)
    if vocabulary is None:
        return None
    if not prompt.strip():
        message = "the prompt is empty: the model draws an unconditional sample"
    else:
        unknown = unknown_words(prompt, vocabulary)
        if not unknown:
            return None
        message = (
            f"the model never read {', '.join(repr(word) for word in unknown)} in training, so it will draw what it "
            f"knows instead; its words are listed in {path}"
        )
    print(f"warning: {message}", file=sys.stderr)
    return message


def load_pipeline(model: str | Path, torch_dtype: torch.dtype | None = None) -> Any:
    """A `CLIPConditionedPipeline` from a saved one, or wrapping any diffusers SD-family pipeline.

    `torch_dtype` casts the weights as they load (None keeps the stored dtype; the bundled
    model is stored in float16 to keep the package small and loads in float32 on a CPU).
    """
    from diffusers import DiffusionPipeline

    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    index = Path(model) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == CLIPConditionedPipeline.__name__:
        return CLIPConditionedPipeline.from_pretrained(model, **kwargs)
    pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    second = getattr(pipe, "text_encoder_2", None)
    if second is not None and type(second).__name__ != "T5EncoderModel":
        raise ValueError(
            f"--model {model} is a {type(pipe).__name__} with a second CLIP text encoder "
            f"({type(second).__name__}); CLIPConditionedPipeline takes one CLIP and an optional T5. "
            "Run that pipeline with prompt embeddings from clipcond.TextConditioner.from_pipeline(pipe) instead"
        )
    return CLIPConditionedPipeline.from_pipe(pipe)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, generate, write the PNG. Returns the exit status."""
    from diffusers.utils import make_image_grid

    if args.n < 1 or args.steps < 1:
        raise ValueError(f"--n and --steps must be >= 1, got {args.n} and {args.steps}")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"-o/--output must end in .png, got {output}")
    lora_scale = args.lora_scale
    if lora_scale is not None and (args.lora is None or not math.isfinite(lora_scale)):
        raise ValueError(f"--lora-scale needs --lora and a finite number, got {lora_scale}")
    model = args.model
    if model is None:
        if not (BUNDLED_MODEL / "model_index.json").is_file():
            raise FileNotFoundError(
                "this install has no bundled shapes model yet; pass --model with a saved CLIPConditionedPipeline "
                "or a diffusers Stable Diffusion pipeline"
            )
        model = BUNDLED_MODEL
    warn_about_vocabulary(args.prompt, model)
    pipe = load_pipeline(model, torch_dtype=torch.float32)  # runs on the CPU: float32 whatever the stored dtype
    if args.lora is not None:
        pipe.load_lora_weights(args.lora)
    generators = [torch.Generator().manual_seed(args.seed + index) for index in range(args.n)]
    images = pipe(
        args.prompt,
        negative_prompt=args.negative,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        num_images_per_prompt=args.n,
        generator=generators,
        clip_skip=args.clip_skip,
        cross_attention_kwargs=None if lora_scale is None else {"scale": lora_scale},
    ).images
    columns = math.ceil(math.sqrt(args.n))
    picture = (
        images[0]
        if args.n == 1
        else make_image_grid(
            images + [images[0].copy().point(lambda _: 0)] * (columns * math.ceil(args.n / columns) - args.n),
            rows=math.ceil(args.n / columns),
            cols=columns,
        )
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp.png")
    picture.save(temporary)
    temporary.replace(output)
    print(f"wrote {output}")
    return 0
