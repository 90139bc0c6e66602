"""Save and load a `ClipTwoTower` as a folder of safetensors files plus its YAML config.

    folder/
      clip_config.yaml           the ClipModelConfig (rebuilds the model)
      text_encoder/              CLIPTextModelWithProjection.save_pretrained (config.json, model.safetensors)
      tokenizer/                 clipcond.tokenization.clip_tokenizer().save_pretrained
      image_encoder/             ViT: CLIPVisionModelWithProjection.save_pretrained;
                                 ResNet: model.safetensors (ResNetImageTower weights)
      logit_scale.safetensors    {"logit_scale": scalar}
      logit_bias.safetensors     {"logit_bias": scalar}: only for a model trained with the SigLIP
                                 loss (its learned bias; `load_logit_bias`)

`text_encoder/` and `tokenizer/` are what diffusers pipelines load under those names, so a
trained text tower is used for conditioning with `load_text_tower(folder)` or directly with
`CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")` (SDXL's second encoder,
SD3's CLIPs). Pipelines whose encoder is a plain `CLIPTextModel` (SD 1.x/2.x) load the same
folder with `CLIPTextModel.from_pretrained`; the projection weights are then left unused.
Everything is safetensors (plus JSON/YAML and the tokenizer's text files); nothing is pickled.

SigLIP's bias is not part of `ClipTwoTower` (the towers and the scale are the model; the bias
belongs to the loss), so it has its own file, which `load_clip` does not read: SigLIP's
calibrated probability of a pair is ``sigmoid(exp(logit_scale) * <image, text> + logit_bias)``,
and a SigLIP fine-tune starting from the folder starts from both. Folders written before the
bias was saved, or by a CLIP-loss run, have no such file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from clipcond.file_damage import refuse_damaged_folder
from clipcond.models.config import load_model_config
from clipcond.models.two_tower import ClipTwoTower
from clipcond.tokenization import clip_tokenizer

CONFIG_NAME = "clip_config.yaml"
TEXT_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
IMAGE_DIR = "image_encoder"
WEIGHTS_NAME = "model.safetensors"
LOGIT_SCALE_NAME = "logit_scale.safetensors"
LOGIT_BIAS_NAME = "logit_bias.safetensors"

# One file per tower, whatever its size, so that `load_clip` reads it without an index.
_ONE_SHARD = "1000GB"


def save_clip(model: ClipTwoTower, folder: str | Path, logit_bias: torch.Tensor | None = None) -> Path:
    """Write `model` to `folder` (created if needed; files of an earlier save are overwritten).

    Args:
        model: the two-tower to save.
        folder: where to write it.
        logit_bias: SigLIP's learned bias (a scalar), written to ``logit_bias.safetensors``;
            None (a CLIP-loss model) writes no bias file and removes one an earlier save left.

    Returns:
        The folder, as a `Path`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CONFIG_NAME, "w", encoding="utf-8") as handle:
        yaml.safe_dump(model.config.to_dict(), handle, sort_keys=False)
    model.text.save_pretrained(folder / TEXT_DIR, max_shard_size=_ONE_SHARD)
    clip_tokenizer(model_max_length=model.config.text.context_length).save_pretrained(folder / TOKENIZER_DIR)
    if isinstance(model.vision, CLIPVisionModelWithProjection):
        model.vision.save_pretrained(folder / IMAGE_DIR, max_shard_size=_ONE_SHARD)
    else:
        (folder / IMAGE_DIR).mkdir(exist_ok=True)
        weights = {key: value.contiguous() for key, value in model.vision.state_dict().items()}
        save_file(weights, folder / IMAGE_DIR / WEIGHTS_NAME)
    save_file({"logit_scale": model.logit_scale.detach().clone()}, folder / LOGIT_SCALE_NAME)
    if logit_bias is not None:
        save_file({"logit_bias": logit_bias.detach().reshape(()).clone()}, folder / LOGIT_BIAS_NAME)
    else:
        (folder / LOGIT_BIAS_NAME).unlink(missing_ok=True)
    return folder


def load_clip(folder: str | Path) -> ClipTwoTower:
    """Rebuild the `ClipTwoTower` written by `save_clip`, in the dtype it was saved in, in eval mode.

    Raises:
        FileNotFoundError: `folder` has no ``clip_config.yaml`` or lacks a weights file.
        ValueError: a safetensors or JSON file of the folder, its ``text_encoder/`` or its
            ``image_encoder/`` is damaged (`clipcond.file_damage`; each is named), found before
            anything is loaded; or the config is invalid.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a folder written by save_clip: {CONFIG_NAME} is missing")
    refuse_damaged_folder(f"the CLIP saved at {folder}", folder, ["", TEXT_DIR, IMAGE_DIR])
    model = ClipTwoTower(load_model_config(config_path))
    text = _read_weights(folder / TEXT_DIR / WEIGHTS_NAME)
    vision = _read_weights(folder / IMAGE_DIR / WEIGHTS_NAME)
    scale = _read_weights(folder / LOGIT_SCALE_NAME)
    model.load_clip_state_dict({**text, **vision, **scale})
    return model.to(dtype=next(iter(text.values())).dtype).eval()


def load_logit_bias(folder: str | Path) -> torch.Tensor | None:
    """SigLIP's learned bias saved with the model in `folder` (a scalar tensor, in the dtype
    saved), or None when the folder has none (a CLIP-loss model, or one saved before the bias
    was kept)."""
    path = Path(folder) / LOGIT_BIAS_NAME
    if not path.is_file():
        return None
    weights = load_file(path)
    if set(weights) != {"logit_bias"} or weights["logit_bias"].numel() != 1:
        raise ValueError(f"{path} must hold one scalar named logit_bias, got {sorted(weights)}")
    return weights["logit_bias"].reshape(())


def load_text_tower(path: str | Path, dtype: torch.dtype | None = None) -> CLIPTextModelWithProjection:
    """Load only the text tower, for conditioning.

    Args:
        path: a folder written by `save_clip` (or any folder with a `text_encoder/` subfolder, such
            as a diffusers pipeline), or a transformers text-encoder folder itself.
        dtype: load in this dtype; None keeps the stored one.

    Returns:
        A `CLIPTextModelWithProjection` in eval mode: input_ids (batch, seq) -> `last_hidden_state`
        (batch, seq, width), `text_embeds` (batch, embed_dim).

    Raises:
        FileNotFoundError: no ``config.json`` at `path` or in its ``text_encoder/``.
        ValueError: a safetensors or JSON file of the text encoder's folder is damaged
            (`clipcond.file_damage`; each is named), found before anything is loaded; or the
            weights lack the projection.
    """
    path = Path(path)
    if (path / TEXT_DIR).is_dir():
        path = path / TEXT_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no text encoder at {path}: expected config.json (or a {TEXT_DIR}/ subfolder)")
    refuse_damaged_folder(f"the text encoder at {path}", path, [""])
    model, info = CLIPTextModelWithProjection.from_pretrained(
        path, dtype=dtype if dtype is not None else "auto", output_loading_info=True
    )
    missing = list(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"{path} lacks weights of a CLIPTextModelWithProjection: {sorted(missing)[:4]}; a text encoder "
            "without a projection (e.g. SD 1.x's CLIPTextModel) loads with transformers.CLIPTextModel instead"
        )
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path} (written by save_clip)")
    return load_file(path)
