"""``clipcond encode``: encode the captions of a dataset once, into safetensors shards that
``clipcond train-diffusion`` reads (``data.embeddings``) instead of running the text encoders;
and with ``--latents DIR`` its images once through the run's VAE (``data.latents``).

The conditioner is a training run's (``--train-config``), a pipeline folder's (``--pipeline``:
a saved `CLIPConditionedPipeline`'s own, read as ``generate`` reads it, or a diffusers
pipeline's, `TextConditioner.from_pipeline`) or one described in YAML (``--conditioner``,
`TextConditioner.from_config`). The captions come from the run config's data section, a text
file of prompts (``--prompts``), a JSONL manifest, webdataset shards or the shapes stream
(``--shapes COUNT``), read by `clipcond.training.data`'s sources.

Each distinct caption is encoded once (the empty prompt always, for caption dropout and
padding), in batches of ``--batch-size``, and written ``--shard-size`` records to a shard
(`clipcond.training.data.embedding_shards`), atomically. A killed run is resumed by running the
same command again: captions already in finished shards are skipped. A folder that holds
embeddings of other weights or settings is refused. ``--latents`` (with ``--out`` or alone)
takes the VAE, image size and, by default, data of ``--train-config``; each distinct image, as
the run transforms it, is encoded once (`clipcond.training.data.latent_shards`), likewise.

Why this module is over 400 lines: it is the command's whole flow (check the command line, load
the models, open the folders, encode) for both kinds of shards, which share each step; the
shards' format lives in `embedding_shards` and `latent_shards`, the sources in `data`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipcond.devices import resolve_device
from clipcond.errors import UsageError, add_debug_argument, run_command, user_errors
from clipcond.output_paths import check_output_location


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `encode`."""
    conditioner = parser.add_mutually_exclusive_group(required=True)
    conditioner.add_argument(
        "--train-config",
        help="a train-diffusion config: its encoders and settings, and (by default) its data",
    )
    conditioner.add_argument(
        "--pipeline", help="a pipeline folder: clipcond's (run/pipeline), or SD, SDXL, SD3, Flux, PixArt"
    )
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
    parser.add_argument("--out", help="folder of the caption shards (created; resumed when it holds some)")
    parser.add_argument(
        "--latents",
        metavar="DIR",
        help="also (or only) encode the images with --train-config's VAE into this folder (data.latents)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="captions (or images) per encoder call")
    parser.add_argument("--shard-size", type=int, default=1024, help="captions (or images) per shard file")
    parser.add_argument("--device", default="cpu", help="where the encoders run (cpu, cuda, cuda:1 ...)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bars (the command's, and diffusers' and transformers' loading bars)",
    )


def run(args: argparse.Namespace) -> int:
    """Encode the captions into ``--out`` and the images into ``--latents``; print what was
    done. Returns the exit status. ``--no-progress`` also hides the loading bars diffusers and
    transformers draw by themselves."""
    from clipcond.progress_bars import library_progress_bars

    with library_progress_bars(not args.no_progress):
        return _encode(args)


def _encode(args: argparse.Namespace) -> int:
    """`run`'s work."""
    # 1. Check the command line and read the config, before any weight is loaded
    if args.batch_size < 1 or args.shard_size < 1:
        raise UsageError(f"--batch-size and --shard-size must be >= 1, got {args.batch_size} and {args.shard_size}")
    if args.out is None and args.latents is None:
        raise UsageError("give --out (the captions' embeddings), --latents (the images' latents) or both")
    if args.latents is not None and args.train_config is None:
        raise UsageError("--latents needs --train-config: the run's VAE, image size and (by default) data")
    if args.latents is not None and args.prompts:
        raise UsageError("--latents: --prompts holds captions only; give the images (the run's data, --manifest, ...)")
    out, latents = _output_folder(args.out, "--out"), _output_folder(args.latents, "--latents")
    with user_errors(ValueError, context="--device: "):
        resolve_device(args.device)
    train_config = _train_config(args.train_config) if args.train_config else None

    from clipcond.training.data.embedding_shards import EmbeddingIdentity, EmbeddingShards
    from clipcond.training.data.latent_shards import LatentShards, vae_identity

    with contextlib.ExitStack() as locks:
        # 2. Lock the folders (one encode per folder at a time) before any weight is loaded: a
        #    folder another encode is filling is refused at once
        if latents is not None:
            _lock(latents, "--latents", locks)
        if out is not None and (latents is None or latents.resolve() != out.resolve()):  # one folder: locked once
            _lock(out, "--out", locks)

        # 3. Load what encodes, its sources checked: the images' and the VAE, the captions and the conditioner
        images = _image_source(args, train_config) if latents is not None else None
        captions = _captions(args, train_config) if out is not None else None  # before the conditioner's weights
        conditioner = _conditioner(args, train_config) if out is not None else None

        # 4. Open the shards the folders hold: of other weights or damaged is refused here, before
        #    anything is encoded
        if images is not None:  # images[0]: the run's VAE
            image_shards = _open_shards(LatentShards, latents, "--latents", vae_identity(images[0]))
        if conditioner is not None:
            identity = EmbeddingIdentity(*conditioner.identity())
            caption_shards = _open_shards(EmbeddingShards, out, "--out", identity)

        # 5. Encode what the folders lack: the captions, then the images
        reports = [_encode_captions(args, *captions, conditioner, caption_shards)] if conditioner is not None else []
        reports += [_encode_images(args, images, image_shards)] if images is not None else []
    print("\n".join(reports))
    return 0


def _output_folder(folder: str | None, option: str) -> Path | None:
    """The folder `option` names, checked before any work (None when not given): a path (not
    empty, as an unset shell variable gives: that is not the current folder), not a file, where
    a folder can be made (`check_output_location`); ``~`` expanded, as the shell leaves it in
    ``--out=~/emb``."""
    if folder is None:
        return None
    if not folder.strip():
        raise UsageError(f"{option}: expected a folder path, got {folder!r}")
    path = check_output_location(folder, option)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {folder} exists and is not a folder")
    return path


def _lock(folder: Path, option: str, locks: contextlib.ExitStack) -> None:
    """Lock `folder` (created when missing) until `locks` closes: one encode per folder at a
    time. Folders made here that are still empty when the lock goes (an error came before
    anything was written) are removed again. Another live encode's lock is a usage error naming
    `option`."""
    from clipcond.training.run_folder import RunFolderError
    from clipcond.training.run_lock import RunFolderLock

    made = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    if made:
        locks.callback(_remove_empty, made)
    with user_errors(RunFolderError, context=f"{option}: "):
        locks.enter_context(RunFolderLock(folder, option))


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) while they are empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (written to, or another encode's lock), or gone
            return


def _open_shards(shards: type, folder: Path, option: str, identity: Any) -> Any:
    """The finished shards in `folder` (`shards`: a `KeyedShards` class; the folder locked by
    `_lock`), checked against `identity`, once the temporary files of a killed encode are
    removed. Errors are usage errors naming `option`."""
    from clipcond.training.data.embedding_shards import EmbeddingShardError, remove_temporary_files
    from clipcond.training.run_folder import RunFolderError

    with user_errors(RunFolderError, EmbeddingShardError, context=f"{option}: "):
        remove_temporary_files(folder, shards.kind)
        return shards(folder, identity, argument=str(folder), require_shards=False)


def _encode_captions(args: argparse.Namespace, captions: list[str], skipped: Any, conditioner: Any, done: Any) -> str:
    """Encode the `captions` (in order, duplicates kept; `skipped` counts those the source
    skipped) that the shards `done` (an open `EmbeddingShards`) lack, with `conditioner`, into
    new shards of its folder; the report line."""
    from clipcond.training.data.embedding_shards import caption_hash

    # each distinct caption once, the empty prompt first; skip those already written
    distinct = list(dict.fromkeys(["", *captions]))
    todo = [(caption_hash(caption), caption) for caption in distinct if caption_hash(caption) not in done]
    # in batches, full shards written as they fill; records that do not fit the spec are refused
    encode, spec = conditioner.encode_records, conditioner.record_spec
    written = _encode_into_shards(todo, encode, done, args, len(todo), spec=spec)
    return (
        f"{_counted(len(todo), 'caption')} encoded into {_counted(written, 'new shard')} in {done.folder} "
        f"({len(distinct) - len(todo)} already there, {_counted(len(captions) + 1 - len(distinct), 'duplicate')}; "
        f"{_counted(len(done) + len(todo), 'caption')} in the folder); {skipped.report()}"
    )


def _image_source(args: argparse.Namespace, train_config: Any) -> tuple[Any, Any, int, int | None, int]:
    """What ``--latents`` encodes, checked: (the run's VAE on ``--device``, DataConfig, seed,
    shapes count or None, image size)."""
    from clipcond.training.diffusion.setup import load_vae

    data, seed = _data_source(args, train_config)
    count = _shapes_count(args, train_config) if data.source == "shapes" else None
    with user_errors(FileNotFoundError, ValueError, context="--train-config: "):
        vae = load_vae(train_config)
    if vae is None:
        raise UsageError(
            "--latents: the run trains in pixel space (no `vae`, and `init_from` has no vae/): there are no latents"
        )
    with user_errors(RuntimeError, context="--device: "):
        vae.to(args.device)
    return vae, data, seed, count, train_config.image_size


def _encode_images(args: argparse.Namespace, images: tuple[Any, Any, int, int | None, int], done: Any) -> str:
    """Encode each distinct image of the chosen data (`_image_source`), as the run transforms
    it, that the shards `done` (an open `LatentShards`) lack, with the run's VAE, into new
    shards of its folder; the report line."""
    import torch

    from clipcond.training.data import SkipCounter, pixels_in_unit_range, source_images
    from clipcond.training.data.latent_shards import ImageLatents, image_hash, latent_moments

    vae, data, seed, count, size = images
    skipped = SkipCounter()
    counts = {"present": 0, "duplicates": 0, "encoded": 0}

    def new_images():
        """(hash, pixels) of each image not in the folder yet, once."""
        seen: set[str] = set()
        for pixels in source_images(data, seed, size, lambda image: pixels_in_unit_range(image, size), count, skipped):
            key = image_hash(pixels)
            if key in seen or key in done:
                counts["duplicates" if key in seen else "present"] += 1
                seen.add(key)
                continue
            seen.add(key)
            counts["encoded"] += 1
            yield key, pixels

    def encode(images: list) -> list:
        mean, std = latent_moments(vae, torch.stack(images).to(args.device))
        return [ImageLatents(m.clone(), s.clone()) for m, s in zip(mean, std)]

    written = _encode_into_shards(new_images(), encode, done, args, count, unit="image")
    return (
        f"{_counted(counts['encoded'], 'image')} encoded into {_counted(written, 'new latent shard')} in "
        f"{done.folder} ({counts['present']} already there, {_counted(counts['duplicates'], 'duplicate')}; "
        f"{_counted(len(done) + counts['encoded'], 'image')} in the folder); {skipped.report()}"
    )


def _counted(count: int, noun: str) -> str:
    """ "1 caption", "2 captions" (the plural by an s)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _train_config(path: str) -> Any:
    """The train-diffusion config at `path` (its errors are usage errors)."""

    from clipcond.training.diffusion.config import TrainDiffusionConfig

    if not Path(path).is_file():
        raise UsageError(f"--train-config: no such file {path}")
    with user_errors(ValueError, TypeError):
        return TrainDiffusionConfig.from_yaml(path)


def _captions(args: argparse.Namespace, train_config: Any) -> tuple[list[str], Any]:
    """Every caption of the chosen source, in order (duplicates kept), and the skip counter."""
    from clipcond.training.data import CaptionSource, SkipCounter
    from clipcond.training.data.prompt_file import prompt_file_captions

    skipped = SkipCounter()
    if args.prompts:
        with user_errors(FileNotFoundError, ValueError, context="--prompts: "):
            return prompt_file_captions(args.prompts, skipped), skipped
    data, seed = _data_source(args, train_config)
    if data.source == "shapes":
        source = CaptionSource(data, seed, heldout_count=0, skipped=skipped)
        return [source.caption(index) for index in range(_shapes_count(args, train_config))], skipped
    where = data.manifest if data.source == "manifest" else data.urls
    with user_errors(ValueError, context=f"{where}: "):
        source = CaptionSource(data, seed, heldout_count=0, skipped=skipped)
    return source.first(source.size), skipped


def _data_source(args: argparse.Namespace, train_config: Any) -> tuple[Any, int]:
    """(DataConfig, seed) of the samples the command line names (its files checked): the
    ``--manifest``, ``--webdataset`` or ``--shapes`` given, else the run config's data."""
    from clipcond.training.data import DataConfig, shard_urls

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
        # the sources only: a run config's data.embeddings (or data.latents) may be the folder being made
        DataConfig.check_files(data)
    return data, seed


def _shapes_count(args: argparse.Namespace, train_config: Any) -> int:
    """How many samples of the shapes stream to read: ``--shapes``, else what one process of
    the run reads (steps x batch_size)."""
    count = args.shapes if args.shapes is not None else train_config.steps * train_config.batch_size
    if count < 1:
        raise UsageError(f"--shapes: expected a count >= 1, got {count}")
    return count


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
        conditioner = _pipeline_conditioner(args.pipeline, loading)
    else:
        if not Path(args.conditioner).is_file():
            raise UsageError(f"--conditioner: no such file {args.conditioner}")
        with user_errors(*loading, context=f"--conditioner {args.conditioner}: "):
            conditioner = TextConditioner.from_config(args.conditioner)
    conditioner.cache = None
    with user_errors(RuntimeError, context="--device: "):
        return conditioner.to(args.device)


def _pipeline_conditioner(folder: str, loading: tuple[type[BaseException], ...]) -> Any:
    """The conditioner of the pipeline in `folder`: a `CLIPConditionedPipeline`'s own (read as
    ``generate`` reads it), or `TextConditioner.from_pipeline` of a diffusers one (read with
    clipcond's pipelines, and so its tokenizer, imported). UsageError when it cannot be read."""
    import diffusers
    import torch

    from clipcond.conditioning import TextConditioner
    from clipcond.pipelines import CLIPConditionedPipeline
    from clipcond.pipelines.saved_folder_checks import check_pipeline_folder
    from clipcond.pipelines.saved_pipelines import SAVED_PIPELINE_CLASSES, load_pipeline

    context, index = f"--pipeline {folder}: ", Path(folder) / "model_index.json"
    loading = (*loading, RuntimeError)  # transformers' error for some damaged components (a config.json missing)
    if not Path(folder).is_dir():
        raise UsageError(f"--pipeline: no such folder {folder}")
    if not index.is_file():
        run = (Path(folder) / "pipeline").is_dir()
        raise UsageError(f"{context}no model_index.json: not a saved pipeline{' (a run: use its pipeline/)' * run}")
    with user_errors(OSError, ValueError, RecursionError, context=f"{context}model_index.json: "):
        config = json.loads(index.read_text(encoding="utf-8"))
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name in SAVED_PIPELINE_CLASSES:  # in float32, as a run reads its text tower
        with user_errors(*loading, context=context):
            return load_pipeline(folder, torch_dtype=torch.float32).conditioner
    if not isinstance(class_name, str) or not isinstance(getattr(diffusers, class_name, None), type):
        raise UsageError(
            f"{context}model_index.json names the pipeline class {class_name!r:.80}, which --pipeline cannot read: "
            f"give a saved {CLIPConditionedPipeline.__name__} or a diffusers pipeline"
        )
    with user_errors(*loading, context=context):
        check_pipeline_folder(folder)  # its damaged files named before any component loads
        return TextConditioner.from_pipeline(diffusers.DiffusionPipeline.from_pretrained(folder))


def _encode_into_shards(
    keyed_items: Iterable[tuple[str, Any]],
    encode: Callable[[list[Any]], Sequence[Any]],
    done: Any,
    args: argparse.Namespace,
    total: int | None,
    unit: str = "caption",
    spec: Any = None,
) -> int:
    """Encode the items of (key, item) pairs in batches of ``--batch-size`` (`encode`: items ->
    one record each) into new shards of the open `KeyedShards` `done`: its folder, kind and
    identity, numbered after its shards; returns how many shards were written. A shard is
    written once it is full, and the last one at the end. Records that are not finite or do
    not fit `spec` (a `RecordSpec`, or None), and an encoder giving NaN, stop the command
    (`RunFailed`): the shards written before stay, and a fixed model resumes."""
    from tqdm.auto import tqdm

    from clipcond.errors import RunFailed
    from clipcond.training.data.embedding_shards import UnfitRecord, write_shard
    from clipcond.window_encoding import NonFiniteEncoding

    pending: dict[str, Any] = {}
    out, identity, kind, first_index = done.folder, done.identity, done.kind, done.next_index
    index = first_index
    items = iter(keyed_items)
    with (
        user_errors(UnfitRecord, NonFiniteEncoding, error=RunFailed, context="stopped, the shards written kept: "),
        tqdm(total=total, unit=unit, desc="encode", disable=args.no_progress) as progress,
    ):
        while batch := list(itertools.islice(items, args.batch_size)):
            for (key, _), record in zip(batch, encode([item for _, item in batch])):
                pending[key] = record
                if len(pending) == args.shard_size:
                    write_shard(out, index, pending, identity, kind, spec)
                    index, pending = index + 1, {}
            progress.update(len(batch))
        if pending:
            write_shard(out, index, pending, identity, kind, spec)
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
