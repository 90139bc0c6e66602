"""``clipcond convert-clip``: an OpenAI CLIP, open_clip or Long-CLIP ViT checkpoint -> a `save_clip` folder.

A Long-CLIP checkpoint (its `positional_embedding_res` tells it apart) becomes a text tower with
248 positions and a tokenizer of 248 tokens, so a `TextConditioner` built on the folder reads
248-token windows (`clipcond.models.convert` says how its two position tables become one).

Pickle-based checkpoints (``.pt``, ``.pth``, ``.bin``, OpenAI's TorchScript archives) can run
code when loaded, so they are read only with ``--trust-pickle``; ``.safetensors`` files need
no flag. The output folder is written next to its final place (a hidden folder of this process's
own) and renamed into it, so a failed conversion leaves nothing half-written, and an existing
folder is never overwritten: of two runs with the same --output at once, the first to finish
keeps it and the other is refused.

Neither the head counts nor the activation are stored in the weights. The defaults (text: width //
64 heads; image: width // 64 below width 1024, 16 from 1024 up, which fits OpenAI's models and
every ViT config of open_clip 3.3.0, ViT-H/g/bigG/e included; QuickGELU) and what was used are
printed; `--text-heads`, `--vision-heads` and `--gelu` change them. Refused with the reason: a
vocabulary other than CLIP's 49408 BPE tokens (open_clip's *-worldwide, CLIPA), CLIPA's missing
`visual.ln_pre`, tensors a transformers CLIPModel has no place for, a tensor whose shape disagrees
with the sizes the others give (the key named). Not supported and not visible
in the weights, so not refused: open_clip's text `pool_type` first / last / eos (with an id other
than 49407), `no_causal_mask`, and the vision `pool_type` avg / none.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from clipcond.errors import UsageError, add_debug_argument, run_command, user_errors
from clipcond.output_paths import check_output_location, nameable_path

_EPILOG = (
    "Not supported, and not visible in the weights, so not refused: open_clip's text pool_type "
    "first / last / eos (with an end id other than 49407), text no_causal_mask, vision pool_type avg / none. "
    "Refused: a vocabulary other than CLIP's 49408 BPE tokens (open_clip's *-worldwide, CLIPA), "
    "CLIPA's missing visual.ln_pre, ResNet towers, tensors a transformers CLIPModel has no place for "
    "(ls_init_value, attention pooling, proj_bias), tensors whose shapes disagree with each other."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `convert-clip`, and in its help what it does not support."""
    parser.epilog = _EPILOG
    parser.add_argument(
        "--checkpoint", required=True, help="OpenAI / open_clip / Long-CLIP ViT weights (.pt, .bin, .safetensors)"
    )
    parser.add_argument("--output", required=True, help="new folder for the converted model (must not exist)")
    parser.add_argument(
        "--gelu",
        action="store_true",
        help="plain GELU (open_clip models not named *-quickgelu); default QuickGELU, as OpenAI's models",
    )
    parser.add_argument("--text-heads", type=int, help="text attention heads (default width // 64)")
    parser.add_argument(
        "--vision-heads",
        type=int,
        help="image attention heads (default width // 64 below width 1024, 16 from 1024 up: OpenAI's "
        "models and open_clip's ViT configs S, M, B, B-plus, L, H, g, bigG, e)",
    )
    parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling a checkpoint you trust")


def _state_dict(loaded: Any) -> dict:
    """The tensors of whatever the checkpoint held: a state dict, an open_clip training
    checkpoint ({"state_dict": ...}) or a (TorchScript) module."""
    if hasattr(loaded, "state_dict") and callable(loaded.state_dict):
        return dict(loaded.state_dict())
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"]
    if isinstance(loaded, dict):
        return loaded
    raise ValueError(f"expected a state dict or a module, found {type(loaded).__name__}")


def _architecture_line(config: Any, args: argparse.Namespace) -> str:
    """What the weights do not say and the conversion chose: heads per tower, activation."""
    parts = []
    for tower, tower_config, given in (
        ("text", config.text_config, args.text_heads),
        ("vision", config.vision_config, args.vision_heads),
    ):
        heads, width = tower_config.num_attention_heads, tower_config.hidden_size
        source = f"--{tower}-heads" if given else "default"
        parts.append(f"{tower} heads: {heads} of width {width // heads} ({source})")
    activation = "gelu (--gelu)" if args.gelu else "quick_gelu (default; --gelu for plain GELU)"
    return f"{'; '.join(parts)}; activation: {activation}"


def run(args: argparse.Namespace) -> int:
    """Convert, check it loads, write atomically. Returns the exit status."""
    from safetensors import SafetensorError
    from transformers import CLIPModel

    from clipcond.models import ClipTwoTower, convert_openai_state_dict, save_clip
    from clipcond.training.checkpoint import load_pickle
    from clipcond.training.folder_writes import FolderTaken, writing_new_folder

    checkpoint, output = nameable_path(args.checkpoint, "--checkpoint"), nameable_path(args.output, "--output")
    if not checkpoint.is_file():
        raise UsageError(f"--checkpoint: no such file {checkpoint}")
    if output.exists():
        raise UsageError(f"--output {output} already exists; choose a new folder")
    check_output_location(output, "--output")
    # Reading the file: refused when untrusted, or unreadable (truncated, not a checkpoint)
    unreadable = (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError)
    with user_errors(*unreadable, context=f"--checkpoint {checkpoint}: "):
        state = _state_dict(load_pickle(checkpoint, trust_pickle=args.trust_pickle))
    with user_errors(ValueError, context=f"--checkpoint {checkpoint}: "):
        config, weights = convert_openai_state_dict(
            state, quick_gelu=not args.gelu, text_heads=args.text_heads, vision_heads=args.vision_heads
        )
    print(_architecture_line(config, args))
    model = CLIPModel(config)
    # convert_openai_state_dict checks every shape; what it might still miss is the checkpoint's fault too
    with user_errors(RuntimeError, context=f"--checkpoint {checkpoint}: "):
        model.load_state_dict(weights)
    try:
        with writing_new_folder(output) as temporary:  # a hidden folder of this run's own, renamed into place
            save_clip(ClipTwoTower.from_clip_model(model), temporary)
    except FolderTaken as error:
        raise UsageError(
            f"--output {output} was written by another run meanwhile; this conversion is not kept, choose a new folder"
        ) from error
    print(f"converted {checkpoint} -> {output} (text context {config.text_config.max_position_embeddings} tokens)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.clip.convert --checkpoint ... --output ...`."""
    parser = argparse.ArgumentParser(prog="convert_clip", description=__doc__)
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
