"""Textual-inversion loading for clipcond's pipelines: diffusers' `load_textual_inversion`,
and SDXL's embedding files in one call.

An SDXL (or SD3) embedding file holds one set of vectors per CLIP, ``{"clip_l": ..., "clip_g":
...}`` (A1111, civitai). diffusers' loader refuses such a file ("Loaded state dictionary is
incorrect") and documents two calls instead, each with one half and the encoder and tokenizer
it goes into. `TextConditioner.load_textual_inversion` reads the pair and places each half in
its CLIP (`clipcond.textual_inversion`), and the pipeline's encoders and tokenizers are the
conditioner's, so `pipe.load_textual_inversion(pair)` hands a pair to it; everything else goes
to diffusers' loader, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import TextualInversionLoaderMixin

from clipcond.textual_inversion import FOLDER_FILES, PAIR_KEYS, as_vectors, multi_vector_tokens


class PairTextualInversionLoaderMixin(TextualInversionLoaderMixin):
    """diffusers' `TextualInversionLoaderMixin`, whose `load_textual_inversion` also takes a
    `clip_l` / `clip_g` pair (a file, a folder holding one, or a state dict) in one call. For a
    pipeline with a `conditioner` (`CLIPConditionedPipeline` and its siblings)."""

    def load_textual_inversion(
        self,
        pretrained_model_name_or_path: Any,
        token: str | list[str] | None = None,
        tokenizer: Any = None,
        text_encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """Load textual-inversion embeddings, as diffusers' `load_textual_inversion` does.

        A `clip_l` / `clip_g` pair, given with neither `tokenizer` nor `text_encoder` nor
        loading options, is loaded by `self.conditioner.load_textual_inversion`: `clip_l`
        into the first CLIP, `clip_g` into the second (a pipeline with one CLIP takes the half
        of its width, e.g. SDXL's refiner), as diffusers' documented two calls load it.
        `token` None: the file's name.

        Raises:
            TypeError: a `token` that is no string, non-empty list of strings or None, or a
                source that is no path, state dict or tensor (or a list of them), before
                anything changes (diffusers' loader resizes the text encoder's embedding table
                first, then fails inside the tokenizer: for a `token` of 1.5, 0 or a tuple it
                left 3 rows more in the table than tokens in the tokenizer).
            ValueError: a list of sources that holds a pair (load each pair in its own
                call), or what the conditioner's or diffusers' loader raises.
        """
        source = pretrained_model_name_or_path
        _check_arguments(source, token)
        if isinstance(source, list) and any(_holds_a_pair(item) for item in source):
            raise ValueError(
                "a list of textual-inversion sources holds a `clip_l`/`clip_g` pair: load each pair in its own "
                "`load_textual_inversion` call (one call loads both of its halves)"
            )
        if tokenizer is None and text_encoder is None and not kwargs and _holds_a_pair(source):
            if token is not None and not isinstance(token, str):
                raise TypeError(f"`token` for one `clip_l`/`clip_g` pair must be a string or None, got {token!r}")
            self.conditioner.load_textual_inversion(source, token)
            return
        super().load_textual_inversion(source, token, tokenizer, text_encoder, **kwargs)

    @staticmethod
    def _retrieve_tokens_and_embeddings(tokens: Any, state_dicts: Any, tokenizer: Any) -> tuple[list, list]:
        """diffusers' step of `load_textual_inversion` that reads each source's token and
        vectors, then the conditioner's check of the vectors (`as_vectors`: a float tensor of
        shape (vectors, width) or (width,), finite), before the loader changes the tokenizer or
        the text encoder. diffusers' own loader took NaN vectors, and a 3-D tensor failed after
        its token was added and the embedding table grown."""
        tokens, embeddings = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings(tokens, state_dicts, tokenizer)
        for token, embedding in zip(tokens, embeddings):
            as_vectors(embedding, f"the textual-inversion source for token {token!r}", None)
        return tokens, embeddings

    def unload_textual_inversion(
        self, tokens: str | list[str] | None = None, tokenizer: Any = None, text_encoder: Any = None
    ) -> None:
        """Unload textual-inversion tokens, as diffusers' `unload_textual_inversion` does, with
        two differences that make it undo `load_textual_inversion`:

        - a multi-vector token named in `tokens` goes with all its vectors (``<cat>`` takes
          ``<cat>_1``, ... too; diffusers' removes only the names given, leaving the others);
        - given neither `tokenizer` nor `text_encoder`, it unloads from every CLIP of the
          pipeline (`tokenizer` / `text_encoder` and `tokenizer_2` / `text_encoder_2` where it
          has them), since one `load_textual_inversion` call loads an SDXL pair into both.
          Given one of them, the other is the pipeline's first (`tokenizer` / `text_encoder`),
          as in diffusers.

        `tokens` None: every token added to a tokenizer, as in diffusers. Named tokens are
        unloaded from the CLIPs that hold them (diffusers' unloader, run on a CLIP without them,
        raised after the first CLIP had unloaded its own).

        Raises:
            TypeError: `tokens` that are no string, non-empty list (or tuple) of strings or
                None, before anything is unloaded. diffusers read an empty list or dict as
                None and unloaded every token, and failed on other kinds with Python's own
                message.
            ValueError: no CLIP holds any of the named tokens; one of `tokenizer` and
                `text_encoder` given, and the pipeline has no first CLIP to take the other from.
        """
        if tokens is not None and not isinstance(tokens, str):
            if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
                raise TypeError(
                    "`tokens` must be a token, a non-empty list of tokens, or None (every token loaded), got "
                    f"{tokens!r:.80}"
                )
        if tokenizer is not None or text_encoder is not None:
            tokenizer = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)
            text_encoder = text_encoder if text_encoder is not None else getattr(self, "text_encoder", None)
            if tokenizer is None or text_encoder is None:
                given, missing = ("text_encoder", "tokenizer") if tokenizer is None else ("tokenizer", "text_encoder")
                raise ValueError(
                    f"`{missing}` is needed beside the `{given}` given: this pipeline has no `{missing}` to take it from"
                )
            pairs = [(tokenizer, text_encoder)]
        else:
            names = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
            pairs = [(getattr(self, t, None), getattr(self, e, None)) for t, e in names]
            pairs = [(t, e) for t, e in pairs if t is not None and e is not None]
        if tokens is None:
            for tokenizer, text_encoder in pairs:
                super().unload_textual_inversion(None, tokenizer, text_encoder)
            return
        # each CLIP unloads the named tokens it holds (a token loaded into one CLIP of two is
        # unloaded from that one); none held anywhere is refused before anything changes
        held = [
            (tokenizer, text_encoder, _held(_with_vectors(tokens, tokenizer), tokenizer))
            for tokenizer, text_encoder in pairs
        ]
        if not any(names for _, _, names in held):
            raise ValueError(f"`tokens`: no textual-inversion token {tokens!r} is loaded (no tokens to remove found)")
        for tokenizer, text_encoder, names in held:
            if names:
                super().unload_textual_inversion(names, tokenizer, text_encoder)


def _check_arguments(source: Any, token: Any) -> None:
    """Refuse a source or `token` of a type diffusers' loader does not take (its documented
    types: a path, a state dict or a tensor, or a list of them; a string, a list of strings or
    None), before the loader changes anything."""
    sources = source if isinstance(source, list) else [source]
    for item in sources:
        if not isinstance(item, (str, os.PathLike, Mapping, torch.Tensor)):
            raise TypeError(
                "`pretrained_model_name_or_path` must be a path or hub id, a state dict or a tensor of vectors (or a "
                f"list of them), got {type(item).__name__}"
            )
    if token is None or isinstance(token, str):
        return
    if not isinstance(token, list) or not token or not all(isinstance(name, str) for name in token):
        raise TypeError(
            "`token` must be a string, a non-empty list of strings (one per source) or None (the name the source "
            f"gives), got {token!r}"
        )


def _with_vectors(tokens: str | list[str], tokenizer: Any) -> list[str]:
    """`tokens` with the vector names of each multi-vector token among them."""
    multi_vector = multi_vector_tokens(tokenizer)
    names = [tokens] if isinstance(tokens, str) else list(tokens)
    return [vector for name in names for vector in multi_vector.get(name, [name])]


def _held(names: list[str], tokenizer: Any) -> list[str]:
    """Those of `names` that `tokenizer` holds as added (non-special) tokens, which is what
    diffusers' unloader can remove."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if not token.special}
    return [name for name in names if name in added]


def _holds_a_pair(source: Any) -> bool:
    """Whether `source` (a state dict, or the path of a local file or folder) is a
    `clip_l` / `clip_g` pair. A file that cannot be read is not: diffusers' loader then says why."""
    if isinstance(source, Mapping):
        return set(source) == set(PAIR_KEYS)
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = Path(source)
    if path.is_dir():
        path = next((path / name for name in FOLDER_FILES if (path / name).is_file()), path)
    if not path.is_file():
        return False  # a Hub id, or nothing: diffusers' loader
    return _keys_of(path) == set(PAIR_KEYS)


def _keys_of(path: Path) -> set[str]:
    """The top-level keys of an embedding file (empty when it is not a readable dict)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as opened:
                return set(opened.keys())
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: diffusers' loader reports it
        return set()
    return set(contents) if isinstance(contents, Mapping) else set()


__all__ = ["PairTextualInversionLoaderMixin"]
