"""``clipcond eval-clip``: zero-shot classification on the shapes world and retrieval recall@K
on image-caption pairs (shapes stream, webdataset shards or a JSONL manifest)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from clipcond.errors import RunFailed, UsageError, add_debug_argument, run_command, user_errors
from clipcond.output_paths import check_new_file, nameable_path, write_atomically


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `eval-clip`."""
    parser.add_argument("--model", required=True, help="a folder written by save_clip (e.g. runs/clip/model)")
    parser.add_argument(
        "--images-per-class", type=int, default=50, help="shapes zero-shot images per colour-shape class"
    )
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation images")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--webdataset",
        nargs="+",
        metavar="PATTERN",
        help="retrieval on these tar shards: paths or brace patterns (shards/test-{000..009}.tar), '::' between several",
    )
    source.add_argument("--manifest", help="retrieval on this JSONL manifest")
    parser.add_argument("--pairs", type=int, default=1000, help="image-caption pairs for retrieval")
    parser.add_argument("--output", help="also write the metrics to this JSON file (a new file unless --force)")
    parser.add_argument("--force", action="store_true", help="replace the --output file if it exists")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics as JSON. Returns the exit status."""
    from safetensors import SafetensorError

    from clipcond.models import load_clip
    from clipcond.shapes import ShapesStream
    from clipcond.tokenization import clip_tokenizer
    from clipcond.training.clip.evaluation import TooFewPairs, pair_retrieval, shapes_zero_shot
    from clipcond.training.data import CaptionTokenizer, SkipCounter, manifest_samples, shard_urls, webdataset_samples

    if args.images_per_class < 1 or args.pairs < 2:
        raise UsageError("--images-per-class must be >= 1 and --pairs >= 2")
    model_dir = nameable_path(args.model, "--model")
    if not model_dir.is_dir():
        raise UsageError(f"--model: no such folder {model_dir}")
    with user_errors(FileNotFoundError, ValueError):  # shard patterns: the message names the pattern
        shards = shard_urls(args.webdataset, "--webdataset") if args.webdataset else None
    if args.manifest and not nameable_path(args.manifest, "--manifest").is_file():
        raise UsageError(f"--manifest: no such file {args.manifest}")
    output = None
    if args.output:
        output = check_new_file(args.output, "--output", args.force)
        if output.absolute().resolve().is_relative_to(model_dir.absolute().resolve()):
            raise UsageError(f"--output {output} is inside --model {model_dir}; write the metrics elsewhere")
    with user_errors(OSError, ValueError, SafetensorError, context=f"--model {model_dir}: cannot load a CLIP: "):
        clip = load_clip(model_dir).float()
    length = clip.config.text.context_length
    tokenizer = CaptionTokenizer(clip_tokenizer(model_max_length=length), length)
    skipped = SkipCounter()
    if args.webdataset:
        pairs, source = webdataset_samples(shards, skipped), "--webdataset"
    elif args.manifest:
        pairs, source = manifest_samples(args.manifest, skipped), f"--manifest {args.manifest}"
    else:
        stream = ShapesStream(seed=args.seed, image_size=clip.config.vision.image_size, split="all")
        pairs, source = ((sample.image, sample.caption) for sample in stream), "shapes"
    # Retrieval first: a source without 2 usable pairs is refused before the zero-shot work,
    # with the reasons its samples were skipped.
    try:
        retrieval = pair_retrieval(clip, tokenizer, pairs, limit=args.pairs)
    except TooFewPairs as error:
        raise UsageError(f"{source}: {error} ({skipped.report()})") from error
    metrics: dict[str, object] = {
        "zero_shot": shapes_zero_shot(clip, tokenizer, args.images_per_class, args.seed),
        "retrieval": retrieval,
        "skipped": dict(skipped.counts),
    }
    text = json.dumps(metrics, indent=2)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        try:  # without --force, a file another run wrote there meanwhile is kept
            write_atomically(output, (text + "\n").encode("utf-8"), replace=args.force)
        except FileExistsError as error:
            raise RunFailed(
                f"--output {output} was written by something else during the evaluation; it is kept and the metrics "
                "are only printed above: pass --force to replace it, or choose another --output"
            ) from error
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.clip.eval_command --model ...`."""
    parser = argparse.ArgumentParser(prog="eval_clip", description="evaluate a saved CLIP")
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
