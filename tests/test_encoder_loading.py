"""Loading the encoders a conditioner YAML names: a ``clipcond train-t5`` model folder
(``text_encoder/`` + ``tokenizer/``) as ``t5: {path: <output_dir>/model}``."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from clipcond import TextConditioner
from clipcond.conditioner_config import EncoderSource
from clipcond.encoder_loading import load_t5_encoder

PROMPTS = ["a red circle above a blue square", "two green triangles"]


def _train_t5_model_folder(folder: Path, t5_tokenizer_path: Path) -> Path:
    """What train-t5 saves to ``<output_dir>/model``, with its own writer (`save_t5_encoder`)."""
    from transformers import AutoTokenizer

    from clipcond.training.t5.config import T5ModelSettings
    from clipcond.training.t5.model import build_t5, save_t5_encoder

    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    torch.manual_seed(0)
    settings = T5ModelSettings(d_model=24, d_ff=32, d_kv=8, num_layers=1, num_heads=3, relative_attention_num_buckets=8)
    return save_t5_encoder(build_t5(settings, len(tokenizer)), tokenizer, folder)


def test_a_train_t5_model_folder_loads_as_transformers_loads_its_subfolders(tmp_path, t5_tokenizer_path) -> None:
    # probe12_train #8: `t5: {path: runs/t5/model}` failed with transformers' OSError (no model.safetensors)
    from transformers import AutoTokenizer, T5EncoderModel

    folder = _train_t5_model_folder(tmp_path / "model", t5_tokenizer_path)
    model, tokenizer = load_t5_encoder(EncoderSource(path=str(folder)))
    peer_model = T5EncoderModel.from_pretrained(folder / "text_encoder").eval()
    peer_tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    peer_ids = peer_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(ids.input_ids, peer_ids.input_ids) and torch.equal(ids.attention_mask, peer_ids.attention_mask)
    with torch.no_grad():
        states = model(**ids).last_hidden_state
        expected = peer_model(**peer_ids).last_hidden_state
    assert not model.training and torch.equal(states, expected)


def test_a_conditioner_yaml_takes_a_train_t5_model_folder(tmp_path, t5_tokenizer_path, tiny_clip_text_path) -> None:
    folder = _train_t5_model_folder(tmp_path / "model", t5_tokenizer_path)
    path = tmp_path / "conditioner.yaml"
    config = {
        "recipe": "custom",
        "clip": [{"path": str(tiny_clip_text_path)}],
        "t5": {"path": str(folder)},
        "combine": "concat_sequence",
        "t5_max_sequence_length": 20,
        "projection_dim": 16,
    }
    path.write_text(yaml.safe_dump(config))
    embeds = TextConditioner.from_config(path).encode(PROMPTS)
    assert embeds.tokens.shape == (2, 77 + 20, 16) and torch.isfinite(embeds.tokens).all()
