"""The T5 pretraining loop (span corruption on captions), on accelerate.

`train_t5(config)` runs one `TrainT5Config` on the loop skeleton
(`clipcond.training.loop.TrainingRun`: run folder, resume, logging, checkpoints). What is T5's
is here: a SentencePiece-unigram tokenizer trained on the first captions of the data (kept in
``<output_dir>/tokenizer`` for resumes), a transformers `T5ForConditionalGeneration` built from
the config (`t5.model`), AdamW steps with warm-up + cosine on span-corrupted batches, the
held-out evaluation, and what a diffusion run needs saved at the end, the encoder alone::

    <output_dir>/model/text_encoder/   T5EncoderModel (config.json + model.safetensors)
    <output_dir>/model/tokenizer/      the tokenizer (AutoTokenizer.from_pretrained)

so ``t5_encoder: <output_dir>/model`` in a `train-diffusion` config loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcond.errors import user_errors
from clipcond.file_damage import refuse_damaged_folder
from clipcond.tokenization import load_saved_tokenizer
from clipcond.training.data import CaptionSource, CaptionTokenizer
from clipcond.training.data.sources import SkipCounter
from clipcond.training.loop import RunSetupError, TrainingRun, reading_part
from clipcond.training.optim import adamw_with_warmup_cosine
from clipcond.training.t5.batches import SpanCorruptionBatches, heldout_batches
from clipcond.training.t5.config import TrainT5Config
from clipcond.training.t5.model import (
    TOKENIZER_DIR,
    build_t5,
    evaluate_span_corruption,
    save_t5_encoder,
    span_logits,
    span_loss,
)
from clipcond.training.t5.span_corruption import IGNORE_INDEX, SpanCorruption
from clipcond.training.t5.tokenizer import sentinel_ids, train_t5_tokenizer

MODEL_DIR = "model"


@dataclass
class TrainT5Result:
    """What a finished run reports.

    Attributes:
        model_dir: the folder holding ``text_encoder/`` and ``tokenizer/``.
        steps: optimizer steps taken in total (including those before a resume).
        loss: the training loss of the last step; when this invocation took no step (resumed at
            the last one), the loss logged for it (nan if none was).
        evaluation: the held-out result at the end (see `evaluate_span_corruption`); the main
            process makes it, and every process returns it.
        vocab_size: the tokenizer's size (pieces + sentinels), the model's vocabulary.
        captions_per_second: training throughput of this invocation.
        skipped: unusable captions (manifest lines, shard members) skipped, by reason.
    """

    model_dir: Path
    steps: int
    loss: float
    evaluation: dict[str, float]
    vocab_size: int
    captions_per_second: float
    skipped: dict[str, int]


def _tokenizer_for_run(config: TrainT5Config, source: CaptionSource, output_dir: Path, resuming: bool) -> Any:
    """Train the tokenizer (and keep it in the run folder), or load the kept one when resuming
    from a checkpoint (a kept tokenizer without one may be a failed attempt's, of another config)."""
    kept = output_dir / TOKENIZER_DIR
    if resuming and (kept / "tokenizer_config.json").is_file():
        with reading_part("output_dir", kept):  # a damaged file is named (`clipcond.file_damage`)
            if not (kept / "tokenizer.json").is_file():  # transformers' error would name no file
                raise FileNotFoundError("tokenizer.json, the run's trained tokenizer, is missing: restore it")
            refuse_damaged_folder("the run's tokenizer", kept, [""])
            return load_saved_tokenizer(kept)
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
        RunFolderError: the output_dir cannot be used as asked (another live run holds it, it
            holds another run, its config changed, none of its checkpoints can be loaded).
        RunAlreadyFinished: `resume` of a run that took all its steps and saved its result.
    """
    from accelerate.utils import set_seed

    with TrainingRun(
        config, "train-t5", resume, show_progress, throughput_name="captions_per_second", result=MODEL_DIR
    ) as run:
        accelerator, output_dir = run.accelerator, run.output_dir
        startup_skips = SkipCounter()  # counted into the run at a fresh start only: a resume restores them
        # too few captions for the held-out ones: the user's data to fix, one line
        with user_errors(ValueError, error=RunSetupError):
            source = CaptionSource(config.data, config.seed, config.eval_captions, startup_skips)
        if accelerator.is_main_process:
            tokenizer = _tokenizer_for_run(config, source, output_dir, run.resume_from is not None)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            tokenizer = load_saved_tokenizer(output_dir / TOKENIZER_DIR)
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

        # every process alike, as diffusers' training scripts seed (accelerate's default): a checkpoint's
        # one RNG state then resumes every process exactly, and each process draws the same dropout
        # masks for its rows, so a run with dropout equals one process of the global batch only roughly
        set_seed(config.seed)
        model = build_t5(config.model, len(tokenizer))
        model.train()
        optimizer, scheduler = adamw_with_warmup_cosine(
            model, config.lr, config.weight_decay, config.warmup_steps, config.steps, betas=config.betas, eps=config.eps
        )
        start_step, _ = run.resume({"model": model}, optimizer, scheduler)
        if start_step == 0:
            run.skipped.counts.update(startup_skips.counts)

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
        last: dict[str, torch.Tensor] = {}  # the batch and argmax hits of the latest step, for its accuracy

        def backward(step: int) -> torch.Tensor:
            batch = {key: value.to(accelerator.device) for key, value in next(batches).items()}
            with accelerator.autocast():
                logits = span_logits(prepared_model, batch)
            loss, last["correct"] = span_loss(logits, batch["labels"])
            last["labels"] = batch["labels"]
            accelerator.backward(loss)
            return loss

        def update() -> None:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        def token_accuracy() -> dict[str, float]:
            """Of the latest step's global batch (every process calls it: the counts are summed)."""
            counts = torch.stack([last["correct"], (last["labels"] != IGNORE_INDEX).sum()]).reshape(1, 2)
            correct, targets = accelerator.reduce(counts, reduction="sum")[0].tolist()
            return {"token_accuracy": correct / max(targets, 1)}

        def evaluate(step: int) -> dict[str, float]:
            result = evaluate_span_corruption(unwrapped, heldout, markers, accelerator.autocast)
            run.log_evaluation(step, "held-out", result)
            return result

        def evaluate_if_due(step: int) -> None:
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                evaluate(step)

        outcome = run.train(backward, update, metrics=token_accuracy, after_step=evaluate_if_due)

        model_dir = run.result_dir
        # made on the main process: every rank's result
        evaluation = run.main_process_value(evaluate(outcome.steps) if accelerator.is_main_process else {})
        if accelerator.is_main_process:
            with run.writing_result() as folder:  # renamed to model_dir once whole
                save_t5_encoder(unwrapped, tokenizer, folder)
            if captions.truncated:
                accelerator.print(f"captions truncated to {config.tokenizer.max_length} tokens: {captions.truncated}")
    return TrainT5Result(
        model_dir=model_dir,
        steps=outcome.steps,
        loss=outcome.loss,
        evaluation=evaluation,
        vocab_size=len(tokenizer),
        captions_per_second=outcome.throughput,
        skipped=dict(run.skipped.counts),
    )
