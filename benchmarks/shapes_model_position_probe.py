"""Does a shapes UNet know where "left of" puts things before any layout exists?

    python benchmarks/shapes_model_position_probe.py                     # the bundled model
    python benchmarks/shapes_model_position_probe.py --model coords=runs/shapes-tiny-coords/pipeline

At the first sampling step the input is pure noise and a v-prediction UNet's best answer is
the mean training image of the prompt, E[x0 | prompt]. For "a red circle to the left of a
blue square" that mean is reddish on the left and bluish on the right. This probe measures how
much of that positional mean a model reproduces:

- the model's mean: x0 predicted from `--noises` pure-noise inputs at timestep t (the
  pipeline's own conditioner and guidance-free UNet call), averaged;
- the data's mean: `--scenes` random two-object scenes of the training stream that hold the
  prompt's relation, recoloured and reshaped to the prompt's objects and rendered;
- both reduced to one colour-contrast map, <x0(p) - white, colour_A - colour_B> per pixel
  (0 on the background), so only where A and B sit counts;
- score: the regression coefficient of the model's map on the data's, <model, data> /
  <data, data>: 1 when the model's mean carries all the positional contrast, 0 when none.

A UNet whose cross-attention sits at its lowest resolution only, and that cannot see the image
border from the middle of the image, scores near 0 at t=999 whatever its text tower knows; a
UNet that reads coordinate channels (`coordinate_channels: true`) can score near 1.
Prints the table; `--output PATH` also writes it (the recorded results:
benchmarks/results/shapes_model_position_probe.md, updated by hand with the command used).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

from result_paths import REPO, write_result

if TYPE_CHECKING:
    import numpy as np

PAIRS = (  # (colour, shape) of A and B; training pairs, six colours
    (("red", "circle"), ("blue", "square")),
    (("yellow", "square"), ("purple", "triangle")),
    (("green", "triangle"), ("red", "square")),
    (("cyan", "circle"), ("yellow", "triangle")),
)


def contrast(images: np.ndarray, a: str, b: str) -> np.ndarray:
    """(n, H, W, 3) images in [-1, 1] -> (n, H, W): <x - white, colour_a - colour_b> per pixel."""
    import numpy as np

    from clipcond.shapes.vocab import COLOURS

    direction = (np.asarray(COLOURS[a], np.float32) - np.asarray(COLOURS[b], np.float32)) / 127.5
    return ((images - 1.0) * direction).sum(-1)


def data_mean(relation: str, pair_a: tuple[str, str], pair_b: tuple[str, str], scenes: int, seed: int) -> np.ndarray:
    """(H, W) mean contrast map of `scenes` rendered training-like scenes 'A <relation> B'."""
    import numpy as np

    from clipcond.shapes.render import render_scene_array
    from clipcond.shapes.scene import Scene, random_scene

    rng = random.Random(f"{seed}:{relation}:{pair_a}:{pair_b}")
    maps = []
    while len(maps) < scenes:
        scene = random_scene(rng, 2, 2)
        if scene.relation is None or scene.relation[1] != relation:
            continue
        i, _, j = scene.relation
        objects = list(scene.objects)
        objects[i] = dataclasses.replace(objects[i], colour=pair_a[0], shape=pair_a[1])
        objects[j] = dataclasses.replace(objects[j], colour=pair_b[0], shape=pair_b[1])
        image = render_scene_array(Scene(objects=tuple(objects), relation=scene.relation)) / 127.5 - 1.0
        maps.append(contrast(image[None], pair_a[0], pair_b[0])[0])
    return np.mean(maps, axis=0)


def model_mean(pipe, prompt: str, timestep: int, noises: int, seed: int, pair_a: str, pair_b: str) -> np.ndarray:
    """(H, W) mean contrast map of the x0 a pipeline's UNet predicts from pure noise at `timestep`."""
    import torch

    from clipcond.pipelines.coordinates import append_coordinates

    with torch.no_grad():  # inference only: no autograd graph
        unet = pipe.unet
        schedule = pipe.scheduler
        alpha_bar = schedule.alphas_cumprod[timestep].double()
        embeds = pipe.conditioner.pipeline_kwargs([prompt])["prompt_embeds"].to(unet.dtype)
        size = unet.config.sample_size
        noise = torch.randn(noises, unet.config.out_channels, size, size, generator=torch.Generator().manual_seed(seed))
        # the sample at `timestep` when the clean image is unknown: almost pure noise (scaled as training does)
        sample = noise
        model_input = append_coordinates(sample) if pipe.config.get("coordinate_channels", False) else sample
        output = unet(
            model_input, torch.full((noises,), timestep), encoder_hidden_states=embeds.expand(noises, -1, -1)
        ).sample
        if schedule.config.prediction_type == "v_prediction":
            x0 = alpha_bar.sqrt() * sample.double() - (1 - alpha_bar).sqrt() * output.double()
        else:
            x0 = (sample.double() - (1 - alpha_bar).sqrt() * output.double()) / alpha_bar.sqrt()
        images = x0.clamp(-1, 1).permute(0, 2, 3, 1).float().numpy()
        return contrast(images, pair_a, pair_b).mean(0)


