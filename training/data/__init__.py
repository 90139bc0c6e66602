"""Training data: every source enters here, and loops never know which one they read."""

from clipcond.training.data.sources import (
    CLIP_MEAN,
    CLIP_STD,
    ClipImageTransform,
    SkipCounter,
    clean_caption,
    decode_image,
    manifest_entries,
    manifest_samples,
    webdataset_samples,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipImageTransform",
    "SkipCounter",
    "clean_caption",
    "decode_image",
    "manifest_entries",
    "manifest_samples",
    "webdataset_samples",
]
