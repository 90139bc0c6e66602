"""``clipcond encode``: encode the captions of a dataset once, into safetensors shards that
``clipcond train-diffusion`` reads (``data.embeddings``) instead of running the text encoders.

The conditioner is the one a training run builds (``--train-config``), a diffusers pipeline's
(``--pipeline``, `TextConditioner.from_pipeline`) or one described in YAML
(``--conditioner``, `TextConditioner.from_config`). The captions come from the run config's
data section, a text file of prompts (``--prompts``), a JSONL manifest, webdataset shards or
the shapes stream (``--shapes COUNT``), read by `clipcond.training.data`'s sources.

Each distinct caption is encoded once (the empty prompt always, for caption dropout and
padding), in batches of ``--batch-size``, and written ``--shard-size`` records to a shard
(`clipcond.training.data.embedding_shards`), atomically. A killed run is resumed by running the
same command again: captions already in finished shards are skipped. A folder that holds
embeddings of other weights or settings is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipcond.errors import UsageError, add_debug_argument, run_command, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `encode`."""
    conditioner = parser.add_mutually_exclusive_group(required=True)
    conditioner.add_argument(
        "--train-config",
        help="a train-diffusion config: its encoders and settings, and (by default) its data",
    )
    conditioner.add_argument("--pipeline", help="a diffusers pipeline folder (SD, SDXL, SD3, Flux, PixArt)")
    conditioner.add_argument("--conditioner", help="a conditioner YAML (ConditionerConfig)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts", help="a UTF-8 text file, one prompt per line")
    source.add_argument("--manifest", help="a JSONL manifest ({'image': ..., 'caption': ...} per line)")
    source.add_argument(
        "--webdataset",
        nargs="+",
        metavar="PATTERN",
        help="tar shards: paths or brace patterns (shards/train-{000..009}.tar), '::' between several",
    )
    source.add_argument(
        "--shapes",
        type=int,
        metavar="COUNT",
        help="the first COUNT samples of the shapes stream (default with a shapes --train-config: steps x batch_size, "
        "what one process reads; multiply by the processes of a multi-process run)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the shapes stream (a --train-config's own seed wins)"
    )
    parser.add_argument("--out", required=True, help="folder of the shards (created; resumed when it holds some)")
    parser.add_argument("--batch-size", type=int, default=64, help="captions per encoder call")
    parser.add_argument("--shard-size", type=int, default=1024, help="captions per shard file")
    parser.add_argument("--device", default="cpu", help="where the encoders run (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")


def run(args: argparse.Namespace) -> int:
    """Encode the captions into ``--out``; print what was done. Returns the exit status."""
    from clipcond.training.data.embedding_shards import (
        EmbeddingIdentity,
        EmbeddingShardError,
        EmbeddingShards,
        remove_temporary_files,
    )
    from clipcond.training.run_folder import RunFolderError
    from clipcond.training.run_lock import RunFolderLock

    # 1. Check the command line and read the captions, before any weight is loaded
    if args.batch_size < 1 or args.shard_size < 1:
        raise UsageError(f"--batch-size and --shard-size must be >= 1, got {args.batch_size} and {args.shard_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder")
    train_config = _train_config(args.train_config) if args.train_config else None
    captions, skipped = _captions(args, train_config)

    # 2. Build the conditioner; the folder must hold embeddings of the same weights and settings
    conditioner = _conditioner(args, train_config)
    identity = EmbeddingIdentity(*conditioner.identity())
    with user_errors(RunFolderError), RunFolderLock(out):  # one encode per folder at a time
        remove_temporary_files(out)
        with user_errors(EmbeddingShardError, context="--out: "):
            done = EmbeddingShards(out, identity, argument=str(out), require_shards=False)

        # 3. Each distinct caption once, the empty prompt first; skip those already written
        distinct = list(dict.fromkeys(["", *captions]))
        todo = [caption for caption in distinct if _hash(caption) not in done]

        # 4. Encode in batches, write full shards as they fill
        written = _encode_into_shards(conditioner, todo, out, done.next_index, identity, args)
    print(
        f"{len(todo)} captions encoded into {written} new shards in {out} "
        f"({len(distinct) - len(todo)} already there, {len(captions) + 1 - len(distinct)} duplicates; "
        f"{len(done) + len(todo)} captions in the folder); {skipped.report()}"
    )
    return 0


def _hash(caption: str) -> str:
    from clipcond.training.data.embedding_shards import caption_hash

    return caption_hash(caption)


def _train_config(path: str) -> Any:
    """The train-diffusion config at `path` (its errors are usage errors)."""
    import yaml

    from clipcond.training.diffusion.config import TrainDiffusionConfig

    if not Path(path).is_file():
        raise UsageError(f"--train-config: no such file {path}")
    with user_errors(ValueError, TypeError, yaml.YAMLError):
        return TrainDiffusionConfig.from_yaml(path)


