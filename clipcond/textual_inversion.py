"""Textual-inversion embeddings: read the common file formats, add their tokens to CLIP encoders.

The formats, as diffusers' `load_textual_inversion` reads them, plus the SDXL pairs:
- diffusers: ``learned_embeds.safetensors`` / ``learned_embeds.bin`` holding {token: vectors},
  or a folder holding one of them;
- A1111 ``.pt``: {"string_to_param": {"*": vectors}, "name": token, ...};
- A1111 ``.safetensors``: {"emb_params": vectors}; the token is the file's name, as A1111 calls
  it (diffusers would call it "emb_params": pass `token=` to be explicit);
- SDXL and SD3 (A1111, civitai): {"clip_l": vectors, "clip_g": vectors}, one set per CLIP;
- a tensor or a state dict of any of these, with `token=`.
Vectors are (vectors, width) or (width,). A ``.pt`` / ``.bin`` file is read with
``torch.load(weights_only=True)`` only: a file that needs full unpickling (which can run code)
is refused.

A token of several vectors becomes the tokens ``token``, ``token_1``, ... as in diffusers, and a
prompt naming it is expanded to all of them (`expand_tokens`, diffusers' `maybe_convert_prompt`),
whoever loaded it: this module or diffusers' own loader.
Adding resizes the encoder's input-embedding table and adds the tokens to its tokenizer, as
diffusers does; every check runs before anything changes. An encoder under accelerate's
sequential offload (`cpu_offload`, which diffusers' `enable_sequential_cpu_offload` applies) has
its hooks taken off for the change and put back as they were, as diffusers' loader does
(`sequential_offload`, `offload_lifted`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcond.encoders import TextEncoder

# The keys of SDXL / SD3 embedding files, in the order of the pipelines' CLIP encoders.
PAIR_KEYS: tuple[str, ...] = ("clip_l", "clip_g")
# What diffusers looks for in a folder, safetensors first.
FOLDER_FILES: tuple[str, ...] = ("learned_embeds.safetensors", "learned_embeds.bin")


@dataclass(frozen=True)
class TextualInversion:
    """One embedding as read from its source.

    Attributes:
        token: the token that names it in prompts.
        vectors: (vectors, width) float tensors, by encoder: "clip_l" and "clip_g" for a pair,
            None for a file made for one encoder.
        source: where it came from, for messages ("the file x.pt", "the state dict").
    """

    token: str
    vectors: Mapping[str | None, torch.Tensor]
    source: str


def read_textual_inversion(path_or_state_dict: Any, token: str | None = None) -> TextualInversion:
    """Read an embedding in any of the module's formats.

    Args:
        path_or_state_dict: a file or folder path, a state dict, or a tensor of vectors.
        token: the token to use; None: the one the source names (diffusers' key, A1111's
            `name`, or the file's name for `emb_params` and pairs).

    Raises:
        FileNotFoundError: no such file, or a folder without `learned_embeds.*`.
        TypeError, ValueError: an unknown layout, a file needing full unpickling, no token,
            or vectors that are not (vectors, width) floats.
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise TypeError(f"`token` must be a non-empty string or None, got {token!r}")
    stem = None
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = _embedding_file(Path(path_or_state_dict))
        source, stem = f"the file {path}", path.stem
        contents = _load(path)
    elif isinstance(path_or_state_dict, (Mapping, torch.Tensor)):
        source, contents = "the state dict", path_or_state_dict
    else:
        raise TypeError(
            "`path_or_state_dict` must be a file or folder path, a state dict or a tensor, "
            f"got {type(path_or_state_dict).__name__}"
        )
    named, vectors = _layout(contents, source, stem)
    chosen = token or named
    if chosen is None:
        raise ValueError(f"{source} does not name its token: pass `token=`")
    if not isinstance(chosen, str) or not chosen or chosen.split() != [chosen] or chosen in _PROMPT_SYNTAX_WORDS:
        raise ValueError(
            f"{source} names the token {chosen!r}, which no prompt could use (a token is one word without spaces, "
            f"not {' or '.join(_PROMPT_SYNTAX_WORDS)}): pass another `token=`"
        )
    return TextualInversion(
        chosen, {encoder: as_vectors(tensor, source, encoder) for encoder, tensor in vectors.items()}, source
    )


# words the prompt language reads as syntax, so a token of that name could never be used
_PROMPT_SYNTAX_WORDS = ("BREAK", "AND")


def _embedding_file(path: Path) -> Path:
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"the folder {path} holds no textual-inversion file (expected one of {FOLDER_FILES})")
    if not path.is_file():
        raise FileNotFoundError(f"no textual-inversion file at {path}")
    return path


