"""How many attention heads a converted CLIP tower has: the one size its checkpoint does not store.

Head counts, unless given: the text tower has width // 64 heads (OpenAI's rule, which every
shipped open_clip text tower follows); the image tower has width // 64 heads below width 1024
and 16 heads from 1024 up (`vision_heads_for_width`), which is OpenAI's rule for its ViT-B and
ViT-L and open_clip's `head_width` for its big towers. Checked against open_clip 3.3.0's
`model_configs/*.json` (heads = width // head_width):

| vision width | heads | head width | open_clip configs (and their -quickgelu / -336 / -378 / ... variants) |
|---|---|---|---|
| 384 | 6 | 64 | ViT-S-16, ViT-S-32 (-alt) |
| 512 | 8 | 64 | ViT-M-16, ViT-M-32 (-alt) |
| 768 | 12 | 64 | ViT-B-16, ViT-B-32 (-256), OpenAI ViT-B/16, ViT-B/32 |
| 896 | 14 | 64 | ViT-B-16-plus (-240), ViT-B-32-plus-256 |
| 1024 | 16 | 64 | ViT-L-14, ViT-L-16 (-280, -320, -336), OpenAI ViT-L/14, Long-CLIP-L |
| 1280 | 16 | 80 | ViT-H-14, ViT-H-16 (-378) |
| 1408 | 16 | 88 | ViT-g-14 |
| 1664 | 16 | 104 | ViT-bigG-14 |
| 1792 | 16 | 112 | ViT-e-14 |

Text widths 256 to 1280 (4 to 20 heads) all follow width // 64. A model trained with other
head counts needs them given (`--text-heads` / `--vision-heads`).
"""

from __future__ import annotations

import numbers

# From this image-tower width on, open_clip's shipped ViTs keep 16 heads and widen each head
# (ViT-H 80, ViT-g 88, ViT-bigG 104, ViT-e 112); below it, heads are 64 wide as in OpenAI's models.
_WIDE_VISION_FROM = 1024
_WIDE_VISION_HEADS = 16


def vision_heads_for_width(width: int) -> int:
    """The image tower's attention heads for its width: width // 64 below 1024, 16 from 1024 up.

    OpenAI's ViTs and every ViT config open_clip 3.3.0 ships follow it (the table above); a
    tower trained otherwise needs `vision_heads` given.
    """
    if width < _WIDE_VISION_FROM:
        return _width_over_64(width, "vision")
    if width % _WIDE_VISION_HEADS:
        raise ValueError(
            f"vision width {width} is not a multiple of {_WIDE_VISION_HEADS}, so open_clip's "
            f"{_WIDE_VISION_HEADS}-head rule for wide towers does not apply; pass vision_heads (--vision-heads)"
        )
    return _WIDE_VISION_HEADS


def given_heads(heads: int | None, width: int, tower: str) -> int | None:
    """`heads` as a Python int when it splits `width` into equal heads (a numpy integer reads as
    the int it holds); None when not given."""
    if heads is None:
        return None
    if isinstance(heads, bool) or not isinstance(heads, numbers.Integral):
        raise TypeError(f"{tower}_heads must be an int (attention heads of the {tower} tower), got {heads!r}")
    if heads <= 0 or width % heads:
        raise ValueError(f"{tower}_heads (--{tower}-heads) {heads} does not divide the {tower} width {width}")
    return int(heads)


def text_heads_for_width(width: int) -> int:
    """The text tower's attention heads for its width: width // 64 (every shipped text tower)."""
    return _width_over_64(width, "text")


def _width_over_64(width: int, tower: str) -> int:
    if width % 64:
        raise ValueError(
            f"{tower} width {width} is not a multiple of 64, so OpenAI's heads = width // 64 rule does not apply; "
            f"pass {tower}_heads (--{tower}-heads)"
        )
    return width // 64
