"""The training-loop skeleton: what every objective's loop does around its own step.

`TrainingRun` is one invocation of a loop, on accelerate (processes, mixed precision and
device placement stay out of the objectives, as in accelerate's examples). An objective's
``train_*`` function meets it in this order::

    with TrainingRun(config, "train-t5", resume, show_progress) as run:    # 1. checks, lock, accelerator
        ...build the models, optimizer and schedule...                     #    (the objective)
        start_step, extra = run.resume(modules, optimizer, scheduler)      # 2. run folder, resume
        ...accelerator.prepare, batches from start_step...                 #    (the objective)
        outcome = run.train(backward, update, metrics=..., after_step=...)  # 3. the steps
        with run.writing_result() as folder:                               # 4. the result, whole
            ...save the result to folder (main process)...                 #    (the objective)
                                                                            # 5. leaving the block

1. Before any work: the machine (`check_runtime`), how accelerate spread the processes
   (`check_distributed_type`: data parallel only, as rank 0 saves whole weights), the data's files
   (`DataConfig.check_files`: every shard pattern matches its files) and the run folder: an
   empty name or a file in its place is refused (`run_folder.check_output_path`), its lock is taken
   (`run_lock.RunFolderLock`: a second live run on the folder is refused, a dead run's lock
   taken over), another run's folder is refused (`run_folder.check_output_dir`), a resume of a
   run that finished and saved its result stops here (`RunAlreadyFinished`), a resume on
   another number of processes than the checkpoints were written on is refused
   (`check_process_count`), and what writers
   killed mid-checkpoint or mid-save of the result left is removed.
2. The config snapshot is written once the objective's parts are built, so a wrong model path
   leaves no run folder behind. When resuming, the newest checkpoint that passes its checks is
   loaded (`checkpoint.load_newest_intact`; damaged newer ones are named in a warning and set
   aside as ``damaged-step-<N>``), and ``metrics.jsonl`` is cut back to what it held at that
   checkpoint (`run_folder.keep_metrics`), so the steps taken again are not recorded twice.
3. Each step: the objective's backward; the loss averaged over processes and checked (NaN or
   inf stops the run without saving: `TrainingDiverged`); the objective's update; the weights
   it trained checked (a finite loss does not make a finite update: an `lr` of 1e30 or an
   overflow in the optimizer turns the weights into NaN or inf, which also stops the run
   without saving); at each logging step ``metrics.jsonl``, the trackers and the progress bar,
   with the throughput of the window just logged (`Throughput`) and the learning rate that
   step's update used; the objective's evaluations;
   a checkpoint when due, every tensor it holds checked first. So every checkpoint, and the
   result saved from the last one, holds finite weights, and "the last good checkpoint" of a
   stop is one.
4. The objective saves its result through `TrainingRun.writing_result`: into a hidden folder
   renamed into place when complete (`folder_writes.writing_atomically`), so a kill while saving
   leaves no half-written result (the resumed run saves it again).
5. On success, the skipped samples are reported, the trackers closed and the run marked
   finished (`run_folder.mark_finished`). Always, the lock is given back. On an error before
   the run's first checkpoint, the config snapshot and metrics are set aside
   (``train_config.failed.yaml``, ``metrics.failed.jsonl``): the folder holds no run any more,
   and the retry, plain or with ``--resume``, with the same config or a corrected one, starts
   afresh without manual deletion. A folder holding a checkpoint stays the run's.

What differs between objectives (models, batches, the step, evaluations) comes in as plain
functions given to `TrainingRun.train`.

Why this module is over 400 lines: `TrainingRun` is the one lifecycle every objective shares,
and its stages above read in order in one class; what each stage calls (checkpoints, the
run folder, its lock, throughput) lives in its own module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcond.training.checkpoint import (
    CheckpointDamaged,
    checkpoint_folder,
    checkpoint_folders,
    checkpoint_step,
    latest_checkpoint,
    load_newest_intact,
    read_extra,
    remove_unfinished_writes,
    save_checkpoint,
    set_aside_damaged,
)
from clipcond.training.data import IMAGE_LOAD_FAILURES, SkipCounter
from clipcond.training.folder_writes import remove_unfinished_results, writing_atomically
from clipcond.training.rng_state import own_generator_states
from clipcond.training.run_folder import (
    CONFIG_SNAPSHOT,
    METRICS_FILE,
    RunAlreadyFinished,
    RunFolderError,
    check_output_dir,
    check_output_path,
    finished_step,
    keep_metrics,
    mark_finished,
    prepare_output_dir,
    set_aside,
)
from clipcond.training.run_lock import RunFolderLock

# the loop's own values in each checkpoint's `extra`: the metrics records written before it,
# the skipped samples counted up to it (reason -> count), and the number of processes that
# wrote it (the samples a step reads depend on it: `check_process_count`)
_METRICS_RECORDS = "metrics_records"
_SKIPPED = "skipped_samples"
_PROCESSES = "num_processes"


def run_skip_counts(before: Mapping[str, int], ranks: Sequence[Mapping[str, int]]) -> Counter:
    """The skipped samples of a run: `before` (restored from its checkpoint) plus each rank's
    counts since, reason by reason: an image that failed to load is counted by one rank, so the
    ranks' counts are added; a reason of the shared stream is counted by every rank that read
    that far, so the largest count (the rank that read furthest) is taken, once.

    Args:
        before: reason -> count, up to the resumed step.
        ranks: reason -> count of each process, since the resumed step.
    """
    total = Counter(before)
    for reason in {reason for counts in ranks for reason in counts}:
        counts = [rank_counts.get(reason, 0) for rank_counts in ranks]
        total[reason] += sum(counts) if reason in IMAGE_LOAD_FAILURES else max(counts)
    return total


def _is_count(value: Any) -> bool:
    """A non-negative int (JSON's true/false read as bools, which are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def extra_problem(extra: dict[str, Any], counts: Sequence[str] = ()) -> str | None:
    """What is wrong with the loop's values in a checkpoint's `extra` (None: nothing), so that a
    checkpoint whose trainer.json was damaged in a way that still parses is called damaged
    (`checkpoint.CheckpointDamaged`: set aside, an older one used) instead of failing the run
    after its weights are loaded.

    Args:
        extra: the checkpoint's `extra` mapping.
        counts: the objective's keys that must be there, each a count (diffusion's ``ema_step``).

    The loop's own keys may be missing (a checkpoint written before they were saved); when
    there, ``metrics_records`` is a count, ``num_processes`` a count of at least 1 and
    ``skipped_samples`` maps reasons to counts.
    """
    for key in counts:
        if key not in extra:
            return f"{key} is missing"
    for key in (*counts, _METRICS_RECORDS):
        if key in extra and not _is_count(extra[key]):
            return f"{key} is {extra[key]!r:.80}, not a count (an integer >= 0)"
    if _PROCESSES in extra and not (_is_count(extra[_PROCESSES]) and extra[_PROCESSES] >= 1):
        return f"{_PROCESSES} is {extra[_PROCESSES]!r:.80}, not a number of processes (an integer >= 1)"
    skipped = extra.get(_SKIPPED, {})
    if not isinstance(skipped, dict) or not all(_is_count(count) for count in skipped.values()):
        return f"{_SKIPPED} is {skipped!r:.80}, not a mapping of reasons to counts"
    return None


class RunSetupError(ValueError):
    """The run's parts cannot be built as its config asks (LoRA target modules that match no
    module of the model, a model folder it names that is damaged: `reading_part`): raised while
    the objective builds them, before the config snapshot and the first step, and reported by
    the training commands as a usage error."""


def reading_part(key: str, path: str | os.PathLike | None = None) -> AbstractContextManager[None]:
    """Inside the block, a part the run config names at `key` (the file or folder `path`) is read.

    The errors of reading damaged files there (weights truncated or empty, a ``config.json``
    that is not JSON or not a mapping, or holds a value of the wrong type, a file missing from
    the folder: `OSError`, `ValueError`, `TypeError`, `RuntimeError`, safetensors'
    `SafetensorError`, huggingface_hub's `StrictDataclassError`, which transformers 5 raises for
    a config field of the wrong type) become a `RunSetupError` whose message starts
    ``<key> <path>: `` (``<key>: `` without a path, for an error that names its file), raised
    before the config snapshot and the first step. Wrap only the reading, not code that runs
    the models: the same types raised elsewhere stay bugs.
    """
    from safetensors import SafetensorError

    from clipcond.errors import user_errors
    from clipcond.file_damage import config_value_errors

    context = f"{key} {path}: " if path is not None else f"{key}: "
    return user_errors(
        OSError, ValueError, RuntimeError, SafetensorError, *config_value_errors(), error=RunSetupError, context=context
    )


def check_process_count(output_dir: Path, num_processes: int) -> None:
    """Refuse to resume a run on another number of processes than its checkpoints were written
    on, before any work.

    Step `s` of rank `r` reads the global samples ``(s * world + r) * batch_size + k`` (and
    diffusion's noise is keyed by them), so a resumed step on another world size would read
    samples again or never, with another global batch: the run would end at neither run's
    weights. The newest checkpoint whose `extra` reads decides (the others are the same run's;
    a damaged one is set aside when the run loads); one written before the count was saved
    is accepted.

    Raises:
        RunFolderError: the count differs; the message names both counts.
    """
    for folder in checkpoint_folders(output_dir):
        try:
            saved = read_extra(folder, extra_problem).get(_PROCESSES)
        except CheckpointDamaged:
            continue
        if saved is not None and saved != num_processes:
            raise RunFolderError(
                f"cannot resume {output_dir} on {_processes(num_processes)}: its checkpoints were written by a run "
                f"on {_processes(saved)}, and the samples each step reads depend on that number; resume it with "
                f"`accelerate launch --num_processes {saved}`"
                + (" (or without accelerate launch)" if saved == 1 else "")
            )
        return


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


class TrainingDiverged(RuntimeError):
    """The loss or the trained weights became NaN or infinite; the run stopped without saving
    the bad state."""


def check_runtime(mixed_precision: str, log_with: str | None = None) -> None:
    """Errors that depend on the machine, raised before any work."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on a CPU")
    if log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ValueError("log_with 'tensorboard' needs the tensorboard package: pip install tensorboard")


# accelerate's `set_seed` seeds Python, NumPy and torch; NumPy's legacy seeding takes only this range.
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: Any, key: str = "seed") -> None:
    """Refuse a seed that `accelerate.utils.set_seed` cannot take, before any work.

    Raises:
        ValueError: `seed` is not an integer in `SEED_RANGE`; the message names `key`.
    """
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise ValueError(
            f"`{key}` must be an integer in [0, 2**32 - 1] (NumPy and torch are seeded with it), got {seed!r}"
        )


# The ways accelerate can split the weights across processes. The checkpoints and the saved
# result are whole modules written by rank 0 (`_save_checkpoint`), which has every weight only
# when each process keeps a full copy (data parallel: DDP); sharded weights and optimizer
# states would need a gather on every rank first, which the loops do not do.
_SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def check_distributed_type(distributed_type: Any) -> None:
    """Refuse a process layout whose weights are sharded, before any work.

    Args:
        distributed_type: `accelerator.distributed_type` (an accelerate `DistributedType`).

    Raises:
        ValueError: FSDP, DeepSpeed or Megatron-LM: rank 0 would save only its shard.
    """
    name = getattr(distributed_type, "name", str(distributed_type))
    if name in _SHARDED:
        raise ValueError(
            f"accelerate's {name} is not supported by clipcond's training loops: their checkpoints and "
            "results are written by rank 0 from whole weights, which sharded training does not keep on one "
            "process; launch with data parallelism (`accelerate launch --multi_gpu`, DDP)"
        )


class Throughput:
    """Samples per second of a loop: over the window since the last reading, and overall.

    A window holds the steps actually taken since the previous reading (or since the meter
    started), so a short last window and the first window after a resume are measured on
    their own steps, not on `log_every`.

    Args:
        samples_per_step: samples one step reads on all processes together.
        clock: seconds, monotonic (default `time.perf_counter`).
    """

    def __init__(self, samples_per_step: int, clock: Callable[[], float] | None = None) -> None:
        self.samples_per_step = samples_per_step
        self._clock = clock or time.perf_counter
        self._started = self._window_started = self._clock()
        self._steps = self._window_steps = 0

    def step(self) -> None:
        """Count one step taken."""
        self._steps += 1
        self._window_steps += 1

    def window(self) -> float:
        """Samples per second over the steps since the previous call; starts the next window."""
        now = self._clock()
        rate = self.samples_per_step * self._window_steps / max(now - self._window_started, 1e-9)
        self._window_started, self._window_steps = now, 0
        return rate

    def overall(self) -> float:
        """Samples per second over every step counted (0.0 before the first)."""
        elapsed = self._clock() - self._started
        return self.samples_per_step * self._steps / elapsed if self._steps and elapsed > 0 else 0.0


@dataclass
class TrainingOutcome:
    """What the steps of one invocation came to.

    Attributes:
        steps: optimizer steps taken in total (including those before a resume).
        loss: the loss of the last step; when this invocation took no step (resumed at the
            last one), the loss logged for it (nan if none was).
        throughput: samples per second over this invocation's steps.
    """

    steps: int
    loss: float
    throughput: float


class TrainingRun:
    """One invocation of a training loop (see the module docstring for its stages).

    Args:
        config: the run config: a dataclass with `data` (a `DataConfig`), `output_dir`, `steps`,
            `batch_size`, `mixed_precision`, `log_every`, `checkpoint_every` and `keep_checkpoints`.
        name: the command ("train-clip"): the progress bar's label and the tracker's project.
        resume: continue from the newest intact checkpoint in `config.output_dir` (a fresh start
            when there is none); without it, a folder that holds another run is an error.
        show_progress: draw the progress bar (on the local main process).
        log_with: an accelerate tracker ("tensorboard") that also receives the metrics, or None.
        throughput_name: the metric the throughput is logged as.
        result: the folder of `output_dir` the objective saves its result to ("model",
            "pipeline"): a resume finds a run finished only when it is there.

    Attributes:
        accelerator: the `accelerate.Accelerator` of the run.
        output_dir: the run folder.
        result_dir: where the objective saves its result (``output_dir / result``).
        resume_from: known before anything is built: the newest checkpoint folder (None: a
            fresh start); after `resume`, the checkpoint loaded (an older one when it was damaged).
        skipped: unusable samples, give it to the data sources: this process's counts during
            `train`, the run's (every process's, `run_skip_counts`, with those before a resume)
            after it. Each checkpoint keeps the run's counts and a resume restores them
            (`resume`): the sources count only what they read after the resumed step (shards
            and manifests reach it without decoding; train-t5 counts its captions' skips at a
            fresh start only). A bad manifest line or shard member that the search for a stand-in
            image reads ahead of the steps is counted when a step reaches its place, not when it
            is read, so it counts once across a resume.
        last_checkpoint: the run's last good checkpoint: the one `resume` loaded, then each one
            saved (None before either; also after a resume whose checkpoints were deleted
            since the start).

    Raises:
        RunFolderInUse: another live run holds `output_dir`.
        RunFolderError: `output_dir` holds another run, or its config changed (`check_output_dir`),
            or, resuming, its checkpoints were written on another number of processes
            (`check_process_count`).
        RunAlreadyFinished: resuming a run that took all its steps and saved its result.
    """

    def __init__(
        self,
        config: Any,
        name: str,
        resume: bool = False,
        show_progress: bool = True,
        log_with: str | None = None,
        throughput_name: str = "samples_per_second",
        result: str = "model",
    ) -> None:
        from accelerate import Accelerator

        check_runtime(config.mixed_precision, log_with)
        config.data.check_files()
        check_output_path(config.output_dir)
        self.config = config
        self.name = name
        self.show_progress = show_progress
        self.log_with = log_with
        self.throughput_name = throughput_name
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, log_with=log_with, project_dir=config.output_dir
        )
        check_distributed_type(self.accelerator.distributed_type)
        self.output_dir = Path(config.output_dir)
        self.result_dir = self.output_dir / result
        self._resume = resume
        self.skipped = SkipCounter()
        self._skipped_before: Counter = Counter()  # the run's counts up to the resumed step
        self._start_step = 0
        self._saved: tuple[dict[str, torch.nn.Module], Any, Any] | None = None
        self._progress: Any = None
        self._took_folder = False
        self._trained_to_end = False
        self._metrics_records = 0
        self._resumed_loss = float("nan")
        self._lock = RunFolderLock(self.output_dir) if self.accelerator.is_main_process else None
        self._made_output_dir = not self.output_dir.exists()
        try:
            self._check_folder(resume)
        except BaseException:
            self._release_folder()
            raise
        self.last_checkpoint: Path | None = None
        self._checked_step = 0  # the last step whose state was checked finite (`_check_saved_state`)

    def _check_folder(self, resume: bool) -> None:
        """Stage 1 for the run folder: its lock taken (main process), then refused when it holds
        another run or a changed config, done when it holds this run finished, cleared of what
        killed checkpoint writers left (only now: under the lock, no other writer lives)."""
        if self._lock is not None:
            dead_holder = self._lock.acquire()
            check_output_dir(self.config, resume)
            if dead_holder is not None:
                self.accelerator.print(f"took over the lock of a run that ended ({dead_holder})")
        self.resume_from = latest_checkpoint(self.output_dir) if resume else None
        self._stop_if_finished()
        if self.resume_from is not None:
            try:
                check_process_count(self.output_dir, self.accelerator.num_processes)
            except RunFolderError:  # raised on every rank: the main one gives its lock back first
                self._release_folder()
                self.accelerator.wait_for_everyone()
                raise
        if self._lock is not None:
            for path in remove_unfinished_writes(self.output_dir):
                self.accelerator.print(f"removed {path}, left by a checkpoint write that was killed")
            for path in remove_unfinished_results(self.output_dir, self.result_dir.name):
                self.accelerator.print(f"removed {path}, left by a save of the result that was killed")

    def _stop_if_finished(self) -> None:
        """A resume of a run whose last checkpoint is its last step, marked finished after its
        result was saved, has nothing to do."""
        step = finished_step(self.output_dir)
        if (
            self.resume_from is not None
            and step == self.config.steps
            and checkpoint_step(self.resume_from) == step
            and self.result_dir.exists()
        ):
            raise RunAlreadyFinished(
                f"run already finished at step {step}; nothing to do (its result: {self.result_dir})"
            )

    def _release_folder(self) -> None:
        """Give the lock back; remove the run folder when this run made it and left it empty."""
        if self._lock is None:
            return
        self._lock.release()
        if self._made_output_dir and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, error_type: type | None, error: BaseException | None, traceback: Any) -> None:
        try:
            if self._progress is not None:
                self._progress.close()
            if error is not None:
                self._hand_back_folder_without_checkpoint()
                return
            if self.accelerator.is_main_process:
                self.accelerator.print(self.skipped.report())
                if self._trained_to_end:
                    mark_finished(self.output_dir, self.config.steps)
            if self.log_with:
                self.accelerator.end_training()
        finally:
            self._release_folder()

    def resume(
        self,
        modules: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        counts: Sequence[str] = (),
    ) -> tuple[int, dict[str, Any]]:
        """Take the run folder (write the config snapshot) and, when resuming, load the newest
        intact checkpoint into the objects given: the ones every checkpoint of this run saves.

        Args:
            modules: name -> module, each saved as ``<name>.safetensors``.
            optimizer: the optimizer (before `accelerator.prepare`; its state is saved).
            scheduler: the learning-rate schedule (its `state_dict` is saved).
            counts: the keys of the objective's `extra` (given to `train`) that each checkpoint
                holds as a count; a checkpoint without one, or with another value, is damaged
                (`extra_problem`), as is one whose loop values are not what the loop writes.

        Returns:
            (the step to continue after: 0 on a fresh start, the checkpoint's `extra` values,
            checked).

        Raises:
            NoIntactCheckpoint: the run has checkpoints and none of them can be loaded.
        """
        accelerator = self.accelerator
        if accelerator.is_main_process:
            prepare_output_dir(self.config, self._resume)
            self._took_folder = True
            if self.resume_from is None:  # records of an attempt that left no checkpoint
                set_aside(self.output_dir, METRICS_FILE)
        accelerator.wait_for_everyone()
        self._saved = (modules, optimizer, scheduler)
        if self.resume_from is None:
            return 0, {}
        point = load_newest_intact(
            self.output_dir,
            modules,
            optimizer,
            scheduler,
            check_extra=lambda extra: extra_problem(extra, counts),
            process_index=accelerator.process_index,
            device=accelerator.device,
        )
        if point is None:  # its checkpoint folders were deleted since the start (by hand: we hold the lock)
            self.resume_from = None
            return 0, {}
        for folder, problem in point.passed_over:
            accelerator.print(
                f"warning: checkpoint {folder} is damaged ({problem}); not resuming from it", file=sys.stderr
            )
        accelerator.wait_for_everyone()  # every process has read the checkpoints it passed over
        if accelerator.is_main_process:
            for folder, _ in point.passed_over:
                accelerator.print(f"warning: set aside as {set_aside_damaged(folder)}", file=sys.stderr)
            kept = keep_metrics(self.output_dir, point.extra.get(_METRICS_RECORDS), point.step)
            self._metrics_records = len(kept)
            losses = [r["loss"] for r in kept if r.get("step") == point.step and isinstance(r.get("loss"), float)]
            self._resumed_loss = losses[-1] if losses else float("nan")
        self._resumed_loss = self.main_process_value(self._resumed_loss)  # the main process read it
        accelerator.print(f"resuming from {point.folder} (step {point.step})")
        self.resume_from = self.last_checkpoint = point.folder
        self._start_step = point.step
        self._skipped_before.update(point.extra.get(_SKIPPED, {}))
        return point.step, point.extra

    def train(
        self,
        backward: Callable[[int], torch.Tensor],
        update: Callable[[], None],
        metrics: Callable[[], dict[str, float]] | None = None,
        after_step: Callable[[int], None] | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> TrainingOutcome:
        """Take the steps after the resumed one up to `config.steps`.

        Args:
            backward: step (1-based) -> the loss of this process on that step's batch (a
                scalar tensor), its gradients computed.
            update: applies the gradients (optimizer, schedule, and whatever the objective
                adds) and clears them; called only for a finite loss. What it trained is checked
                before each checkpoint (`_check_saved_state`).
            metrics: the objective's numbers at a logging step, logged after ``loss``.
            after_step: step -> None, on the main process after each step's logging
                (evaluations, samples).
            extra: JSON values saved with each checkpoint besides the loop's own (how many metrics
                records were written), given back by `resume`.

        Raises:
            TrainingDiverged: the loss or the trained weights became NaN/inf (or the weights
                were so before the first step); the last good checkpoint stays in place.
        """
        if self._saved is None:
            raise RuntimeError("TrainingRun.resume(modules, optimizer, scheduler) must come before train()")
        accelerator, config = self.accelerator, self.config
        _, optimizer, scheduler = self._saved
        self._check_saved_state(self._start_step, before_training=True)
        if self.log_with:
            accelerator.init_trackers(f"clipcond-{self.name}", config=_flat(dataclasses.asdict(config)))
        self._progress = _progress_bar(accelerator, config.steps, self._start_step, self.name, self.show_progress)
        throughput = Throughput(config.batch_size * accelerator.num_processes)
        loss_value, step = self._resumed_loss, self._start_step
        for step in range(self._start_step + 1, config.steps + 1):
            loss = backward(step)
            loss_value = accelerator.reduce(loss.detach().reshape(1), reduction="mean").item()
            if not math.isfinite(loss_value):
                self._stop_diverged(loss_value, step, optimizer)
            step_lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
            update()
            self._progress.update(1)
            throughput.step()
            if step % config.log_every == 0 or step == config.steps:
                objective_metrics = metrics() if metrics is not None else {}
                record = {"loss": loss_value, **objective_metrics, "lr": step_lr}
                self._log_step(step, {**record, self.throughput_name: throughput.window()})
            if after_step is not None and accelerator.is_main_process:
                after_step(step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                self._save_checkpoint(step, extra() if extra is not None else {})
        self._progress.close()
        accelerator.wait_for_everyone()
        self.skipped.counts, self._skipped_before = self._run_skip_counts(), Counter()  # every process's
        self._trained_to_end = True
        return TrainingOutcome(steps=step, loss=loss_value, throughput=throughput.overall())

    def main_process_value(self, value: Any) -> Any:
        """`value` as the main process holds it, returned on every process (as it is on one
        process), so that what only the main process computes (the loss it reads back on a
        resume, an evaluation) is every rank's result. Every process must call it: it is a
        broadcast (`accelerate.utils.broadcast_object_list`, picklable values)."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def writing_result(self) -> AbstractContextManager[Path]:
        """Where the objective saves its result (main process): ``with run.writing_result() as
        folder:``, the folder a hidden temporary one, renamed to `result_dir` when the block ends
        without error (`folder_writes.writing_atomically`; an older result is replaced only then)."""
        return writing_atomically(self.result_dir)

    def log_evaluation(self, step: int, label: str, result: dict[str, float]) -> None:
        """An evaluation's numbers (main process): a line under the progress bar, ``eval/<key>``
        in ``metrics.jsonl`` and the trackers."""
        write = self._progress.write if self._progress is not None else self.accelerator.print
        write(f"step {step}: {label} " + ", ".join(f"{key} {value:.4f}" for key, value in result.items()))
        named = {f"eval/{key}": value for key, value in result.items()}
        self._append_metrics({"step": step, **named})
        if self.log_with:
            self.accelerator.log(named, step=step)

    def _hand_back_folder_without_checkpoint(self) -> None:
        """After an error: a folder this run took and left without a checkpoint is freed."""
        if not self._took_folder or checkpoint_folders(self.output_dir):
            return
        moved = set_aside(self.output_dir, CONFIG_SNAPSHOT, METRICS_FILE)
        self.accelerator.print(
            f"{self.name} stopped before its first checkpoint: {self.output_dir} holds no run any more "
            f"(set aside: {', '.join(path.name for path in moved)}); rerun to start afresh"
        )

    def _log_step(self, step: int, record: dict[str, float]) -> None:
        short = self.throughput_name.replace("_per_second", "_s")
        shown = {key: f"{value:.4g}" for key, value in record.items() if key not in ("lr", self.throughput_name)}
        self._progress.set_postfix(**shown, **{short: f"{record[self.throughput_name]:.0f}"})
        if self.log_with:
            self.accelerator.log(record, step=step)
        if self.accelerator.is_main_process:
            self._append_metrics({"step": step, **record})

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._metrics_records += 1

    def _stop_diverged(self, loss_value: float, step: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(
            f"loss became {loss_value} at step {step}; stopped without saving this state ({self._kept_checkpoint()}). "
            "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
        )

    # ------------------------------------------------------------ finite weights
    #
    # Checked before anything is written, not after every update: before a checkpoint (and so
    # before the result, which is saved from the state of the last one) every floating tensor
    # the checkpoint holds (weights, buffers, EMA weights, frozen parts), in one fused reduction
    # (their largest absolute value: NaN propagates through torch's max, inf stays inf, a finite
    # weight cannot overflow it) and one read; and once before the first step, so that a resumed
    # checkpoint written by an older, unchecked run is never called "the last good checkpoint".
    # After every update the same reduction cost 11-13% of a step of the diffusion benchmark's
    # tiny UNet on one CPU thread (bench_train_diffusion, 2026-11-29); and weights made NaN make
    # the next step's loss NaN, which the per-step loss check stops at, so what the write checks
    # add is the last steps before a checkpoint, and state the loss does not read (EMA weights).

    def _finite_everywhere(self, tensors: Iterable[torch.Tensor]) -> bool:
        """Whether every value of `tensors` is finite on every process (all processes get the
        same answer: the largest absolute values are summed across them)."""
        tensors = [tensor.detach() for tensor in tensors if tensor.is_floating_point() and tensor.numel()]
        device = self.accelerator.device
        largest = torch.zeros(1, device=device)
        if tensors:
            # torch's own multi-tensor norm, as `clip_grad_norm_` uses it (one kernel per device and dtype)
            norms = torch._foreach_norm(tensors, math.inf)
            largest = torch.stack([norm.float().to(device) for norm in norms]).max().reshape(1)
        return math.isfinite(self.accelerator.reduce(largest, reduction="sum").item())

    def _saved_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """(``<module>.<name>``, tensor) of every floating tensor a checkpoint holds."""
        modules, _, _ = self._saved
        for module_name, module in modules.items():
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point():
                    yield f"{module_name}.{name}", tensor

    def _nonfinite_names(self, limit: int = 3) -> str:
        """The saved tensors holding NaN or inf on this process: the first `limit` names and how many."""
        names = [name for name, tensor in self._saved_tensors() if not torch.isfinite(tensor).all()]
        if not names:
            return "on another process"
        shown = ", ".join(names[:limit])
        return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

    def _check_saved_state(self, step: int, before_training: bool = False) -> None:
        """Every floating tensor a checkpoint holds is finite, else the run stops (before the
        first step: the weights it starts from; after `step`: what would be saved)."""
        if self._finite_everywhere(tensor for _, tensor in self._saved_tensors()):
            self._checked_step = step  # the last step whose state was seen finite
            return
        if not before_training:
            self._stop_weights_diverged(step)
        names = self._nonfinite_names()
        if self.resume_from is not None:
            raise TrainingDiverged(
                f"the weights loaded from {self.resume_from} hold NaN or inf ({names}): that checkpoint was "
                "written by a run that diverged. Move it aside to resume from an earlier one, or start afresh."
            )
        raise TrainingDiverged(
            f"the weights hold NaN or inf before the first step ({names}); check the model the run starts from "
            "(`init_from`)"
        )

    def _stop_weights_diverged(self, step: int) -> None:
        first = self._checked_step + 1
        since = f"updates of steps {first} to {step}" if step > first else f"update of step {step}"
        raise TrainingDiverged(
            f"the weights became NaN or inf in the {since} ({self._nonfinite_names()}), with a "
            f"finite loss; stopped without saving this state ({self._kept_checkpoint()}). "
            "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
        )

    def _kept_checkpoint(self) -> str:
        if self.last_checkpoint:
            return f"the last good checkpoint is {self.last_checkpoint}"
        return "no checkpoint was written yet"

    def _run_skip_counts(self) -> Counter:
        """The run's skipped samples so far (`run_skip_counts`), on every process: each process
        must call it (the counts are gathered)."""
        from accelerate.utils import gather_object

        ranks = [dict(self.skipped.counts)]
        if self.accelerator.num_processes > 1:
            ranks = gather_object(ranks)
        return run_skip_counts(self._skipped_before, ranks)

    def _save_checkpoint(self, step: int, extra: dict[str, Any]) -> None:
        """Every rank checks the state (`_check_saved_state`) and gives its skip counts; the
        main process writes (see `clipcond.training.checkpoint`)."""
        self._check_saved_state(step)
        skipped = self._run_skip_counts()
        process_rng = None
        if self.accelerator.num_processes > 1:  # each rank's own generators (rng_state's docstring)
            from accelerate.utils import gather_object

            process_rng = gather_object([own_generator_states(self.accelerator.device)])
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            # what the main process writes now: the checkpoint this rank's messages name
            self.last_checkpoint = checkpoint_folder(self.output_dir, step)
            return
        modules, optimizer, scheduler = self._saved
        self.last_checkpoint = save_checkpoint(
            self.output_dir,
            step,
            modules,
            optimizer=optimizer,
            scheduler=scheduler,
            extra={
                **extra,
                _METRICS_RECORDS: self._metrics_records,
                _SKIPPED: dict(skipped),
                _PROCESSES: self.accelerator.num_processes,
            },
            keep=self.config.keep_checkpoints,
            process_rng=process_rng,
        )


def _progress_bar(accelerator: Any, total: int, start_step: int, name: str, show: bool) -> Any:
    """The run's tqdm bar over steps, drawn on the local main process only when `show`."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start_step,
        desc=name,
        dynamic_ncols=True,
        disable=not (show and accelerator.is_local_main_process),
    )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"data.source": ...} with values trackers accept (numbers, strings)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