def _load(path: Path) -> Any:
    """The contents of `path`: safetensors, or a torch file read with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except SafetensorError as error:
            raise ValueError(f"the file {path} is not a readable safetensors file: {error}") from error
    from clipcond.torch_files import NeedsUnpickling, NotATorchFile, load_weights_only

    try:
        return load_weights_only(path)
    except NeedsUnpickling as error:
        raise ValueError(
            f"the file {path} needs full unpickling to load (it holds objects other than tensors and plain "
            "containers, and unpickling can run code): it is read with torch.load(weights_only=True) only, "
            f"and refused ({error.reason}). Convert it to safetensors where you trust it."
        ) from error
    except NotATorchFile as error:
        raise ValueError(
            f"the file {path} is not a torch or safetensors file that torch.load(weights_only=True) reads: "
            f"{error.reason}"
        ) from error


def _layout(contents: Any, source: str, stem: str | None) -> tuple[str | None, dict[str | None, Any]]:
    """(the token the source names or None, vectors by encoder) of a loaded embedding."""
    if isinstance(contents, torch.Tensor):
        return None, {None: contents}
    if not isinstance(contents, Mapping):
        raise ValueError(f"{source} holds a {type(contents).__name__}, not a state dict of embedding vectors")
    keys = set(contents)
    if keys == set(PAIR_KEYS):
        return stem, {key: contents[key] for key in PAIR_KEYS}
    if "string_to_param" in contents:  # A1111 .pt
        params = contents["string_to_param"]
        if not isinstance(params, Mapping) or "*" not in params:
            raise ValueError(f"{source}: `string_to_param` must be a dict with the key '*' (A1111's layout)")
        name = contents.get("name")
        return (name if isinstance(name, str) and name else stem), {None: params["*"]}
    if keys == {"emb_params"}:  # A1111 .safetensors: named by its file
        return stem, {None: contents["emb_params"]}
    if len(contents) == 1:  # diffusers: {token: vectors}
        ((name, tensor),) = contents.items()
        return str(name), {None: tensor}
    raise ValueError(
        f"{source} has the keys {sorted(map(str, keys))[:8]}, which is no textual-inversion layout: expected "
        "{token: vectors} (diffusers), `string_to_param` (A1111 .pt), `emb_params` (A1111 .safetensors) or "
        "`clip_l` and `clip_g` (SDXL, SD3)"
    )


def as_vectors(tensor: Any, source: str, encoder: str | None) -> torch.Tensor:
    """`tensor` as (vectors, width) floats, detached: a ValueError naming `source` (and
    `encoder`, the key of a pair) unless it is a float tensor of shape (vectors, width) or
    (width,) with at least one vector and only finite values."""
    where = source if encoder is None else f"{source} (`{encoder}`)"
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError(f"{where} must hold a float tensor of vectors, got {tensor!r:.80}")
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(f"{where} must hold vectors of shape (vectors, width) or (width,), got {tuple(tensor.shape)}")
    # in float32: torch has no isfinite for float8 files, which diffusers loads (cast to the table's dtype)
    if not bool(torch.isfinite(tensor.float()).all()):
        raise ValueError(f"{where} holds NaN or infinite values (a damaged file?)")
    return tensor.detach()


def vector_tokens(token: str, count: int) -> list[str]:
    """diffusers' names of a `count`-vector token: [token, token_1, ..., token_{count-1}]."""
    return [token, *(f"{token}_{index}" for index in range(1, count))]


def _describe(encoder: TextEncoder, index: int) -> str:
    return f"CLIP encoder {index + 1} ({type(encoder.model).__name__}, width {encoder.width})"