def _captions(args: argparse.Namespace, train_config: Any) -> tuple[list[str], Any]:
    """Every caption of the chosen source, in order (duplicates kept), and the skip counter."""
    from clipcond.training.data import CaptionSource, DataConfig, SkipCounter, shard_urls
    from clipcond.training.data.prompt_file import prompt_file_captions

    skipped = SkipCounter()
    if args.prompts:
        with user_errors(FileNotFoundError, ValueError, context="--prompts: "):
            return prompt_file_captions(args.prompts, skipped), skipped
    seed = args.seed
    if args.manifest:
        if not Path(args.manifest).is_file():
            raise UsageError(f"--manifest: no such file {args.manifest}")
        data = DataConfig(source="manifest", manifest=args.manifest)
    elif args.webdataset:
        with user_errors(FileNotFoundError, ValueError):  # the message names the pattern
            shard_urls(args.webdataset, "--webdataset")
        data = DataConfig(source="webdataset", urls=args.webdataset)
    elif train_config is not None and (args.shapes is None or train_config.data.source == "shapes"):
        data, seed = train_config.data, train_config.seed
    elif args.shapes is not None:
        data = DataConfig(source="shapes")
    else:
        raise UsageError("give the captions: --prompts, --manifest, --webdataset or --shapes COUNT (or --train-config)")
    with user_errors(FileNotFoundError, ValueError):
        DataConfig.check_files(data)  # the sources only: a run config's data.embeddings may be --out, not made yet
    if data.source == "shapes":
        count = args.shapes if args.shapes is not None else train_config.steps * train_config.batch_size
        if count < 1:
            raise UsageError(f"--shapes: expected a count >= 1, got {count}")
        source = CaptionSource(data, seed, heldout_count=0, skipped=skipped)
        return [source.caption(index) for index in range(count)], skipped
    where = data.manifest if data.source == "manifest" else data.urls
    with user_errors(ValueError, context=f"{where}: "):
        source = CaptionSource(data, seed, heldout_count=0, skipped=skipped)
    return source.first(source.size), skipped


def _conditioner(args: argparse.Namespace, train_config: Any) -> Any:
    """The conditioner the command line names, on ``--device``, without a cache (the shards
    are the cache: keeping every record in memory too would hold the whole dataset)."""
    from safetensors import SafetensorError

    from clipcond.conditioning import TextConditioner

    loading = (OSError, ValueError, TypeError, SafetensorError)
    if train_config is not None:
        from clipcond.training.diffusion.setup import build_conditioner

        with user_errors(*loading, context="--train-config: "):
            conditioner = build_conditioner(train_config)
    elif args.pipeline:
        from diffusers import DiffusionPipeline

        if not Path(args.pipeline).is_dir():
            raise UsageError(f"--pipeline: no such folder {args.pipeline}")
        with user_errors(*loading, context=f"--pipeline {args.pipeline}: "):
            conditioner = TextConditioner.from_pipeline(DiffusionPipeline.from_pretrained(args.pipeline))
    else:
        if not Path(args.conditioner).is_file():
            raise UsageError(f"--conditioner: no such file {args.conditioner}")
        with user_errors(*loading, context=f"--conditioner {args.conditioner}: "):
            conditioner = TextConditioner.from_config(args.conditioner)
    conditioner.cache = None
    with user_errors(RuntimeError, context="--device: "):
        return conditioner.to(args.device)


def _encode_into_shards(
    conditioner: Any, captions: list[str], out: Path, first_index: int, identity: Any, args: argparse.Namespace
) -> int:
    """Encode `captions` in batches into shards numbered from `first_index`; returns how many
    shards were written. A shard is written once it is full, and the last one at the end."""
    from tqdm.auto import tqdm

    from clipcond.training.data.embedding_shards import caption_hash, write_shard

    pending: dict[str, Any] = {}
    index = first_index
    with tqdm(total=len(captions), unit="caption", desc="encode", disable=args.no_progress) as progress:
        for start in range(0, len(captions), args.batch_size):
            batch = captions[start : start + args.batch_size]
            for caption, record in zip(batch, conditioner.encode_records(batch)):
                pending[caption_hash(caption)] = record
                if len(pending) == args.shard_size:
                    write_shard(out, index, pending, identity)
                    index, pending = index + 1, {}
            progress.update(len(batch))
        if pending:
            write_shard(out, index, pending, identity)
            index += 1
    return index - first_index


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.encode_command ...`."""
    parser = argparse.ArgumentParser(prog="encode", description="pre-encode the captions of a dataset")
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
