"""An endless, deterministic stream of (image, caption, scene) samples.

Sample `i` is a pure function of the stream's settings and `i`: it seeds its
own `random.Random` from a string (hashed with SHA-512 by `random.seed`, not
Python's salted `hash`), so any worker can produce any sample in any order and
every run sees the same data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from clipcond.shapes.captions import caption_scene
from clipcond.shapes.render import MIN_IMAGE_SIZE, render_scene
from clipcond.shapes.scene import MAX_OBJECTS, Scene, check_count_weights, random_scene
from clipcond.shapes.splits import colour_shape_classes, heldout_pairs, train_pairs

SPLITS: tuple[str, ...] = ("train", "heldout", "all")


@dataclass(frozen=True)
class ShapesSample:
    """One sample: `image` (RGB, image_size x image_size), its true `caption`, its `scene`."""

    image: Image.Image
    caption: str
    scene: Scene


class ShapesStream:
    """Deterministic random-access stream of shapes-world samples.

    Args:
        seed: any int; different seeds give different streams.
        image_size: image side in pixels, >= 16. Does not change the scenes or
            captions, only their rendering.
        min_objects, max_objects: object count bounds, within [1, 4].
        split: "train" (only `train_pairs()`), "heldout" (every scene holds at
            least one held-out pair; the other objects may be any pair) or
            "all" (any pair).
        count_weights: relative weights of the object counts
            `min_objects..max_objects` (one number each); None: uniform. A
            stream with weights is a different stream from one without, even
            for uniform weights; None keeps the samples of earlier versions.
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 32,
        min_objects: int = 1,
        max_objects: int = MAX_OBJECTS,
        split: str = "train",
        count_weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
        for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OBJECTS:
                raise ValueError(f"{name} must be an int in [1, {MAX_OBJECTS}], got {value!r}")
        if min_objects > max_objects:
            raise ValueError(f"min_objects ({min_objects}) must not exceed max_objects ({max_objects})")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.count_weights = check_count_weights(count_weights, min_objects, max_objects)
        self.seed = seed
        self.image_size = image_size
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.split = split

    def __repr__(self) -> str:
        return (
            f"ShapesStream(seed={self.seed}, image_size={self.image_size}, min_objects={self.min_objects}, "
            f"max_objects={self.max_objects}, split={self.split!r}, count_weights={self.count_weights!r})"
        )

    def _rng(self, index: int) -> random.Random:
        key = f"clipcond.shapes:{self.seed}:{self.split}:{self.min_objects}:{self.max_objects}"
        if self.count_weights is not None:
            key += ":weights=" + ",".join(repr(weight) for weight in self.count_weights)
        return random.Random(f"{key}:{index}")

    def scene(self, index: int) -> Scene:
        """The scene of sample `index` (no rendering)."""
        return self._scene_and_rng(index)[0]

    def _scene_and_rng(self, index: int) -> tuple[Scene, random.Random]:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        rng = self._rng(index)
        if self.split == "train":
            scene = random_scene(
                rng, self.min_objects, self.max_objects, pairs=train_pairs(), count_weights=self.count_weights
            )
        elif self.split == "heldout":
            scene = random_scene(
                rng,
                self.min_objects,
                self.max_objects,
                pairs=colour_shape_classes(),
                must_include=heldout_pairs(),
                count_weights=self.count_weights,
            )
        else:
            scene = random_scene(rng, self.min_objects, self.max_objects, count_weights=self.count_weights)
        return scene, rng

    def sample(self, index: int) -> ShapesSample:
        """Sample `index` (>= 0): the same settings and index always give the same sample."""
        scene, rng = self._scene_and_rng(index)
        caption = caption_scene(scene, rng)
        return ShapesSample(image=render_scene(scene, self.image_size), caption=caption, scene=scene)

    def __iter__(self) -> Iterator[ShapesSample]:
        """Yield sample(0), sample(1), ... without end."""
        index = 0
        while True:
            yield self.sample(index)
            index += 1
