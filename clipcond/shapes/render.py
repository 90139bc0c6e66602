"""Drawing scenes: exact shape geometry, anti-aliased by supersampling.

Each object's coverage of every pixel is measured on a regular grid of
sub-pixel samples (the same as drawing at `supersample` times the size and
box-downsampling), then the object's colour is blended over the background by
that coverage. The judge reuses `shape_coverage` as its shape templates.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipcond.shapes.scene import Scene
from clipcond.shapes.vocab import BACKGROUND, COLOURS, SHAPES

MIN_IMAGE_SIZE = 16


def _default_supersample(size: int) -> int:
    # 8x8 samples per pixel at the small sizes where edges matter most; fewer
    # for large images, where a pixel is a small part of any edge.
    return 8 if size <= 128 else 4


def shape_coverage(
    shape: str,
    cx: float,
    cy: float,
    diameter: float,
    height: int,
    width: int,
    supersample: int = 8,
) -> np.ndarray:
    """Fraction of each pixel covered by one shape.

    Geometry is in pixel units: pixel (row r, column c) covers
    `[c, c + 1) x [r, r + 1)`. The shape lies in the square box of side
    `diameter` centred at `(cx, cy)`: a disc, the box itself, or an upright
    triangle with its apex at the middle of the box's top edge.

    Returns:
        (height, width) float32 array in [0, 1].
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if diameter <= 0:
        raise ValueError(f"diameter must be positive, got {diameter!r}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample!r}")
    out = np.zeros((height, width), dtype=np.float32)
    half = diameter / 2
    c0, c1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), width)
    r0, r1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), height)
    if c0 >= c1 or r0 >= r1:
        return out
    offsets = (np.arange(supersample, dtype=np.float64) + 0.5) / supersample
    xs = (np.arange(c0, c1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(r0, r1)[:, None] + offsets[None, :]).reshape(-1)
    px, py = xs[None, :] - cx, ys[:, None] - cy
    if shape == "circle":
        inside = px * px + py * py <= half * half
    elif shape == "square":
        inside = (np.abs(px) <= half) & (np.abs(py) <= half)
    else:  # triangle: half-width grows from 0 at the apex (py = -half) to `half` at the base
        inside = (py <= half) & (np.abs(px) <= (py + half) / 2)
    blocks = inside.reshape(r1 - r0, supersample, c1 - c0, supersample)
    out[r0:r1, c0:c1] = blocks.mean(axis=(1, 3))
    return out


def render_scene_array(scene: Scene, size: int = 32, supersample: int | None = None) -> np.ndarray:
    """Render a scene as a float image.

    Args:
        scene: what to draw.
        size: image side in pixels, >= 16.
        supersample: sub-pixel samples per pixel side; chosen from `size` when None.

    Returns:
        (size, size, 3) float32 array of RGB values in [0, 255].
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {size!r}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
    ss = _default_supersample(size) if supersample is None else supersample
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for obj in scene.objects:
        alpha = shape_coverage(obj.shape, obj.x * size, obj.y * size, obj.diameter * size, size, size, ss)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        image += alpha[:, :, None] * (colour - image)
    return image


def render_scene(scene: Scene, size: int = 32) -> Image.Image:
    """Render a scene as an anti-aliased RGB image of `size` x `size` pixels (size >= 16)."""
    array = render_scene_array(scene, size)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="RGB")
