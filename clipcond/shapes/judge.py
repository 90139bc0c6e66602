"""The judge: read an image back into coloured shapes.

How it reads an image (no learned parts, so its errors can be measured):

1. Colour: every pixel gets the palette colour of nearest hue. Hue is used
   because blending an object with the white background (anti-aliasing) or
   adding grey keeps the hue and only lowers the chroma (max - min of RGB).
   The pixel's coverage by that colour is its chroma over the palette
   colour's chroma; pixels covered at least half are object pixels.
2. Objects: 4-connected components of object pixels of one colour. A
   component smaller than half the smallest object, or not surrounded by
   background (a ring of pixels just outside its anti-aliased edge, within
   a tolerance of `BACKGROUND`), is noise.
3. Shape: the component's soft coverage (its pixels and their edge neighbours)
   is compared with an ideal rendering of each shape of the same area at the
   same centroid; the best-fitting shape wins. If even the best shape explains
   the pixels poorly (`min_fit`), the component is not an object (this is
   what rejects blobs of random noise).
4. Size and position from the fitted shape: its box side (small or large,
   split at the geometric mean of the two sizes) and its box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipcond.shapes.render import shape_coverage
from clipcond.shapes.vocab import BACKGROUND, COLOURS, SHAPES, SIZE_DIAMETERS

# Fraction of its box each shape fills: disc, box, triangle.
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}

# A component must cover at least this fraction of the smallest object's area.
_MIN_AREA_RATIO = 0.5

# At least this fraction of the pixels two steps outside a component must be
# background (every channel within `_BACKGROUND_TOLERANCE` of `BACKGROUND`):
# a drawn object sits on the background, a blob of noise among more noise.
_MIN_BACKGROUND_RING = 0.7
_BACKGROUND_TOLERANCE = 64.0

# Default least fit (1 - normalised L1 difference to the best ideal shape).
DEFAULT_MIN_FIT = 0.6

# Coverage above which a pixel belongs to an object.
_CORE_COVERAGE = 0.5


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image.

    Attributes:
        colour: a key of `COLOURS`; shape: one of `SHAPES`; size: "small" or "large".
        x, y: centre of the fitted shape's box in [0, 1] image coordinates (y down).
        area_fraction: the object's coverage as a fraction of the image area.
        bbox: `(left, top, right, bottom)` pixel bounds of its object pixels,
            right and bottom exclusive.
        diameter: side of the fitted box as a fraction of the image side.
        fit: how well the ideal shape explains the pixels, in [0, 1].
    """

    colour: str
    shape: str
    size: str
    x: float
    y: float
    area_fraction: float
    bbox: tuple[int, int, int, int]
    diameter: float
    fit: float


def _to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 RGB in [0, 255] from a PIL image or an array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array must have shape (height, width, 3), got {image.shape}")
        if np.issubdtype(image.dtype, np.floating):
            low, high = float(image.min()), float(image.max())
            if low < -1e-3 or high > 1.0 + 1e-3:  # e.g. a [-1, 1] decoder output: say so, do not clip
                raise ValueError(f"image float array must hold values in [0, 1], got [{low:.3g}, {high:.3g}]")
            return np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0
        if image.dtype == np.uint8:
            return image.astype(np.float64)
        raise TypeError(f"image array must be uint8 in [0, 255] or float in [0, 1], got dtype {image.dtype}")
    raise TypeError(f"image must be a PIL.Image.Image or a numpy array, got {type(image).__name__}")


def _hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (max - min) of (..., 3) RGB values."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        mx == r,
        ((g - b) / safe) % 6.0,
        np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    return (hue * 60.0) % 360.0, chroma


def _label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean (H, W) mask.

    Returns an (H, W) int64 array: -1 off the mask; on it, the flat index of
    the component's first pixel. Labels spread by neighbour minima with
    pointer jumping until nothing changes.
    """
    height, width = mask.shape
    none = height * width
    labels = np.where(mask, np.arange(none).reshape(height, width), none)
    while True:
        new = labels.copy()
        new[1:, :] = np.minimum(new[1:, :], labels[:-1, :])
        new[:-1, :] = np.minimum(new[:-1, :], labels[1:, :])
        new[:, 1:] = np.minimum(new[:, 1:], labels[:, :-1])
        new[:, :-1] = np.minimum(new[:, :-1], labels[:, 1:])
        new = np.where(mask, new, none)
        flat = np.append(new.ravel(), none)
        new = flat[new]  # pointer jumping: a label is a pixel index of the same component
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel in the 8-neighbourhood."""
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    tall = grown.copy()
    grown[:, 1:] |= tall[:, :-1]
    grown[:, :-1] |= tall[:, 1:]
    return grown


