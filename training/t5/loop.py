"""The T5 pretraining loop (span corruption on captions), on accelerate.

`train_t5(config)` runs one `TrainT5Config`: it trains a SentencePiece-unigram tokenizer on
the first captions of the data (kept in ``<output_dir>/tokenizer`` for resumes), builds a
transformers `T5ForConditionalGeneration` from the config, takes AdamW steps with warm-up +
cosine on span-corrupted batches, writes atomic safetensors checkpoints every
`checkpoint_every` steps and at the end, evaluates on held-out captions, and saves what a
diffusion run needs, the encoder alone::

    <output_dir>/model/text_encoder/   T5EncoderModel (config.json + model.safetensors)
    <output_dir>/model/tokenizer/      the tokenizer (AutoTokenizer.from_pretrained)

so ``t5_encoder: <output_dir>/model`` in a `train-diffusion` config loads it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipcond.training.data import CaptionSource, CaptionTokenizer, SkipCounter
from clipcond.training.optim import param_groups, warmup_cosine
from clipcond.training.run_folder import (
    check_runtime,
    checkpoint_if_due,
    prepare_output_dir,
    progress_bar,
    resume_latest,
    stop_if_diverged,
)
from clipcond.training.t5.batches import SpanCorruptionBatches, heldout_batches
from clipcond.training.t5.config import T5ModelSettings, TrainT5Config
from clipcond.training.t5.span_corruption import IGNORE_INDEX, SpanCorruption
from clipcond.training.t5.tokenizer import sentinel_ids, train_t5_tokenizer

MODEL_DIR = "model"
ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainT5Result:
    """What a finished run reports.

    Attributes:
        model_dir: the folder holding ``text_encoder/`` and ``tokenizer/``.
        steps: optimizer steps taken in total (including those before a resume).
        loss: the training loss of the last step (nan when this invocation took no step).
        evaluation: the held-out result at the end (see `evaluate_span_corruption`).
        vocab_size: the tokenizer's size (pieces + sentinels), the model's vocabulary.
        captions_per_second: training throughput of this invocation.
    """

    model_dir: Path
    steps: int
    loss: float
    evaluation: dict[str, float]
    vocab_size: int
    captions_per_second: float


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
    decoder reads the labels shifted right behind the start token."""
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
    ).logits


def span_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the real label tokens, in float32, and the count of them that
    the argmax gets right. logits: (batch, out_len, vocab); labels: (batch, out_len), -100 on padding."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
    return loss, correct


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


