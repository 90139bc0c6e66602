"""clipcond: CLIP (and T5) text conditioning for diffusers text-to-image pipelines."""

__version__ = "0.1.0"
