"""What the lab measures on a generated image.

Two metrics, by name (`METRICS`):

* ``judge``: the shapes judge (`clipcond.shapes.score_image`) reads the image back into
  objects and compares them with the prompt's scene. Only prompts that carry a scene (shapes
  prompts) are judged; text-only prompts get no judge values, whatever the pipeline.
* ``clip_score``: cosine similarity of the image's and the prompt's CLIP embeddings, in
  [-1, 1] (not the x100, clipped-at-0 scaling of Hessel et al.'s CLIPScore). Any prompt.

CLIP preprocessing is the one our CLIP training uses (`clipcond.training.data.ClipImageTransform`):
resize the shorter side to the image tower's size (bicubic), centre-crop, scale to [0, 1],
normalise with CLIP's mean and std. It is done by transformers' PIL-backed
`CLIPImageProcessor`, which gives identical tensors for square images (tested). Prompts longer
than the text tower's context are truncated (keeping the end-of-text token) and reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipcond.file_damage import check_tables_after_load, refuse_damaged_folder
from clipcond.shapes.scene import Scene
from clipcond.shapes.scoring import score_image

# name -> what it measures (the report's legend)
METRICS: dict[str, str] = {
    "judge": "shapes judge: the image holds the prompt's objects, colours, counts and relation (shapes prompts only)",
    "clip_score": "cosine of the CLIP image and prompt embeddings, in [-1, 1]",
}

# The values `shapes_judge_metrics` returns; all but `objects_found` are pass/fail.
JUDGE_VALUES: dict[str, str] = {
    "objects_found": "fraction of the scene's objects found with their colour and shape",
    "objects": "every object found with its colour and shape (binding right; extra objects do not fail it)",
    "colour": "every object's colour present",
    "shape": "every object's shape present",
    "count": "as many objects of each colour and shape as asked",
    "relation": "the relation holds (prompts with a relation only)",
    "exact": "all objects found, nothing extra, relation true",
}


def check_metrics(names: Sequence[str]) -> None:
    """Raise a `ValueError` listing the known metrics if `names` is empty or any name is unknown."""
    if not names:
        raise ValueError(f"metrics must name at least one metric; known metrics: {sorted(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown!r}; known metrics: {sorted(METRICS)}")


def shapes_judge_metrics(image: Image.Image | np.ndarray, scene: Scene) -> dict[str, float | bool]:
    """Judge one image against the scene it should show.

    Args:
        image: PIL image or (H, W, 3) array (uint8, or float in [0, 1]), any size.
        scene: the prompt's scene.

    Returns:
        The keys of `JUDGE_VALUES`: "objects_found" a float in [0, 1], the others bools;
        "relation" only when the scene has a relation.
    """
    score = score_image(image, scene)
    values: dict[str, float | bool] = {
        "objects_found": score.objects_found / score.expected,
        "objects": score.objects_found == score.expected,
        "colour": score.colour_correct,
        "shape": score.shape_correct,
        "count": score.count_correct,
        "exact": score.all_correct,
    }
    if score.relation_correct is not None:
        values["relation"] = score.relation_correct
    return values


@dataclass(frozen=True)
class ClipScorer:
    """A CLIP with the tokenizer and image preprocessing that go with it.

    Attributes:
        model: a clipcond `ClipTwoTower` (`clipcond.models.load_clip`) or a transformers `CLIPModel`.
        tokenizer: its tokenizer (the offline CLIP tokenizer for our models).
        image_processor: a `CLIPImageProcessor` resizing to the image tower's input size.
        context_length: longest token sequence, BOS and EOS included.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    context_length: int

    def truncated(self, prompts: Sequence[str]) -> list[bool]:
        """For each prompt, whether it is longer than `context_length` tokens (CLIP score then sees its start)."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), truncation=False)["input_ids"]]
        return [n > self.context_length for n in lengths]

    @torch.inference_mode()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, embed_dim) L2-normalised text embeddings; too-long prompts are truncated."""
        tokens = self.tokenizer(
            list(prompts), truncation=True, max_length=self.context_length, padding="longest", return_tensors="pt"
        )
        device = _device(self.model)
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        if hasattr(self.model, "encode_text"):
            embeds = self.model.encode_text(ids, mask)
        else:
            embeds = _features(self.model.get_text_features(input_ids=ids, attention_mask=mask))
        return F.normalize(embeds.float(), dim=-1)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, embed_dim) L2-normalised image embeddings of PIL images (any size, read as RGB)."""
        pixels = self.pixel_values(images).to(_device(self.model), _dtype(self.model))
        if hasattr(self.model, "encode_image"):
            embeds = self.model.encode_image(pixels)
        else:
            embeds = _features(self.model.get_image_features(pixel_values=pixels))
        return F.normalize(embeds.float(), dim=-1)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, size, size) float32: the images preprocessed as the module docstring says."""
        rgb = [image.convert("RGB") for image in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].float()


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _features(output: Any) -> torch.Tensor:
    # transformers 4 returns the projected features; transformers 5 an output whose pooler_output they are
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _image_processor(image_size: int) -> Any:
    import transformers

    # the PIL backend: the same resampling as our training's ClipImageTransform, whether or
    # not torchvision is installed (transformers 5 prefers a torchvision backend when it is)
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_class(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def clip_scorer(model: Any, processor: Any = None) -> ClipScorer:
    """A `ClipScorer` for a loaded model.

    Args:
        model: a `ClipTwoTower` or a transformers `CLIPModel`.
        processor: for a `CLIPModel`, its `CLIPProcessor` (tokenizer + image processor); None
            uses the offline CLIP tokenizer and CLIP preprocessing at the model's image size.
    """
    from clipcond.models import ClipTwoTower
    from clipcond.tokenization import clip_tokenizer

    if isinstance(model, ClipTwoTower):
        context, size = model.config.text.context_length, model.config.vision.image_size
    elif hasattr(model, "get_text_features") and hasattr(model.config, "vision_config"):
        context, size = model.config.text_config.max_position_embeddings, model.config.vision_config.image_size
    else:
        raise TypeError(
            f"model must be a clipcond ClipTwoTower or a transformers CLIPModel, got {type(model).__name__}"
        )
    if processor is not None:
        return ClipScorer(model.eval(), processor.tokenizer, processor.image_processor, context)
    return ClipScorer(model.eval(), clip_tokenizer(model_max_length=context), _image_processor(size), context)


def load_clip_scorer(path: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
    """Load a CLIP for CLIP score from a folder.

    Args:
        path: a folder written by `clipcond.models.save_clip` (it holds ``clip_config.yaml``) or
            a transformers `CLIPModel` folder (``config.json``; its tokenizer and preprocessor
            files are used when present, as transformers saved them).
        device: where the model runs.

    Raises:
        ValueError: a damaged file in the folder (`clipcond.file_damage`: a safetensors or JSON
            file cut short, a tokenizer's vocabulary file missing; each is named), found before
            anything is loaded; or a saved BPE tokenizer whose merges do not make its vocabulary
            (`clipcond.bpe_tables`).
    """
    path = Path(path)
    if (path / "clip_config.yaml").is_file():
        from clipcond.models import load_clip

        return clip_scorer(load_clip(path).to(device))
    if (path / "config.json").is_file():
        from transformers import CLIPModel

        refuse_damaged_folder(f"the CLIP at {path}", path, [""])
        model = CLIPModel.from_pretrained(path).to(device)
        scorer = clip_scorer(model)
        tokenizer, image_processor = scorer.tokenizer, scorer.image_processor
        if (path / "tokenizer_config.json").is_file():
            from clipcond.tokenization import load_saved_tokenizer

            tokenizer = load_saved_tokenizer(path)
            check_tables_after_load(tokenizer, path, str(path))  # the folder was checked above
        if (path / "preprocessor_config.json").is_file():
            import transformers

            processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
            image_processor = processor_class.from_pretrained(path)
        return ClipScorer(model.eval(), tokenizer, image_processor, scorer.context_length)
    raise FileNotFoundError(
        f"{path} is not a CLIP folder: expected clip_config.yaml (clipcond.models.save_clip) or config.json (transformers CLIPModel)"
    )


def clip_score(
    images: Sequence[Image.Image], prompts: Sequence[str], model: Any, processor: Any = None
) -> torch.Tensor:
    """CLIP score of each (image, prompt) pair.

    Args:
        images: n PIL images (any size; preprocessed as the module docstring says).
        prompts: n prompts, `prompts[k]` for `images[k]`.
        model: a `ClipScorer`, a `ClipTwoTower` or a transformers `CLIPModel`.
        processor: a `CLIPProcessor` for a `CLIPModel` (see `clip_scorer`), else None.

    Returns:
        (n,) float32 tensor on the CPU: cosine of image k's and prompt k's embeddings, in [-1, 1].
        A prompt longer than the CLIP context is truncated, with a warning.
    """
    if len(images) != len(prompts):
        raise ValueError(f"images ({len(images)}) and prompts ({len(prompts)}) must be as many")
    if not images:
        return torch.zeros(0)
    scorer = model if isinstance(model, ClipScorer) else clip_scorer(model, processor)
    too_long = sum(scorer.truncated(prompts))
    if too_long:
        warnings.warn(
            f"{too_long} prompt(s) are longer than the CLIP context ({scorer.context_length} tokens) and were "
            "truncated for CLIP score",
            stacklevel=2,
        )
    return (scorer.embed_images(images) * scorer.embed_texts(prompts)).sum(dim=-1).cpu()


__all__ = [
    "ClipScorer",
    "JUDGE_VALUES",
    "METRICS",
    "check_metrics",
    "clip_score",
    "clip_scorer",
    "load_clip_scorer",
    "shapes_judge_metrics",
]