def _fit_shape(soft: np.ndarray, offset: tuple[int, int]) -> tuple[str, float, float, float, float]:
    """Best ideal shape for a soft coverage window.

    Returns `(shape, fit, cx, cy, diameter)` with the centre and diameter in
    pixels of the full image (`offset` is the window's (top, left)).
    """
    area = float(soft.sum())
    rows, cols = np.indices(soft.shape)
    cy = float((soft * (rows + 0.5)).sum() / area)
    cx = float((soft * (cols + 0.5)).sum() / area)
    best = ("circle", -1.0, 0.0, 0.0, 0.0)
    for shape in SHAPES:
        diameter = float(np.sqrt(area / _FILL[shape]))
        # A triangle's centroid sits a sixth of its height below its box centre.
        box_cy = cy - diameter / 6 if shape == "triangle" else cy
        ideal = shape_coverage(shape, cx, box_cy, diameter, soft.shape[0], soft.shape[1], supersample=4)
        fit = 1.0 - float(np.abs(soft - ideal).sum() / (soft.sum() + ideal.sum()))
        if fit > best[1]:
            best = (shape, fit, cx + int(offset[1]), box_cy + int(offset[0]), diameter)
    return best


def judge_image(image: Image.Image | np.ndarray, min_fit: float = DEFAULT_MIN_FIT) -> list[DetectedObject]:
    """Read the coloured shapes in an image.

    Args:
        image: a PIL image (any mode, read as RGB) or an (H, W, 3) array,
            uint8 in [0, 255] or float in [0, 1]. Objects are expected on
            the world's `BACKGROUND` (white), as `render_scene` draws them;
            a region not surrounded by background is not an object.
        min_fit: least agreement, in [0, 1], between a component and its best
            ideal shape for it to count as an object.

    Returns:
        The detected objects, ordered by position (top to bottom, then left
        to right). A blank image or pure noise gives an empty list.
    """
    if not 0.0 <= min_fit <= 1.0:
        raise ValueError(f"min_fit must be in [0, 1], got {min_fit!r}")
    rgb = _to_rgb(image)
    height, width = rgb.shape[:2]
    names = list(COLOURS)
    palette_hue, palette_chroma = _hue_chroma(np.array([COLOURS[n] for n in names], dtype=np.float64))
    hue, chroma = _hue_chroma(rgb)
    distance = np.abs(hue[..., None] - palette_hue)
    distance = np.minimum(distance, 360.0 - distance)
    nearest = distance.argmin(axis=-1)
    coverage = np.clip(chroma / palette_chroma[nearest], 0.0, 1.0)
    side = float(np.sqrt(height * width))
    smallest = min(_FILL[s] for s in SHAPES) * (min(SIZE_DIAMETERS.values()) * side) ** 2
    min_pixels = max(3, int(np.ceil(_MIN_AREA_RATIO * smallest)))
    size_split = float(np.sqrt(np.prod(list(SIZE_DIAMETERS.values()))))  # between the two sizes
    small_name, large_name = sorted(SIZE_DIAMETERS, key=SIZE_DIAMETERS.get)

    background = np.abs(rgb - np.asarray(BACKGROUND, dtype=np.float64)).max(axis=-1) <= _BACKGROUND_TOLERANCE
    found: list[DetectedObject] = []
    for c, name in enumerate(names):
        in_colour = nearest == c
        core = in_colour & (coverage >= _CORE_COVERAGE)
        if core.sum() < min_pixels:
            continue
        labels = _label_components(core)
        ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
        for label in ids[sizes >= min_pixels]:
            component = labels == label
            rows, cols = np.nonzero(component)
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            pad = 2
            r0, r1 = max(top - pad, 0), min(bottom + pad, height)
            c0, c1 = max(left - pad, 0), min(right + pad, width)
            grown = _dilate(component)
            ring = _dilate(grown) & ~grown
            if not ring.any() or (ring & background).sum() < _MIN_BACKGROUND_RING * ring.sum():
                continue
            near = grown[r0:r1, c0:c1]
            other_core = core[r0:r1, c0:c1] & ~component[r0:r1, c0:c1]
            soft = np.where(near & in_colour[r0:r1, c0:c1] & ~other_core, coverage[r0:r1, c0:c1], 0.0)
            shape, fit, cx, cy, diameter = _fit_shape(soft, (r0, c0))
            if fit < min_fit:
                continue
            found.append(
                DetectedObject(
                    colour=name,
                    shape=shape,
                    size=large_name if diameter / side >= size_split else small_name,
                    x=float(cx / width),
                    y=float(cy / height),
                    area_fraction=float(soft.sum()) / (height * width),
                    bbox=(int(left), int(top), int(right), int(bottom)),
                    diameter=diameter / side,
                    fit=fit,
                )
            )
    found.sort(key=lambda o: (o.y, o.x))
    return found
