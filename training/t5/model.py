"""The T5 of a pretraining run: built from the config, its span-corruption loss and held-out
evaluation, and the encoder half saved for diffusion::

    <folder>/text_encoder/   T5EncoderModel (config.json + model.safetensors)
    <folder>/tokenizer/      the tokenizer (AutoTokenizer.from_pretrained)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipcond.training.t5.config import T5ModelSettings
from clipcond.training.t5.span_corruption import IGNORE_INDEX

ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"


def build_t5(settings: T5ModelSettings, vocab_size: int) -> Any:
    """A randomly initialised `T5ForConditionalGeneration` (seed torch first) with T5's ids:
    ``<pad>`` = 0 is also the decoder's start token, ``</s>`` = 1."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=vocab_size,
        d_model=settings.d_model,
        d_ff=settings.d_ff,
        d_kv=settings.d_kv,
        num_layers=settings.num_layers,
        num_decoder_layers=settings.num_decoder_layers,
        num_heads=settings.num_heads,
        relative_attention_num_buckets=settings.relative_attention_num_buckets,
        relative_attention_max_distance=settings.relative_attention_max_distance,
        dropout_rate=settings.dropout_rate,
        feed_forward_proj=settings.feed_forward_proj,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def span_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced decoder logits (batch, out_len, vocab) of a span-corruption batch; the
    decoder reads the labels shifted right behind the start token.

    `model` is the T5 or, on several processes, accelerate's DDP wrapper of it: the decoder ids
    come from the T5 itself (``.module``), the forward runs through the wrapper, whose backward
    synchronises the gradients."""
    t5 = getattr(model, "module", model)
    decoder_input_ids = t5.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
    ).logits


def span_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the real label tokens of the global batch, in float32, and the
    count of this process's tokens that the argmax gets right.

    logits: (batch, out_len, vocab); labels: (batch, out_len), -100 on padding.

    On one process the loss is the mean over the batch's target tokens (transformers' T5 loss).
    Under `torch.distributed` each process's batch holds its own number of target tokens, so
    this process's loss is its cross-entropy sum divided by the target tokens of all processes
    (all-reduced), times the world size: the mean of the processes' losses, and DDP's mean of
    their gradients, are then those of one process on the global batch (transformers' Trainer
    does the same with `average_tokens_across_devices`).
    """
    real = labels != IGNORE_INDEX
    correct = ((logits.argmax(-1) == labels) & real).sum()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX), correct
    tokens = real.sum().to(torch.float32)  # (): this process's target tokens, summed over the processes below
    dist.all_reduce(tokens)
    summed = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return summed * world / tokens.clamp(min=1.0), correct


@torch.no_grad()
def evaluate_span_corruption(
    model: Any, batches: list[dict[str, torch.Tensor]], markers: set[int], autocast: Any = None
) -> dict[str, float]:
    """Held-out span corruption, teacher-forced.

    Args:
        model: the T5 (set back to train mode afterwards if it was).
        batches: from `heldout_batches`, on the model's device.
        markers: sentinel and ``</s>`` ids: target tokens that only mark structure.
        autocast: a context-manager factory (accelerate's `autocast`) or None.

    Returns:
        ``loss`` (mean cross-entropy per target token), ``token_accuracy`` (argmax over every
        target token), ``span_token_accuracy`` (only the dropped caption tokens, markers
        excluded) and ``majority_span_accuracy`` (always guessing the most frequent dropped
        token: the baseline that accuracy must beat).
    """
    was_training = model.training
    model.eval()
    loss_sum, tokens, correct, span_tokens, span_correct = 0.0, 0, 0, 0, 0
    counts: dict[int, int] = {}
    marker_ids = torch.tensor(sorted(markers))
    for batch in batches:
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = span_logits(model, batch)
        labels = batch["labels"]
        real = labels != IGNORE_INDEX
        loss_sum += F.cross_entropy(logits.float()[real], labels[real], reduction="sum").item()
        hits = (logits.argmax(-1) == labels) & real
        tokens += int(real.sum())
        correct += int(hits.sum())
        spans = real & ~torch.isin(labels, marker_ids.to(labels.device))
        span_tokens += int(spans.sum())
        span_correct += int((hits & spans).sum())
        for token, count in zip(*np.unique(labels[spans].cpu().numpy(), return_counts=True)):
            counts[int(token)] = counts.get(int(token), 0) + int(count)
    if was_training:
        model.train()
    return {
        "loss": loss_sum / max(tokens, 1),
        "token_accuracy": correct / max(tokens, 1),
        "span_token_accuracy": span_correct / max(span_tokens, 1),
        "majority_span_accuracy": max(counts.values(), default=0) / max(span_tokens, 1),
    }


def export_encoder(model: Any) -> Any:
    """The encoder half of a `T5ForConditionalGeneration` as a `T5EncoderModel` (a copy): the
    shared embedding and every ``encoder.*`` weight, keys matched exactly."""
    from transformers import T5EncoderModel

    encoder = T5EncoderModel(model.config)
    state = {key: value for key, value in model.state_dict().items() if key.startswith(("shared.", "encoder."))}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def save_t5_encoder(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Write ``folder/text_encoder`` (T5EncoderModel, safetensors) and ``folder/tokenizer``."""
    folder = Path(folder)
    export_encoder(model).save_pretrained(folder / ENCODER_DIR)
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    return folder
