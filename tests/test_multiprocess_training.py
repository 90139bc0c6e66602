"""Training on several processes (accelerate on the CPU, gloo): two processes of `batch_size`
end with the weights of one process of `2 * batch_size`, survive a SIGKILL of one rank with
``--resume``, and only rank 0 writes in the run folder.

Why the weights agree "within 1e-5" and not bit for bit: the two runs add up the same
gradients in a different order (one backward over the global batch, or two halves averaged by
DDP), and AdamW divides each gradient by its running RMS, so a component whose true gradient
is zero or nearly so (an attention key bias: softmax ignores it exactly) moves by up to `lr`
on rounding noise alone, differently in each run, so the difference grows with `lr`; the tests
train at lr 1e-4 and assert 1e-5 on the weights and 1e-6 on the per-step losses. Reading the wrong samples (a rank reading another rank's part, or the noise keyed by
rank) changes the losses from the second step and the weights by about `lr` per step, far
above 1e-5.

The fast tests here run in the default suite: the data each rank reads, the per-sample noise,
two processes forked by accelerate's `debug_launcher` training CLIP (whole batches and
micro-batches), and two such processes where one rank alone holds a NaN (both must stop). The slow one runs the real command line, ``accelerate launch --multi_gpu
--num_processes 2`` with
``ACCELERATE_USE_CPU=1`` (how accelerate 1.x starts several CPU processes on one machine:
torchrun underneath, the gloo backend), for `train-clip` and `train-diffusion`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import rank_audit
import torch
import yaml
from killing import kill_after_checkpoint
from PIL import Image
from safetensors.torch import load_file
from test_train_diffusion import UNET

from clipcond.models import load_clip
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.loop import train_clip
from clipcond.training.data import DataConfig, ImageCaptionBatches, SampleGenerators
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import check_distributed_type

REPO = Path(__file__).resolve().parents[1]
# A ViT: a ResNet tower's BatchNorm normalises over each process's batch, so it cannot match one process.
TINY_VIT = str(REPO / "configs" / "models" / "clip-tiny-vit.yaml")
WORLD = 2
TOLERANCE = 1e-5


def fresh_forked_process() -> None:
    """Start a process forked by accelerate's `debug_launcher` afresh: it inherits the parent's
    accelerate singletons (reset here) and its OpenMP pool, which hangs in a parallel region (one
    thread, also for the processes it starts)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def clip_config(output_dir: Path, batch_size: int, **overrides) -> TrainClipConfig:
    settings = dict(
        model=TINY_VIT,
        batch_size=batch_size,
        steps=3,
        lr=1e-4,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        output_dir=str(output_dir),
        eval_images_per_class=1,
    )
    return TrainClipConfig(**{**settings, **overrides})


def diffusion_config(text_encoder: Path, output_dir: Path, batch_size: int, **overrides) -> TrainDiffusionConfig:
    settings = dict(
        text_encoder=str(text_encoder),
        unet=UNET,
        image_size=16,
        batch_size=batch_size,
        steps=3,
        lr=1e-4,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        output_dir=str(output_dir),
        ema_decay=0.9,
        caption_dropout=0.3,  # dropped captions are per sample too
    )
    return TrainDiffusionConfig(**{**settings, **overrides})


def clip_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_clip(run_dir / "model").clip_state_dict()


def unet_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def assert_only_rank_zero_wrote(run_dir: Path, log_prefix: Path) -> None:
    logs = sorted(log_prefix.parent.glob(f"{log_prefix.name}.rank*"))
    assert [log.name for log in logs] == [f"{log_prefix.name}.rank1"]  # rank 1 ran under the hook
    assert logs[0].read_text() == "", f"rank 1 wrote in the run folder:\n{logs[0].read_text()[:2000]}"
    assert rank_audit.files_from_other_ranks(run_dir) == []
    assert (run_dir / "checkpoints").is_dir()  # there was something to write


# ----------------------------------------------------------------------------- what each rank reads


