"""Cache keys of encoded prompts: everything an `EncodedPrompt` depends on, hashed.

A key covers the encoders' weights (a `WeightsWatch` state in memory, a content hash on
disk), each encoder's tokenizer (`clipcond.tokenizer_fingerprint`) and config
(`clipcond.config_fingerprint`), the dtype each computes in, the active recipe
(clip-skip included), whether weights are parsed and in which syntax, each encoder's class,
window length, mask use and attention kernel, and the text each encoder reads (`reading_keys`:
with per-encoder prompts, such as SDXL's `prompt_2`, the encoders of one prompt read different
texts). Any Python string makes a key, lone surrogates included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from clipcond.encoders import TextEncoder
from clipcond.recipes import Recipe

# Bump when the meaning of cached records changes, so old files on disk are never read.
# v2: keys cover the tokenizers; files record their key and are checked when read.
# v3: records hold the pooled state before the text projection (applied at assembly).
# v4: files record a digest of their tensors' bytes (older files would all read as damaged).
# v5: a multi-vector textual-inversion token stays in one window; BREAK always closes a window
#     (a prompt's windows changed for both).
# v6: keys cover each encoder's config (`clipcond.config_fingerprint`): the same weights under
#     another activation or norm eps give other states; and the dtype it computes in
#     (`compute_dtype` no longer casts the weights, so their hash no longer tells).
CACHE_KEY_VERSION = "clipcond-embeds-v6"


def settings_key(
    recipe: Recipe,
    parse_weights: bool,
    encoders: Sequence[TextEncoder],
    tokenizer_fingerprints: Sequence[str],
    config_fingerprints: Sequence[str],
    syntax: str = "a1111",
) -> str:
    """The part of every key that the conditioner's settings, tokenizers and model configs decide.

    Args:
        tokenizer_fingerprints: one per encoder, in the order of `encoders`
            (`clipcond.tokenizer_fingerprint.TokenizerFingerprints`).
        config_fingerprints: one per encoder, in the order of `encoders`
            (`clipcond.config_fingerprint.ConfigFingerprints`).
        syntax: the prompt syntax ("a1111", "compel", "comfy"): the same text reads other weights in
            another. A1111's, the default, adds nothing, so keys made before the setting
            existed still hold.
    """
    for name, fingerprints in (
        ("tokenizer_fingerprints", tokenizer_fingerprints),
        ("config_fingerprints", config_fingerprints),
    ):
        if len(fingerprints) != len(encoders):
            raise ValueError(f"`{name}` must have one entry per encoder ({len(encoders)}), got {len(fingerprints)}")
    parts = [
        CACHE_KEY_VERSION,
        repr(recipe),
        f"parse={parse_weights}" + ("" if syntax == "a1111" else f":syntax={syntax}"),
        *(
            f"{type(e.model).__name__}:{e.window_length}:{e.uses_attention_mask}:{_attention(e.model)}:computes_in={e.computes_in}:tokenizer={tokenizer}:config={config}"
            for e, tokenizer, config in zip(encoders, tokenizer_fingerprints, config_fingerprints)
        ),
    ]
    return "|".join(parts)


def _attention(model) -> str:
    """The attention kernel transformers runs the model with ("sdpa", "eager", ...): kernels
    agree only to ~1e-7, and `set_attn_implementation` changes no weight."""
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None))


def prompt_keys(weights_id: str, settings: str, texts: Sequence[str]) -> list[str]:
    """One hex key (sha256) per text, under the given weights identity and settings."""
    prefix = f"{weights_id}|{settings}|"
    # surrogatepass: a lone surrogate (any str can hold one) encodes instead of raising, and
    # distinct strings still give distinct bytes.
    return [hashlib.sha256((prefix + text).encode("utf-8", "surrogatepass")).hexdigest() for text in texts]


def reading_keys(weights_id: str, settings: str, readings: Sequence[Sequence[str]]) -> list[str]:
    """One hex key (sha256) per reading: the text each encoder reads, in encoder order.

    A reading whose encoders all read one text keys as that text does in `prompt_keys`, so
    files cached before per-encoder prompts stay valid. Any other reading hashes a 0xFF byte
    after the prefix, then each text length-prefixed: no UTF-8 text (surrogates included)
    holds a 0xFF byte, so it never meets a single text's key, and the texts cannot run into
    one another.
    """
    keys = []
    for reading in readings:
        if len(set(reading)) == 1:
            keys.extend(prompt_keys(weights_id, settings, reading[:1]))
            continue
        digest = hashlib.sha256(f"{weights_id}|{settings}|".encode("utf-8", "surrogatepass") + b"\xff")
        for text in reading:
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        keys.append(digest.hexdigest())
    return keys