def _tokenizer_for_run(config: TrainT5Config, source: CaptionSource, output_dir: Path, resume: bool) -> Any:
    """Train the tokenizer (and keep it in the run folder), or load the kept one on resume."""
    from transformers import AutoTokenizer

    kept = output_dir / TOKENIZER_DIR
    if resume and (kept / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(kept)
    settings = config.tokenizer
    tokenizer = train_t5_tokenizer(
        source.first(settings.train_captions), settings.vocab_size, settings.sentinels, settings.max_length
    )
    tokenizer.save_pretrained(kept)
    return tokenizer


def train_t5(config: TrainT5Config, resume: bool = False, show_progress: bool = True) -> TrainT5Result:
    """Run (or resume) the span-corruption pretraining described by `config`.

    Args:
        config: the validated run config.
        resume: continue from the newest checkpoint in `config.output_dir` (a fresh start when
            there is none); without it, an output_dir that already holds a run is an error.
        show_progress: draw the tqdm bar (on the main process).

    Raises:
        TrainingDiverged: the loss became NaN/inf; the last good checkpoint stays in place.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_runtime(config.mixed_precision)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, resume) if accelerator.is_main_process else Path(config.output_dir)
    accelerator.wait_for_everyone()

    skipped = SkipCounter()
    source = CaptionSource(config.data, config.seed, config.eval_captions, skipped)
    if accelerator.is_main_process:
        tokenizer = _tokenizer_for_run(config, source, output_dir, resume)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(output_dir / TOKENIZER_DIR)
    sentinels = sentinel_ids(tokenizer)
    pieces = len(tokenizer) - len(sentinels)
    accelerator.print(
        f"tokenizer: {pieces} pieces (at most {config.tokenizer.vocab_size} asked) + {len(sentinels)} sentinels"
    )
    captions = CaptionTokenizer(tokenizer, config.tokenizer.max_length)
    corruption = SpanCorruption(
        config.noise_density,
        config.mean_noise_span_length,
        sentinels,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        config.seed,
    )

    set_seed(config.seed)
    model = build_t5(config.model, len(tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=True
    )
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)

    start_step, extra, checkpoint = resume_latest(
        accelerator, output_dir, resume, {"model": model}, optimizer, scheduler
    )
    skipped.counts.update(extra.get("skipped", {}))

    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(prepared_model)
    batches = SpanCorruptionBatches(
        source,
        captions,
        corruption,
        config.batch_size,
        start_step,
        accelerator.process_index,
        accelerator.num_processes,
    )
    markers = {*sentinels, tokenizer.eos_token_id}
    heldout = [
        {key: value.to(accelerator.device) for key, value in batch.items()}
        for batch in heldout_batches(source.heldout, captions, corruption, config.batch_size)
    ]

    global_batch = config.batch_size * accelerator.num_processes
    progress = progress_bar(accelerator, config.steps, start_step, "train-t5", show_progress)

    def evaluate(step: int) -> dict[str, float]:
        result = evaluate_span_corruption(unwrapped, heldout, markers, accelerator.autocast)
        progress.write(f"step {step}: held-out " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        _append_metrics(output_dir, {"step": step, **{f"eval/{k}": v for k, v in result.items()}})
        return result

    loss_value = float("nan")
    started = time.perf_counter()
    window_start, window_steps = started, 0
    last_checkpoint = checkpoint
    step = start_step
    for step in range(start_step + 1, config.steps + 1):
        batch = {key: value.to(accelerator.device) for key, value in next(batches).items()}
        with accelerator.autocast():
            logits = span_logits(prepared_model, batch)
        loss, correct = span_loss(logits, batch["labels"])
        accelerator.backward(loss)
        loss_value = accelerator.reduce(loss.detach().reshape(1), reduction="mean").item()
        if not np.isfinite(loss_value):
            progress.close()
            stop_if_diverged(loss_value, step, last_checkpoint, optimizer)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        window_steps += 1

        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = global_batch * window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            accuracy = correct.item() / max(int((batch["labels"] != IGNORE_INDEX).sum()), 1)
            metrics = {
                "loss": loss_value,
                "token_accuracy": accuracy,
                "lr": scheduler.get_last_lr()[0],
                "captions_per_second": speed,
            }
            progress.set_postfix(loss=f"{loss_value:.4f}", acc=f"{accuracy:.3f}", captions_s=f"{speed:.0f}")
            if accelerator.is_main_process:
                _append_metrics(output_dir, {"step": step, **metrics})

        if config.eval_every and step % config.eval_every == 0 and step != config.steps and accelerator.is_main_process:
            evaluate(step)

        last_checkpoint = checkpoint_if_due(
            accelerator,
            step,
            config,
            output_dir,
            {"model": unwrapped},
            optimizer,
            scheduler,
            {"skipped": dict(skipped.counts)},
            last_checkpoint,
        )
    elapsed = time.perf_counter() - started
    steps_run = step - start_step

    model_dir = output_dir / MODEL_DIR
    evaluation: dict[str, float] = {}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        evaluation = evaluate(step)
        progress.close()
        save_t5_encoder(unwrapped, tokenizer, model_dir)
        if config.data.source != "shapes":
            accelerator.print(skipped.report())
        if captions.truncated:
            accelerator.print(f"captions truncated to {config.tokenizer.max_length} tokens: {captions.truncated}")
    else:
        progress.close()
    return TrainT5Result(
        model_dir=model_dir,
        steps=step,
        loss=loss_value,
        evaluation=evaluation,
        vocab_size=len(tokenizer),
        captions_per_second=global_batch * steps_run / elapsed if elapsed > 0 and steps_run else 0.0,
    )


def _append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    with open(output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