def _manifest(folder: Path, count: int) -> DataConfig:
    lines = []
    for index in range(count):
        Image.new("RGB", (8, 8), (index * 40 % 256, 0, 0)).save(folder / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "caption": f"picture {index}"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), shuffle=False)


@pytest.mark.parametrize("source", ["shapes", "manifest"])
def test_ranks_read_consecutive_disjoint_parts_of_the_global_batch(tmp_path: Path, source: str) -> None:
    data = DataConfig() if source == "shapes" else _manifest(tmp_path, 6)
    local, start = 2, 1  # a resumed run: step 1 on; the manifest's 6 samples wrap within step 1

    def batches(batch_size: int, rank: int, world: int) -> ImageCaptionBatches:
        return ImageCaptionBatches(data, None, 16, batch_size, seed=3, start_step=start, rank=rank, world=world)

    one = batches(WORLD * local, 0, 1)
    ranks = [batches(local, rank, WORLD) for rank in range(WORLD)]
    read = []
    for step in range(start, start + 3):
        pixels, captions = one.next_with_captions()
        parts = [rank.next_with_captions() for rank in ranks]
        assert [caption for _, part in parts for caption in part] == captions, step
        assert torch.equal(torch.cat([part_pixels for part_pixels, _ in parts]), pixels)
        assert [index for rank in ranks for index in rank.indices(step)] == one.indices(step)
        read.append(captions)
    assert one.indices(start) == [4, 5, 6, 7] and ranks[1].indices(start) == [6, 7]
    if source == "manifest":  # global samples 4..7 of a 6-line manifest: lines 4, 5, then 0, 1 of the next epoch
        assert read[0] == ["picture 4", "picture 5", "picture 0", "picture 1"]


def test_sample_generators_give_each_sample_its_numbers_whatever_the_split() -> None:
    whole = SampleGenerators(7, range(8))
    halves = [SampleGenerators(7, range(0, 4)), SampleGenerators(7, range(4, 8))]
    # in the order the diffusion step draws: latent noise, noise, timesteps
    for draw in (lambda g: g.normal((len(g), 3, 4, 4)), lambda g: g.normal((len(g), 2)), lambda g: g.integers(1000)):
        expected = draw(whole)
        assert torch.equal(torch.cat([draw(half) for half in halves]), expected)
    assert not torch.equal(SampleGenerators(8, range(4)).normal((4, 5)), SampleGenerators(7, range(4)).normal((4, 5)))
    first, second = SampleGenerators(7, [0, 1]).normal((2, 6))
    assert not torch.equal(first, second)  # each sample its own numbers
    other_stream = SampleGenerators(7, range(4), stream="latents").normal((4, 5))
    assert not torch.equal(other_stream, SampleGenerators(7, range(4)).normal((4, 5)))
    with pytest.raises(ValueError, match=r"shape \(3, 5\) must have 4 rows"):
        SampleGenerators(7, range(4)).normal((3, 5))
    with pytest.raises(ValueError, match="at least one sample"):
        SampleGenerators(7, [])


def test_sharded_training_is_refused_before_any_work() -> None:
    from accelerate.utils import DistributedType

    for data_parallel in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distributed_type(data_parallel)
    for sharded in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        with pytest.raises(ValueError) as refused:
            check_distributed_type(sharded)
        assert str(refused.value) == (
            f"accelerate's {sharded.name} is not supported by clipcond's training loops: their checkpoints "
            "and results are written by rank 0 from whole weights, which sharded training does not keep on "
            "one process; launch with data parallelism (`accelerate launch --multi_gpu`, DDP)"
        )


# ----------------------------------------------------------------------------- two forked processes


def _forked_rank(objective: str, config, log_prefix: str) -> None:
    """One rank under accelerate's debug_launcher (forked from the test process)."""
    fresh_forked_process()
    rank_audit.mark_rank(torch.distributed.get_rank(), config.output_dir, log_prefix)  # the launcher's group
    train = train_clip if objective.startswith("clip") else train_diffusion
    train(config, show_progress=False)


