"""Training data: every source enters here, and loops never know which one they read.

- `DataConfig`: the data section of every run config (the shapes stream, webdataset shards or
  a JSONL manifest);
- `ImageCaptionBatches`: endless batches of (image tensor, caption) for one process, resumable
  at any step (CLIP and diffusion training); `source_images`: the images of one pass over a
  source (for pre-encoding them);
- `CaptionSource`: captions alone by sample index, with held-out ones (T5 pretraining);
- `CaptionTokenizer`: captions -> padded token ids; `ClipImageTransform`,
  `pixels_in_unit_range`: images -> tensors;
- `SkipCounter`: unusable samples are skipped and counted by reason, never fatal
  (`IMAGE_LOAD_FAILURES`: the reasons only the rank that loads the image meets);
- `SampleGenerators`: random draws per sample, keyed by its global index (the same on any
  number of processes);
- the file readers under them: `webdataset_samples`, `webdataset_captions` (shards named
  as webdataset takes them: `shard_urls`), `manifest_samples`, `manifest_captions`,
  `manifest_entries`; `DataConfig.check_files` checks the files exist before any work;
- a text file of prompts (`prompt_file.prompt_file_captions`), for ``clipcond encode``;
- captions encoded beforehand (`embedding_shards`): the shards ``clipcond encode`` writes and
  diffusion training reads (``data.embeddings``); images encoded beforehand by a VAE
  (`latent_shards`, ``data.latents``).
"""

from clipcond.training.data.batches import ImageCaptionBatches, source_images
from clipcond.training.data.caption_tokenizer import CaptionTokenizer
from clipcond.training.data.captions import CaptionSource
from clipcond.training.data.config import DataConfig
from clipcond.training.data.sample_random import SampleGenerators
from clipcond.training.data.sources import (
    IMAGE_LOAD_FAILURES,
    SkipCounter,
    clean_caption,
    decode_image,
    manifest_captions,
    manifest_entries,
    manifest_samples,
    shard_urls,
    webdataset_captions,
    webdataset_samples,
)
from clipcond.training.data.transforms import CLIP_MEAN, CLIP_STD, ClipImageTransform, pixels_in_unit_range

__all__ = [
    "CLIP_MEAN",
    "IMAGE_LOAD_FAILURES",
    "CLIP_STD",
    "CaptionSource",
    "CaptionTokenizer",
    "ClipImageTransform",
    "DataConfig",
    "ImageCaptionBatches",
    "SampleGenerators",
    "SkipCounter",
    "clean_caption",
    "decode_image",
    "manifest_captions",
    "manifest_entries",
    "manifest_samples",
    "pixels_in_unit_range",
    "shard_urls",
    "source_images",
    "webdataset_captions",
    "webdataset_samples",
]
