"""How much of a prompt's spatial relation survives into the prompt embeddings a UNet reads.

    python benchmarks/text_tower_relations.py                       # the bundled model and the lab's setups
    python benchmarks/text_tower_relations.py --model clip=runs/shapes-tiny-diffusion/pipeline \
        --model negclip=runs/lab/full/unet-negclip/pipeline

For each saved pipeline, encodes pairs of shapes prompts through its own conditioner
(`pipe.conditioner.pipeline_kwargs`, exactly the `prompt_embeds` the UNet cross-attends to)
and measures how far apart the two encodings are: the Frobenius norm of the difference over
the norm of the first, averaged over pairs built from every ordered pair of training
colour-shape combinations (drawn with a fixed seed). Pair kinds:

    relation flip   "A to the left of B" / "A to the right of B", "A above B" / "A below B"
    object swap     "A to the left of B" / "B to the left of A"
    colour change   "A <rel> B" / "A <rel> B'" with B's colour changed
    shape change    the same with B's shape changed

A text tower that reads a caption as a bag of words maps a relation flip to nearly the same
embedding (a contrastive loss does not need the difference when both wordings of a scene,
"A left of B" and "B right of A", must meet the same image); the UNet cannot then learn where
to put the objects. The ratio `relation flip / colour change` says how visible a relation is
next to a colour, which every tower must keep. For a pipeline with a T5 beside CLIP, a second
row measures the T5's own last hidden states (in the joined embedding, CLIP's part dominates the
norm). Writes runs/benchmarks/text_tower_relations.md; give
`--output benchmarks/results/text_tower_relations.md` to update the recorded result.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import TYPE_CHECKING

from result_paths import add_output_argument, write_result

if TYPE_CHECKING:
    import torch

# The lab's quick setups (configs/experiments/encoders-shapes-quick.yaml): their towers are the
# full experiment's; only the UNets (which this benchmark does not use) trained for fewer steps.
DEFAULT_MODELS = (
    "clip=runs/lab/quick/unet-clip/pipeline",
    "clip-negclip=runs/lab/quick/unet-negclip/pipeline",
    "clip-t5=runs/lab/quick/unet-clip-t5/pipeline",
    "clip-random=runs/lab/quick/unet-random/pipeline",
)
FLIPS = {"to the left of": "to the right of", "above": "below"}


def prompt_pairs(pairs: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """`pairs` prompt pairs of each kind, from training colour-shape combinations."""
    from clipcond.shapes.captions import class_prompt
    from clipcond.shapes.splits import train_pairs
    from clipcond.shapes.vocab import COLOURS, SHAPES

    rng = random.Random(seed)
    seen = train_pairs()
    kinds: dict[str, list[tuple[str, str]]] = {
        "relation flip": [],
        "object swap": [],
        "colour change": [],
        "shape change": [],
    }
    while len(kinds["relation flip"]) < pairs:
        a, b = rng.sample(seen, 2)
        words = rng.choice(tuple(FLIPS))
        first = f"{class_prompt(*a)} {words} {class_prompt(*b)}"
        other_colour = rng.choice([c for c in COLOURS if c != b[0] and (c, b[1]) in seen])
        other_shape = rng.choice([s for s in SHAPES if s != b[1] and (b[0], s) in seen])
        kinds["relation flip"].append((first, f"{class_prompt(*a)} {FLIPS[words]} {class_prompt(*b)}"))
        kinds["object swap"].append((first, f"{class_prompt(*b)} {words} {class_prompt(*a)}"))
        kinds["colour change"].append((first, f"{class_prompt(*a)} {words} {class_prompt(other_colour, b[1])}"))
        kinds["shape change"].append((first, f"{class_prompt(*a)} {words} {class_prompt(b[0], other_shape)}"))
    return kinds


def relative_distances(encode, kinds: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Mean `||E(a) - E(b)|| / ||E(a)||` per pair kind; `encode` maps a list of prompts to a
    (batch, tokens, width) tensor E."""
    import torch

    with torch.no_grad():  # inference only: no autograd graph
        out = {}
        for kind, pairs in kinds.items():
            first = encode([a for a, _ in pairs]).float()
            second = encode([b for _, b in pairs]).float()
            out[kind] = float(((first - second).flatten(1).norm(dim=1) / first.flatten(1).norm(dim=1)).mean())
        return out


def t5_states(pipe):
    """The last hidden states of the pipeline's own T5 encoder, at the length its recipe pads to."""
    length = pipe.config.get("t5_max_length") or pipe.tokenizer_2.model_max_length

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer_2(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return pipe.text_encoder_2(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state

    return encode


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=PATH",
        help="a saved pipeline (repeatable); default: the lab's quick setups in runs/lab/quick",
    )
    parser.add_argument("--pairs", type=int, default=48, help="prompt pairs per kind (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_argument(parser, "text_tower_relations.md", "table")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    specs = args.model or list(DEFAULT_MODELS)
    models = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model must be NAME=PATH, got {spec!r}")
        if not (Path(path) / "model_index.json").is_file():
            parser.error(f"--model {spec!r}: no saved pipeline at {path}")
        models.append((name, path))

    import torch

    from clipcond.pipelines.saved_pipelines import load_pipeline

    kinds = prompt_pairs(args.pairs, args.seed)
    lines = [
        "# What the text towers keep of a spatial relation",
        "",
        f"`python benchmarks/text_tower_relations.py`: {args.pairs} prompt pairs per kind (seed {args.seed}), "
        "encoded by each pipeline's own conditioner. Cells: mean `||E(a) - E(b)|| / ||E(a)||` over the "
        "prompt embeddings the UNet reads; last column: relation flip over colour change.",
        "",
        "| setup | pipeline | " + " | ".join(kinds) + " | flip / colour |",
        "|---|---|" + "---|" * (len(kinds) + 1),
    ]
    for name, path in models:
        pipe = load_pipeline(path, torch_dtype=torch.float32)
        encoders = [(name, lambda prompts, pipe=pipe: pipe.conditioner.pipeline_kwargs(prompts)["prompt_embeds"])]
        if pipe.text_encoder_2 is not None:
            encoders.append((f"{name}: its T5 alone", t5_states(pipe)))
        for label, encode in encoders:
            d = relative_distances(encode, kinds)
            row = " | ".join(f"{d[k]:.3f}" for k in kinds)
            lines.append(f"| {label} | `{path}` | {row} | {d['relation flip'] / d['colour change']:.2f} |")
            print(lines[-1], flush=True)
    write_result(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
