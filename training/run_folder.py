"""What every training loop does around its steps: check the machine before work, own the
run folder (refuse to overwrite another run, refuse to resume a changed config), and stop on a
diverged loss without saving the bad state."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import yaml

CONFIG_SNAPSHOT = "train_config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


def check_runtime(mixed_precision: str, log_with: str | None = None) -> None:
    """Errors that depend on the machine, raised before any work."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on a CPU")
    if log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ValueError("log_with 'tensorboard' needs the tensorboard package: pip install tensorboard")


def _defaults(config_class: type) -> dict[str, Any]:
    """Field -> default value (as `dataclasses.asdict` writes it) for fields that have one."""
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
            defaults[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return defaults


def prepare_output_dir(config: Any, resume: bool) -> Path:
    """Create `config.output_dir`, refuse to overwrite a different run, snapshot the config (a dataclass)."""
    output_dir = Path(config.output_dir)
    snapshot = output_dir / CONFIG_SNAPSHOT
    current = dataclasses.asdict(config)
    if snapshot.is_file():
        if not resume:
            raise ValueError(
                f"{output_dir} already holds a run; pass --resume to continue it or choose another output_dir"
            )
        previous = yaml.safe_load(snapshot.read_text())
        # A key missing from the snapshot (a field added since it was written) reads as its default.
        previous = {**_defaults(type(config)), **previous}
        changed = sorted(key for key in set(current) | set(previous) if current.get(key) != previous.get(key))
        if changed:
            raise ValueError(f"cannot resume {output_dir}: the config changed ({', '.join(changed)})")
    output_dir.mkdir(parents=True, exist_ok=True)
    temporary = snapshot.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(current, sort_keys=False))
    temporary.replace(snapshot)
    return output_dir


def stop_if_diverged(
    loss_value: float, step: int, last_checkpoint: Path | None, optimizer: torch.optim.Optimizer
) -> None:
    """Raise `TrainingDiverged` (gradients dropped, nothing saved) when the loss is NaN/inf."""
    if math.isfinite(loss_value):
        return
    optimizer.zero_grad(set_to_none=True)
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"loss became {loss_value} at step {step}; stopped without saving this state ({kept}). "
        "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )


def checkpoint_if_due(
    accelerator: Any,
    step: int,
    config: Any,
    output_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    extra: dict[str, Any],
    last: Path | None,
) -> Path | None:
    """Write a checkpoint every `config.checkpoint_every` steps and at `config.steps` (main
    process; every rank waits); returns the newest checkpoint folder (`last` when none is due)."""
    from clipcond.training.checkpoint import save_checkpoint

    if step % config.checkpoint_every and step != config.steps:
        return last
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return last
    return save_checkpoint(
        output_dir,
        step,
        modules,
        optimizer=getattr(optimizer, "optimizer", optimizer),
        scheduler=scheduler,
        extra=extra,
        keep=config.keep_checkpoints,
    )


def resume_latest(
    accelerator: Any,
    output_dir: Path,
    resume: bool,
    modules: dict[str, torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
) -> tuple[int, dict[str, Any], Path | None]:
    """With `resume`, load the newest checkpoint of `output_dir` into the objects given.

    Returns (the step to continue after, the checkpoint's `extra`, its folder); (0, {}, None)
    when not resuming or nothing was saved yet.
    """
    from clipcond.training.checkpoint import latest_checkpoint, load_checkpoint

    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is None:
        return 0, {}, None
    state = load_checkpoint(checkpoint, modules, optimizer, scheduler)
    accelerator.print(f"resuming from {checkpoint} (step {state['step']})")
    return state["step"], state["extra"], checkpoint


def progress_bar(accelerator: Any, total: int, start_step: int, name: str, show: bool) -> Any:
    """The run's tqdm bar over steps, drawn on the local main process only when `show`."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start_step,
        desc=name,
        dynamic_ncols=True,
        disable=not (show and accelerator.is_local_main_process),
    )