@pytest.mark.parametrize("objective", ["clip", "clip-micro-batches", "diffusion"])
def test_two_forked_processes_end_with_the_weights_of_one(tmp_path: Path, tiny_clip_text_path, objective) -> None:
    """Two processes of 2 samples (each cut in two micro-batches of 1 for "clip-micro-batches":
    the temperature's gradient must join DDP's synchronised backward, or DDP averages none of
    the towers' gradients) end with the weights of one process of 4, whole."""
    from accelerate import debug_launcher

    if objective.startswith("clip"):
        micro = 1 if objective == "clip-micro-batches" else None
        one = clip_config(tmp_path / "one", 4)
        two = clip_config(tmp_path / "two", 2, micro_batch_size=micro)
        weights = clip_weights
    else:
        one, two = (
            diffusion_config(tiny_clip_text_path, tmp_path / name, batch) for name, batch in (("one", 4), ("two", 2))
        )
        weights = unet_weights
    (train_clip if objective.startswith("clip") else train_diffusion)(one, show_progress=False)
    debug_launcher(_forked_rank, args=(objective, two, str(tmp_path / "audit")), num_processes=WORLD)

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)
    difference = max_difference(weights(tmp_path / "one"), weights(tmp_path / "two"))
    assert difference <= TOLERANCE, difference
    assert_only_rank_zero_wrote(tmp_path / "two", tmp_path / "audit")
    # each rank's own generators, for each to resume its own (training/rng_state.py)
    for checkpoint in (tmp_path / "two" / "checkpoints").glob("step-*"):
        saved = load_file(str(checkpoint / "rng.safetensors"))
        assert {"process_0.torch_cpu", "process_1.torch_cpu"} <= saved.keys(), sorted(saved)