def timesteps_list(text: str) -> list[int]:
    """`--timesteps` "999,975" -> [999, 975]; each must be a training timestep, 0..999."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(not 0 <= value <= 999 for value in values):
        raise argparse.ArgumentTypeError(f"timesteps must lie in 0..999, got {text!r}")
    return values


def named_path(text: str) -> tuple[str, str]:
    """`--model` NAME=PATH -> (NAME, PATH)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    """The command line of this probe."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        type=named_path,
        default=[],
        metavar="NAME=PATH",
        help="a saved CLIPConditionedPipeline (repeatable); default: the bundled model",
    )
    parser.add_argument(
        "--timesteps", type=timesteps_list, default="999,975", help="comma-separated training timesteps"
    )
    parser.add_argument("--noises", type=int, default=64, help="pure-noise inputs per prompt (default 64)")
    parser.add_argument("--scenes", type=int, default=300, help="rendered scenes per relation and pair (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the markdown table here (default: print only)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("noises", "scenes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    import torch
    from diffusers import DDPMScheduler

    from clipcond import CLIPConditionedPipeline
    from clipcond.pipelines.saved_pipelines import load_pipeline
    from clipcond.shapes.prompt_suite import RELATION_WORDS
    from clipcond.shapes.vocab import RELATIONS

    models = args.model or [("bundled", str(REPO / "clipcond" / "data" / "shapes-model"))]
    timesteps = args.timesteps
    ideal = {(rel, a, b): data_mean(rel, a, b, args.scenes, args.seed) for rel in RELATIONS for a, b in PAIRS}
    lines = [f"| model | {' | '.join(f't={t}' for t in timesteps)} |", "|---|" + "---|" * len(timesteps)]
    for name, path in models:
        pipe = load_pipeline(path, torch_dtype=torch.float32)
        if not isinstance(pipe, CLIPConditionedPipeline):
            raise SystemExit(f"--model {name}={path}: not a CLIPConditionedPipeline")
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # its alphas_cumprod, whatever sampler
        scores = []
        for t in timesteps:
            dot = norm = 0.0
            for (rel, a, b), target in ideal.items():
                prompt = f"a {a[0]} {a[1]} {RELATION_WORDS[rel]} a {b[0]} {b[1]}"
                mean = model_mean(pipe, prompt, t, args.noises, args.seed, a[0], b[0])
                dot += float((mean * target).sum())
                norm += float((target * target).sum())
            scores.append(dot / norm)
        lines.append(f"| {name} | {' | '.join(f'{s:.2f}' for s in scores)} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.output:
        write_result(args.output, table + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
