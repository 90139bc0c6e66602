"""The names of the rules that cut a full CLIP window (`clipcond.chunking` applies them) and their
check.

Kept apart from the tensor code, as the emphasis modes are, so that the command line can offer
them without importing torch.
"""

from __future__ import annotations

# "word": the partial word moves to the next window (clipcond's); "a1111": what follows the
# last comma within 20 tokens moves, else the window ends at its 75th token (A1111's);
# "comfy": a space-separated word of fewer than 8 tokens moves whole, a longer one is split
# (ComfyUI's); "truncate": one window, the first 75 tokens, the rest dropped (diffusers'
# `encode_prompt`, and its training scripts' tokenization).
WINDOW_SPLITS: tuple[str, ...] = ("word", "a1111", "comfy", "truncate")
DEFAULT_WINDOW_SPLIT = "word"


def check_window_split(window_split: object, argument: str = "window_split") -> str:
    """`window_split` if it names a rule of `WINDOW_SPLITS`; a ValueError naming the argument."""
    if not isinstance(window_split, str) or window_split not in WINDOW_SPLITS:
        raise ValueError(f"`{argument}` must be one of {WINDOW_SPLITS}, got {window_split!r}")
    return window_split