# ----------------------------------------------------------------------------- accelerate launch


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(module: str, config_path: Path, run_dir: Path, log_prefix: Path) -> list[str]:
    """`accelerate launch` of `module` on two CPU processes, each rank marked by `rank_audit`."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD)),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port())),
        *(str(REPO / "tests" / "rank_audit.py"), str(run_dir), str(log_prefix), module),
        *("--config", str(config_path), "--no-progress"),
    ]


def _write_yaml(path: Path, config) -> Path:
    import dataclasses

    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clip", "diffusion"])
def test_accelerate_launch_matches_one_process_and_resumes_after_a_rank_is_killed(
    tmp_path: Path, tiny_clip_text_path, objective
) -> None:
    steps = dict(steps=20, checkpoint_every=5, log_every=5)
    if objective == "clip":
        module, weights = "clipcond.training.train_clip", clip_weights
        make = lambda name, batch: clip_config(tmp_path / name, batch, **steps)  # noqa: E731
        train = train_clip
    else:
        module, weights = "clipcond.training.train_diffusion", unet_weights
        make = lambda name, batch: diffusion_config(tiny_clip_text_path, tmp_path / name, batch, **steps)  # noqa: E731
        train = train_diffusion
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONHASHSEED": "0"}
    train(make("one", 4), show_progress=False)

    # uninterrupted, on two processes
    whole = _write_yaml(tmp_path / "two.yaml", make("two", 2))
    done = subprocess.run(
        _launch(module, whole, tmp_path / "two", tmp_path / "two-audit"), env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    difference = max_difference(weights(tmp_path / "one"), weights(tmp_path / "two"))
    assert difference <= TOLERANCE, difference
    assert_only_rank_zero_wrote(tmp_path / "two", tmp_path / "two-audit")

    # rank 1 killed after a checkpoint: the launch fails; --resume on two processes ends where the uninterrupted run did
    killed = _write_yaml(tmp_path / "killed.yaml", make("killed", 2))
    command = _launch(module, killed, tmp_path / "killed", tmp_path / "killed-audit")
    killed_at = kill_after_checkpoint(command, tmp_path / "killed", at_least=10, env=env, rank=1)
    assert killed_at < "step-000000020"
    command = _launch(module, killed, tmp_path / "killed", tmp_path / "resumed-audit")
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and killed_at in resumed.stdout
    assert max_difference(weights(tmp_path / "two"), weights(tmp_path / "killed")) == 0.0  # bit for bit
    assert_only_rank_zero_wrote(tmp_path / "killed", tmp_path / "killed-audit")
    assert_only_rank_zero_wrote(tmp_path / "killed", tmp_path / "resumed-audit")


# ----------------------------------------------------------------------------- NaN on one rank only


def _poisoned_rank(config, poisoned_from_check: int, outcomes: str) -> None:
    """One rank of `train_clip` whose rank 1 alone holds a NaN tensor in what a checkpoint saves,
    from its `poisoned_from_check`-th finiteness check on (1: the weights it starts from). Each rank
    writes the message it stopped with to ``<outcomes>/rank<r>.txt``, waits (up to 60 s) for the
    other's, then raises again: a rank that did not stop leaves no file, and the parent's launcher
    ends it when the other raises."""
    import time

    from clipcond.training.loop import TrainingRun

    fresh_forked_process()
    rank = torch.distributed.get_rank()
    if rank == 1:  # this forked process's own class: the other rank keeps the real one
        checks, saved_tensors, check = [0], TrainingRun._saved_tensors, TrainingRun._check_saved_state

        def counted_check(self, *args, **kwargs):
            checks[0] += 1
            return check(self, *args, **kwargs)

        def with_poison(self):
            yield from saved_tensors(self)
            if checks[0] >= poisoned_from_check:
                yield "poison.weight", torch.tensor([1.0, math.nan])

        TrainingRun._check_saved_state, TrainingRun._saved_tensors = counted_check, with_poison
    try:
        train_clip(config, show_progress=False)
    except Exception as stopped:
        (Path(outcomes) / f"rank{rank}.txt").write_text(f"{type(stopped).__name__}: {stopped}")
        other = Path(outcomes) / f"rank{1 - rank}.txt"
        deadline = time.monotonic() + 60
        while not other.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise


@pytest.mark.parametrize("poisoned", ["before the first step", "before the step-2 checkpoint"])
def test_a_nan_on_one_rank_only_stops_every_rank_before_anything_is_written(tmp_path: Path, poisoned: str) -> None:
    """The finiteness check sums each rank's largest absolute value across the processes: a rank
    whose own tensors are all finite stops too (naming "another process"), at the same step,
    instead of writing the checkpoint or waiting forever in the next step's collective."""
    from accelerate import debug_launcher

    config = clip_config(tmp_path / "run", 2)  # 3 steps, a checkpoint at step 2
    outcomes = tmp_path / "outcomes"
    outcomes.mkdir()
    from_check = 1 if poisoned == "before the first step" else 2
    with pytest.raises(Exception, match="TrainingDiverged"):  # torch's launcher re-raises a rank's error
        debug_launcher(_poisoned_rank, args=(config, from_check, str(outcomes)), num_processes=WORLD)

    messages = {path.name: path.read_text() for path in outcomes.iterdir()}
    assert sorted(messages) == ["rank0.txt", "rank1.txt"], messages
    if from_check == 1:
        expected = "TrainingDiverged: the weights hold NaN or inf before the first step ({}); check the model"
    else:
        expected = (
            "TrainingDiverged: the weights became NaN or inf in the updates of steps 1 to 2 ({}), with a finite "
            "loss; stopped without saving this state (no checkpoint was written yet)."
        )
    assert messages["rank0.txt"].startswith(expected.format("on another process")), messages["rank0.txt"]
    assert messages["rank1.txt"].startswith(expected.format("poison.weight")), messages["rank1.txt"]
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))
    assert not (tmp_path / "run" / "model").exists()