def placements(embedding: TextualInversion, clip: Sequence[TextEncoder]) -> list[tuple[int, torch.Tensor]]:
    """(CLIP encoder index, its vectors) for each encoder the embedding goes into.

    A pair goes into two CLIPs as its keys say (`clip_l` the first, `clip_g` the second, as in
    SDXL and SD3 pipelines); into one CLIP, the half of its width. A single set goes into the
    one CLIP of its width.

    Raises:
        ValueError: no CLIP encoder, a width that fits no encoder (naming the source, the
            encoder and both widths), or one that fits several.
    """
    if not clip:
        raise ValueError("textual inversion needs a CLIP encoder; this conditioner has none (T5 reads no embeddings)")
    source, vectors = embedding.source, embedding.vectors
    widths = ", ".join(_describe(encoder, index) for index, encoder in enumerate(clip))
    if None not in vectors and len(clip) == 2:
        placed = [(index, vectors[key]) for index, key in enumerate(PAIR_KEYS)]
        for index, tensor in placed:
            if tensor.shape[1] != clip[index].width:
                raise ValueError(
                    f"{source}: `{PAIR_KEYS[index]}` holds vectors of width {tensor.shape[1]}, but it goes into "
                    f"{_describe(clip[index], index)}, whose embeddings have width {clip[index].width}"
                )
        return placed
    if None not in vectors and len(clip) > 2:
        raise ValueError(
            f"{source} holds a `clip_l`/`clip_g` pair, which fits one or two CLIP encoders, not {len(clip)}"
        )
    fits = [
        (index, key, tensor)
        for key, tensor in vectors.items()
        for index, encoder in enumerate(clip)
        if tensor.shape[1] == encoder.width
    ]
    if not fits:
        sizes = " and ".join(f"{tensor.shape[1]}" + (f" (`{key}`)" if key else "") for key, tensor in vectors.items())
        raise ValueError(f"{source} holds vectors of width {sizes}, which fits none of the encoders: {widths}")
    if len(fits) > 1:
        raise ValueError(
            f"{source} fits several encoders ({widths}): it does not say which one it was made for; "
            "save it as a {'clip_l': ..., 'clip_g': ...} pair, one set per encoder"
        )
    index, _, tensor = fits[0]
    return [(index, tensor)]


def check_new_tokens(encoder: TextEncoder, index: int, names: Sequence[str], source: str) -> None:
    """A ValueError when the tokenizer of `encoder` already has one of `names`."""
    vocabulary = encoder.tokenizer.get_vocab()
    taken = [name for name in names if name in vocabulary]
    if taken:
        raise ValueError(
            f"{source}: the token(s) {taken} are already in the tokenizer of {_describe(encoder, index)}; "
            "pass another `token=`"
        )


def add_vectors(encoder: TextEncoder, names: Sequence[str], vectors: torch.Tensor) -> None:
    """Add `names` to the tokenizer and their rows (`vectors`: (len(names), width)) to the
    encoder's input embeddings, as diffusers' `load_textual_inversion` does: the table is
    resized to the tokenizer's new size (spare rows past the tokenizer go, as there), with
    transformers' mean resizing, which draws from the global RNG as diffusers' load draws; the
    rows keep the table's dtype and device."""
    model, tokenizer = encoder.model, encoder.tokenizer
    # A new table object: the weights watch of every cache sees the change.
    model.resize_token_embeddings(len(tokenizer) + len(names))
    table = model.get_input_embeddings().weight
    tokenizer.add_tokens(list(names))
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(names)), device=table.device)
    with torch.no_grad():
        table[ids] = vectors.to(device=table.device, dtype=table.dtype)


@dataclass(frozen=True)
class SequentialOffload:
    """The arguments of the accelerate `cpu_offload` that placed a model's hooks."""

    execution_device: torch.device
    offload_buffers: bool
    preload_module_classes: tuple[str, ...]


def sequential_offload(encoder: TextEncoder, index: int) -> SequentialOffload | None:
    """How accelerate's `cpu_offload` offloads the model of `encoder` (its weights resting on
    the meta device, their values in the hooks' in-memory state dict); None when no hook
    offloads any of its weights (no hooks, or `enable_model_cpu_offload`'s, which move the
    weights but keep them).

    Raises:
        ValueError: offloading `cpu_offload` did not make (to disk, or by `dispatch_model`'s
            device map), which this module could not put back as it was, or an input-embedding
            table on the meta device that no hook holds values for.
    """
    hooks = [
        (part, candidate)
        for part in encoder.model.modules()
        for hook in (part.__dict__.get("_hf_hook"),)
        if hook is not None
        for candidate in getattr(hook, "hooks", (hook,))  # a SequentialHook holds several
        if getattr(candidate, "offload", False)
    ]
    table = encoder.model.get_input_embeddings().weight
    if not hooks:
        if table.device.type == "meta":
            raise ValueError(
                f"the input embeddings of {_describe(encoder, index)} are on the meta device and no accelerate "
                "offload hook holds their values: load the model's weights before loading an embedding"
            )
        return None
    settings = {(hook.execution_device, hook.offload_buffers) for _, hook in hooks}
    in_memory = all(isinstance(getattr(hook.weights_map, "dataset", None), dict) for _, hook in hooks)
    if len(settings) != 1 or not in_memory:
        raise ValueError(
            f"{_describe(encoder, index)} is offloaded by accelerate in a way other than `cpu_offload` / "
            "`enable_sequential_cpu_offload` (to disk, or by a device map), which loading an embedding could "
            "not put back as it was: load the embedding before offloading the model"
        )
    ((device, buffers),) = settings
    preload = tuple(sorted({type(part).__name__ for part, hook in hooks if hook.place_submodules}))
    return SequentialOffload(torch.device(device), bool(buffers), preload)


@contextmanager
def offload_lifted(encoder: TextEncoder, offload: SequentialOffload | None) -> Iterator[None]:
    """While inside, the model of `encoder` has no accelerate hooks and its weights are in
    memory (where `offload`, from `sequential_offload`, says they rest on the meta device);
    then `cpu_offload` puts them back with the same arguments (also when the body raised), as
    diffusers' `load_textual_inversion` takes its hooks off and puts them back."""
    if offload is None:
        yield
        return
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(encoder.model, recurse=True)  # its weights back from the hooks' state dict
    try:
        yield
    finally:
        cpu_offload(
            encoder.model,
            offload.execution_device,
            offload_buffers=offload.offload_buffers,
            preload_module_classes=list(offload.preload_module_classes) or None,
        )


def multi_vector_tokens(tokenizer: Any) -> dict[str, list[str]]:
    """Every multi-vector token `tokenizer` holds -> its vector tokens, by diffusers' rule:
    ``token`` and ``token_1`` are added tokens (then ``token_2``, ... while they exist)."""
    added = getattr(tokenizer, "added_tokens_encoder", {})
    found = {}
    for token in added:
        count = 1
        while f"{token}_{count}" in added:
            count += 1
        if count > 1:
            found[token] = vector_tokens(token, count)
    return found


def expand_tokens(text: str, tokenizer: Any, multi_vector: Mapping[str, Sequence[str]]) -> str:
    """`text` with each multi-vector token (`multi_vector`: token -> its vector tokens) that the
    tokenizer finds in it replaced by all its vector tokens, as diffusers' `maybe_convert_prompt`
    does ("a <cat>" -> "a <cat> <cat>_1"). A token whose every occurrence is already followed by
    its other vectors (a pipeline's `maybe_convert_prompt` ran on the text) is left as it is, so
    expanding twice changes nothing."""
    if not multi_vector:
        return text
    from clipcond.tokenizer_warnings import without_length_warning  # lazily: `import clipcond` leaves it unloaded

    with without_length_warning(tokenizer):  # long prompts are windowed: transformers' warning is false
        tokens = tokenizer.tokenize(text)
    for token in dict.fromkeys(token for token in tokens if token in multi_vector):
        names = list(multi_vector[token])
        starts = [index for index, found in enumerate(tokens) if found == token]
        if all(tokens[index : index + len(names)] == names for index in starts):
            continue
        text = text.replace(token, " ".join(names))
    return text
