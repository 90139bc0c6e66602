"""What a kill, a disk, a hand, a bad sample or a hostile prompt does to clipcond: fault cases
run end to end on tiny configs, tabulated as case, expected, observed, pass/fail.

    python benchmarks/reliability.py                     # writes runs/benchmarks/reliability.md
    python benchmarks/reliability.py --only checkpoint --only lock      # some groups only
    python benchmarks/reliability.py --output benchmarks/results/reliability.md   # update the recorded result

Groups (``--only``):
- kill: SIGKILL loops of a tiny ``train-clip`` (clip-tiny on webdataset shards, 24 steps, a
  checkpoint every 2) in its own process: killed ``--kills`` times, each at a random moment of
  its training (a random delay of up to two steps after a random checkpoint; seeded by
  ``--seed``), and resumed each time; then once killed in the middle of a checkpoint write. The
  final weights are compared with an uninterrupted run's, bit for bit.
- checkpoint: a run of 6 steps (checkpoints 2, 4, 6) whose newest checkpoint is damaged in one
  way per case, then resumed through the ``clipcond`` command (in this process).
- lock: two ``--resume`` runs on one folder at once; a lock left by a dead run.
- run-folder: files a killed checkpoint writer left, metrics logged past the last checkpoint, a
  finished run resumed, a moved run folder.
- data: a manifest and a shard holding one sample of each kind a user can get wrong.
- cache: `TextConditioner`'s disk cache: a garbage, truncated or wrong-shape entry, an
  unwritable cache_dir, two processes sharing one cache_dir.
- prompts: `parse_prompt` on 40 KB of nested brackets or of spaces before a BREAK, `split_and`
  on spaces before an AND, median time.
- encode: 10,000 prompts and a 1 MB prompt in bounded encoder batches; an encoder with NaN weights.
- model-folder: ``generate``, ``encode``, ``eval-clip``, ``train-diffusion`` and ``train-t5
  --resume`` on model folders with a file cut short or a tokenizer's vocabulary lost
  (`reliability_model_folders.py`).

Work files go to ``--work-dir`` (emptied first). A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from reliability_cases import Case, cell, cli, last_line
from reliability_model_folders import model_folder_cases
from result_paths import REPO, RUNS, add_output_argument, write_result

GROUPS = ("kill", "checkpoint", "lock", "run-folder", "data", "cache", "prompts", "encode", "model-folder")
TINY_MODEL = REPO / "configs" / "models" / "clip-tiny.yaml"
PROMPT_BUDGET_MS = 50.0
KILL_STEPS = 24  # the runs that are killed, and the one that holds the lock


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", action="append", choices=GROUPS, help="run only this group of cases (repeatable; default: all)"
    )
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs in the random-moment loop (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=RUNS / "reliability-work",
        help="folder for the runs, shards and caches (emptied first; default runs/benchmarks/reliability-work)",
    )
    add_output_argument(parser, "reliability.md", "report")
    return parser


# ---------------------------------------------------------------- running the command


def train_command(config: Path, *extra: str) -> list[str]:
    """The ``train-clip`` command line of a run config, for a process of its own."""
    return [sys.executable, "-m", "clipcond.cli", "train-clip", "--config", str(config), "--no-progress", *extra]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


# ---------------------------------------------------------------- tiny data


def png(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_shards(folder: Path) -> str:
    """Two shards of 8 good samples each; returns their pattern."""
    for shard in range(2):
        members = []
        for k in range(8):
            members += [(f"{shard}{k:03d}.png", png(shard * 100 + k)), (f"{shard}{k:03d}.txt", f"sample {k}".encode())]
        write_tar(folder / f"good-{shard:06d}.tar", members)
    return f"{folder}/good-{{000000..000001}}.tar"


def clip_config(output_dir: Path, urls: str | None, steps: int, folder: Path, name: str, **overrides) -> Path:
    """A tiny train-clip config written as YAML: its path."""
    import yaml

    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.data import DataConfig

    data = overrides.pop("data", None) or DataConfig(source="webdataset", urls=urls)
    settings = dict(
        model=str(TINY_MODEL),
        data=data,
        batch_size=4,
        steps=steps,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=2,
        keep_checkpoints=3,
        log_every=1,
        output_dir=str(output_dir),
    )
    config = TrainClipConfig(**{**settings, **overrides})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    return path


def weights_difference(expected_model: Path, got_model: Path) -> tuple[bool, float]:
    """(bit-equal, max abs difference) of two saved CLIP models."""
    from clipcond.models import load_clip

    expected, got = load_clip(expected_model).clip_state_dict(), load_clip(got_model).clip_state_dict()
    if expected.keys() != got.keys():
        return False, float("inf")
    equal = all(expected[key].equal(got[key]) for key in expected)
    return equal, max((expected[key].float() - got[key].float()).abs().max().item() for key in expected)


def metrics_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


# ---------------------------------------------------------------- kill


def newest_step(run: Path) -> int:
    """The step of the newest checkpoint folder of a run (0: none yet)."""
    steps = [int(p.name.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*")] if run.is_dir() else []
    return max(steps, default=0)


def kill_cases(work: Path, shards: str, kills: int, seed: int) -> list[Case]:
    cases = []
    reference_dir = work / "kill-reference"
    reference_config = clip_config(reference_dir, shards, KILL_STEPS, work, "kill-reference")
    process = subprocess.Popen(train_command(reference_config), env=child_env(), stdout=subprocess.DEVNULL)
    seen: dict[int, float] = {}  # checkpoint step -> when it appeared
    while process.poll() is None:
        seen.setdefault(newest_step(reference_dir), time.perf_counter())
        time.sleep(0.002)
    if process.returncode != 0 or len(seen) < 3:
        raise RuntimeError(f"the uninterrupted {KILL_STEPS}-step run failed (exit {process.returncode})")
    times = [seen[step] for step in sorted(seen) if step]
    step_seconds = statistics.median(b - a for a, b in zip(times, times[1:])) / 2

    # Each kill: after a checkpoint drawn among those the invocation has still to write (not the
    # last), plus a delay drawn in [0, 2 steps): inside a step, a logging, a checkpoint write.
    run = work / "kill-loop"
    config = clip_config(run, shards, KILL_STEPS, work, "kill-loop")
    rng = random.Random(seed)
    moments, status = [], None
    for invocation in range(kills + 1):
        resume = ["--resume"] if invocation else []
        process = subprocess.Popen(train_command(config, *resume), env=child_env(), stdout=subprocess.DEVNULL)
        if invocation == kills or newest_step(run) + 2 >= KILL_STEPS:
            status = process.wait()
            break
        newest = newest_step(run)
        room = max(2, (KILL_STEPS - 2 - newest) // (kills - len(moments)))  # leave steps for the kills to come
        after = rng.randrange(newest + 2, min(newest + room, KILL_STEPS - 2) + 1, 2)
        delay = rng.uniform(0.0, 2 * step_seconds)
        while process.poll() is None and newest_step(run) < after:
            time.sleep(0.002)
        time.sleep(delay)
        if process.poll() is not None:  # it ended before its kill
            status = process.returncode
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        moments.append(f"{delay:.2f} s after checkpoint {after} (newest then: {newest_step(run)})")
    equal, difference = (
        weights_difference(reference_dir / "model", run / "model") if status == 0 else (False, float("nan"))
    )
    observed = (
        f"killed {', '.join(moments) or 'never (the run ended first)'}; the last resume exited {status}; "
        f"weights {'bit-equal' if equal else f'differ (max {difference:.1e})'}"
    )
    cases.append(
        Case(
            "kill",
            f"{len(moments)} SIGKILLs at random moments of a {KILL_STEPS}-step train-clip (a step takes "
            f"{step_seconds:.2f} s here), each followed by --resume",
            "the run completes; final weights bit-equal to the uninterrupted run's",
            observed,
            status == 0 and equal and len(moments) == kills,
        )
    )

    run = work / "kill-in-write"
    config = clip_config(run, shards, KILL_STEPS, work, "kill-in-write")
    process = subprocess.Popen(train_command(config), env=child_env(), stdout=subprocess.DEVNULL)
    caught = None
    while process.poll() is None and caught is None:
        if (run / "checkpoints").is_dir():
            caught = next((p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")), None)
        if caught:
            process.send_signal(signal.SIGKILL)
        time.sleep(0.0005)
    process.wait()
    left = bool(caught) and (run / "checkpoints" / caught).exists()
    resumed = subprocess.run(train_command(config, "--resume"), env=child_env(), capture_output=True, text=True)
    gone = not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    equal, difference = (
        weights_difference(reference_dir / "model", run / "model") if resumed.returncode == 0 else (False, 0.0)
    )
    cases.append(
        Case(
            "kill",
            "SIGKILL while a checkpoint is being written, then --resume",
            "the half-written .tmp-step folder is removed at the start; final weights bit-equal",
            f"killed with {caught or 'no write in progress (not caught)'} on disk ({'left' if left else 'not left'}); "
            f"resume exited {resumed.returncode}; leftover {'removed' if gone else 'STILL THERE'}; "
            f"weights {'bit-equal' if equal else f'differ (max {difference:.1e})'}",
            None if caught is None else (resumed.returncode == 0 and gone and equal),
        )
    )
    return cases


# ---------------------------------------------------------------- checkpoint


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def reshape_one(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(*tensors[key].shape, 2)
    save_file(tensors, str(path))


class SixSteps(NamedTuple):
    """A finished 6-step run (the reference) and the way to make damaged copies of it."""

    work: Path
    shards: str
    reference: Path

    def interrupted_copy(self, name: str) -> tuple[Path, Path]:
        """A copy of the run as a kill after its last checkpoint leaves it (no model, not marked
        finished), elsewhere: (its folder, a config naming it)."""
        run = self.work / name
        shutil.copytree(self.reference, run)
        shutil.rmtree(run / "model")
        (run / "finished.json").unlink()
        return run, clip_config(run, self.shards, 6, self.work, name)


def six_step_run(work: Path, shards: str) -> SixSteps:
    reference = work / "six-reference"
    status, out, err = cli(
        "train-clip", "--config", str(clip_config(reference, shards, 6, work, "six")), "--no-progress"
    )
    if status != 0:
        raise RuntimeError(f"the reference run failed: {last_line(err)}")
    return SixSteps(work, shards, reference)


def checkpoint_cases(six: SixSteps) -> list[Case]:
    step_6 = Path("checkpoints") / "step-000000006"
    damages: dict[str, tuple[Callable[[Path], object], str]] = {
        "model.safetensors truncated": (lambda run: truncate(run / step_6 / "model.safetensors"), "step 4"),
        "optimizer.safetensors truncated": (lambda run: truncate(run / step_6 / "optimizer.safetensors"), "step 4"),
        "optimizer.safetensors missing": (lambda run: (run / step_6 / "optimizer.safetensors").unlink(), "step 4"),
        "rng.safetensors missing": (lambda run: (run / step_6 / "rng.safetensors").unlink(), "step 4"),
        "trainer.json garbage": (lambda run: (run / step_6 / "trainer.json").write_bytes(b"\x00\xffgarbage"), "step 4"),
        "trainer.json empty": (lambda run: (run / step_6 / "trainer.json").write_bytes(b""), "step 4"),
        "a tensor of another shape in model.safetensors": (
            lambda run: reshape_one(run / step_6 / "model.safetensors"),
            "step 4",
        ),
        "`latest` holds non-UTF-8 bytes (checkpoints intact)": (
            lambda run: (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00"),
            "step 6",
        ),
        "`latest` names a folder that does not exist": (
            lambda run: (run / "checkpoints" / "latest").write_text("step-000000099"),
            "step 6",
        ),
    }
    cases = []
    for index, (name, (damage, expected_step)) in enumerate(damages.items()):
        run, config = six.interrupted_copy(f"damaged-{index}")
        damage(run)
        status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
        resumed_at = next((line for line in out.splitlines() if line.startswith("resuming from")), "")
        equal = status == 0 and weights_difference(six.reference / "model", run / "model")[0]
        warned = "damaged" in err
        fell_back = expected_step == "step 4"
        observed = (
            f"exit {status}; {resumed_at.replace(str(run), '<run>') or 'no resume line'}; "
            + (f"warning: {'yes' if warned else 'NO'}; " if fell_back else "")
            + f"weights {'bit-equal' if equal else 'NOT equal'}"
            + ("" if status == 0 else f"; {last_line(err)}")
        )
        expected = f"resumes from {expected_step}" + (", warning names the problem" if fell_back else "")
        passed = status == 0 and f"({expected_step})" in resumed_at and equal and (warned or not fell_back)
        cases.append(Case("checkpoint", name, expected + "; final weights bit-equal", observed, passed))

    run, config = six.interrupted_copy("damaged-all")
    for folder in (run / "checkpoints").glob("step-*"):
        truncate(folder / "model.safetensors")
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    one_line = err.strip().count("\n") == 0 and err.startswith("error:")
    cases.append(
        Case(
            "checkpoint",
            "every checkpoint damaged",
            "exit 2, one line naming each checkpoint's problem; nothing deleted",
            f"exit {status}; {err.strip().count(chr(10)) + 1} line(s): {last_line(err)[:160]}...",
            status == 2 and one_line and len(list((run / "checkpoints").glob("step-*"))) == 3,
        )
    )
    return cases


# ---------------------------------------------------------------- lock


def lock_cases(work: Path, shards: str, six: SixSteps) -> list[Case]:
    cases = []
    run = work / "two-runs"
    config = clip_config(run, shards, KILL_STEPS, work, "two-runs")
    first = subprocess.Popen(train_command(config, "--resume"), env=child_env(), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not (run / "run.lock").is_file():
        time.sleep(0.05)
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    first_status = first.wait()
    steps = metrics_steps(run) if (run / "metrics.jsonl").is_file() else []
    cases.append(
        Case(
            "lock",
            "two --resume runs on one output_dir at once",
            "the second exits 2 with one line naming the first's pid; the first completes; each step logged once",
            f"second: exit {status}, {last_line(err)[:150]}; first: exit {first_status}; "
            f"{len(steps)} loss records for {len(set(steps))} steps",
            status == 2 and f"pid {first.pid}" in err and first_status == 0 and steps == list(range(1, KILL_STEPS + 1)),
        )
    )

    run, config = six.interrupted_copy("stale-lock")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (run / "run.lock").write_text(json.dumps(holder))
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    cases.append(
        Case(
            "lock",
            "a lock file left by a dead run (same host, pid gone)",
            "taken over with a note; the run resumes; the lock is gone at the end",
            f"exit {status}; note: {'yes' if 'took over the lock' in out else 'NO'}; "
            f"lock file {'left' if (run / 'run.lock').exists() else 'removed'}",
            status == 0 and "took over the lock" in out and not (run / "run.lock").exists(),
        )
    )
    return cases


# ---------------------------------------------------------------- run folder


def run_folder_cases(six: SixSteps) -> list[Case]:
    cases = []
    run, config = six.interrupted_copy("unfinished-write")
    shutil.copytree(run / "checkpoints" / "step-000000006", run / "checkpoints" / ".tmp-step-000000008-4242")
    (run / "checkpoints" / ".latest-4242").write_text("step-000000008")
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    left = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))
    cases.append(
        Case(
            "run-folder",
            "a .tmp-step folder and a .latest pointer of a killed writer",
            "removed at the start (and said); the run resumes",
            f"exit {status}; left: {left or 'nothing'}; said: {'yes' if 'removed' in out else 'NO'}",
            status == 0 and not left and "removed" in out,
        )
    )

    run, config = six.interrupted_copy("logged-past-checkpoint")
    shutil.rmtree(run / "checkpoints" / "step-000000006")  # steps 5, 6 logged, then killed before checkpoint 6
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    steps = metrics_steps(run)
    cases.append(
        Case(
            "run-folder",
            "metrics logged past the last checkpoint (killed between logging and checkpointing)",
            "metrics.jsonl holds each step once after the resume",
            f"exit {status}; loss records for steps {steps}",
            status == 0 and steps == [1, 2, 3, 4, 5, 6],
        )
    )

    finished = six.work / "finished-again"
    shutil.copytree(six.reference, finished)
    config = clip_config(finished, six.shards, 6, six.work, "finished-again")
    status, out, err = cli("train-clip", "--config", str(config), "--resume", "--no-progress")
    cases.append(
        Case(
            "run-folder",
            "--resume of a finished run",
            "exit 0: 'run already finished at step 6; nothing to do' (no 'loss nan')",
            f"exit {status}; {last_line(out).split(' (its result')[0]}",
            status == 0 and "already finished at step 6" in out and "nan" not in out,
        )
    )

    run, _ = six.interrupted_copy("to-be-moved")
    shutil.rmtree(run / "checkpoints" / "step-000000006")
    moved = six.work / "moved" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(run, moved)
    config = clip_config(run, six.shards, 6, six.work, "to-be-moved")  # the config still names the old place
    status, out, err = cli(
        "train-clip", "--config", str(config), "--output-dir", str(moved), "--resume", "--no-progress"
    )
    equal = status == 0 and weights_difference(six.reference / "model", moved / "model")[0]
    cases.append(
        Case(
            "run-folder",
            "a run folder moved elsewhere, resumed with --output-dir",
            "resumes from step 4; final weights bit-equal",
            f"exit {status}; {'resumed from step 4' if '(step 4)' in out else last_line(err)[:150]}; "
            f"weights {'bit-equal' if equal else 'NOT equal'}",
            status == 0 and "(step 4)" in out and equal,
        )
    )
    return cases


# ---------------------------------------------------------------- data


def data_cases(work: Path) -> list[Case]:
    from clipcond.training.data import DataConfig

    folder = work / "bad-data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "ok.png").write_bytes(png(1))
    (folder / "images" / "notes.png").write_text("a text file, not an image")
    (folder / "images" / "cut.png").write_bytes(png(2, (64, 64))[:200])
    lines = [
        {"image": "images/ok.png", "caption": "first"},
        {"image": 5, "caption": "image is a number"},
        {"image": "images/ok.png", "caption": 7},
        {"image": "images/ok.png", "caption": None},
        {"image": "images/missing.png", "caption": "a missing file"},
        {"image": "images/notes.png", "caption": "a non-image file"},
        {"image": "images/cut.png", "caption": "a truncated png"},
    ]
    manifest = folder / "manifest.jsonl"
    latin_1 = b'{"image": "images/ok.png", "caption": "caf\xe9"}\n'
    second = json.dumps({"image": "images/ok.png", "caption": "second"}).encode() + b"\n"
    manifest.write_bytes("".join(json.dumps(line) + "\n" for line in lines).encode() + latin_1 + second)
    # Read in file order (a manifest's epochs are shuffled by default since 2026-11-30). The 5
    # lines that hold an image path are the epoch's positions (first, missing, notes, cut,
    # second); the other 4 lines' skips are counted at the epoch's first position, and a skip
    # when a step reaches its position (docs/training.md). The 2 steps of 2 samples reach
    # positions 0-3: the 4 bad lines, then the missing, non-image and cut images once each
    # (their stand-ins' look-ahead into epoch 1 counts nothing of it).
    expected = "bad manifest line: 3, missing image: 1, no caption: 1, undecodable image: 2"
    data = DataConfig(source="manifest", manifest=str(manifest), shuffle=False)
    config = clip_config(folder / "run-manifest", None, 2, folder, "manifest", batch_size=2, data=data)
    status, out, err = cli("train-clip", "--config", str(config), "--no-progress")
    report = next((line for line in out.splitlines() if line.startswith("skipped samples")), last_line(err))
    cases = [
        Case(
            "data",
            'manifest lines: "image": 5, "caption": 7, "caption": null, a missing image, a non-image file, '
            "a truncated PNG, a line that is not UTF-8",
            f"training goes on; skipped by reason ({expected})",
            f"exit {status}; {report}",
            status == 0 and expected in report,
        )
    ]

    members = [("a.png", png(3)), ("a.txt", b"first"), ("b.png", png(4)), ("b.txt", b"caf\xe9 latin-1")]
    members += [("c.png", b"\x89PNG but not an image"), ("c.txt", b"does not decode"), ("d.png", png(5))]
    members += [("e.png", png(6)), ("e.txt", b"second")]
    shard = write_tar(folder / "bad-000000.tar", members)
    expected = "caption not UTF-8: 2, no caption: 2, undecodable image: 2"
    config = clip_config(folder / "run-shard", str(shard), 2, folder, "shard", batch_size=2)
    status, out, err = cli("train-clip", "--config", str(config), "--no-progress")
    report = next((line for line in out.splitlines() if line.startswith("skipped samples")), last_line(err))
    cases.append(
        Case(
            "data",
            "shard members: a caption that is not UTF-8, an image that does not decode, an image with no caption",
            f"training goes on; skipped by reason ({expected})",
            f"exit {status}; {report}",
            status == 0 and expected in report,
        )
    )
    cases.append(damaged_shard_case(folder))
    return cases


def damaged_shard_case(folder: Path) -> Case:
    """Two shards of four 64 x 64 samples (12 KiB images): one cut short inside a header, one
    whose third sample's header is damaged. tarfile ends either silently."""
    members = []
    for k in range(4):
        members += [(f"{k:03d}.png", png(20 + k, (64, 64))), (f"{k:03d}.txt", f"sample {k}".encode())]
    whole = write_tar(folder / "whole.tar", members)
    with tarfile.open(whole) as tar:
        headers = [member.offset for member in tar.getmembers()]
    data = whole.read_bytes()
    (folder / "hurt-000000.tar").write_bytes(data[: headers[4] + 100])  # cut inside sample 2's header
    damaged = bytearray(data)
    damaged[headers[4] + 148 : headers[4] + 156] = b"garbage!"  # sample 2's header checksum
    (folder / "hurt-000001.tar").write_bytes(bytes(damaged))
    expected = "damaged tar shard, truncated tar shard"  # each counted once per pass over its shard
    config = clip_config(folder / "run-hurt", f"{folder}/hurt-{{000000..000001}}.tar", 2, folder, "hurt", batch_size=4)
    status, out, err = cli("train-clip", "--config", str(config), "--no-progress")
    report = next((line for line in out.splitlines() if line.startswith("skipped samples")), last_line(err))
    warned = "cut short" in err and "damaged" in err
    return Case(
        "data",
        "a shard cut short inside a header; a shard with a damaged header in the middle",
        f"training goes on on the samples before each; both reasons counted ({expected}), a warning naming each",
        f"exit {status}; {report}; warnings: {'yes' if warned else 'no'}",
        status == 0 and all(f"{reason}:" in report for reason in expected.split(", ")) and warned,
    )


# ---------------------------------------------------------------- cache


def tiny_conditioner(cache_dir: Path | None):
    """A `sd` TextConditioner over a tiny random CLIP text tower (seeded: the same in every process)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond import TextConditioner, clip_tokenizer

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    directory = None if cache_dir is None else str(cache_dir)
    return TextConditioner("sd", clip=[(model, clip_tokenizer())], cache_dir=directory)


def cache_worker(cache_dir: str, seed: int) -> None:
    """One of the processes sharing a cache_dir: encodes 60 prompts (shared with the other
    process, in its own order) and checks each against an uncached encode; exits 1 on a mismatch."""
    import torch

    prompts = [f"a {colour} cube number {index}" for colour in ("red", "blue", "green") for index in range(20)]
    random.Random(seed).shuffle(prompts)
    cached, plain = tiny_conditioner(Path(cache_dir)), tiny_conditioner(None)
    for prompt in prompts:
        cached.cache.clear_memory()  # read what the disk holds, the other process's writes included
        if not torch.equal(cached.encode(prompt).tokens, plain.encode(prompt).tokens):
            print(f"mismatch for {prompt!r}", file=sys.stderr)
            sys.exit(1)


def cache_cases(work: Path) -> list[Case]:
    import torch
    from safetensors.torch import load_file, save_file

    prompt = "a red cube"
    expected_tokens = tiny_conditioner(None).encode(prompt).tokens

    def entry_case(name: str, harm: Callable[[Path], None]) -> Case:
        folder = work / "cache" / name.split()[0]
        tiny_conditioner(folder).encode(prompt)
        (entry,) = folder.glob("*.safetensors")
        harm(entry)
        try:
            tokens = tiny_conditioner(folder).encode(prompt).tokens
            observed = "encoded; " + (
                "equal to an uncached encode" if torch.equal(tokens, expected_tokens) else "DIFFERENT"
            )
            passed = torch.equal(tokens, expected_tokens)
        except Exception as error:  # noqa: BLE001 - the observation
            observed, passed = f"raised {type(error).__name__}: {str(error)[:120]}", False
        return Case("cache", name, "the entry is ignored (or replaced) and the prompt encoded again", observed, passed)

    def wrong_shape(entry: Path) -> None:
        tensors = load_file(str(entry))
        save_file({key: torch.cat([value, value], dim=-1) for key, value in tensors.items()}, str(entry))

    cases = [
        entry_case("garbage entry in cache_dir", lambda entry: entry.write_bytes(b"garbage" * 10)),
        entry_case("truncated entry in cache_dir", truncate),
        entry_case("wrong-shape entry in cache_dir", wrong_shape),
    ]

    folder = work / "cache" / "unwritable"
    folder.mkdir(parents=True)
    how = make_unwritable(folder)
    if how is None:
        cases.append(Case("cache", "unwritable cache_dir", "-", "could not make a folder unwritable here", None))
    else:
        try:
            tokens = tiny_conditioner(folder).encode(prompt).tokens
            observed = f"encoded ({how}); " + ("equal" if torch.equal(tokens, expected_tokens) else "DIFFERENT")
            passed = torch.equal(tokens, expected_tokens)
        except ValueError as error:
            observed, passed = f"ValueError ({how}): {str(error)[:120]}", "cache_dir" in str(error)
        except Exception as error:  # noqa: BLE001 - the observation
            observed, passed = f"raised {type(error).__name__} ({how}): {str(error)[:120]}", False
        finally:
            make_writable(folder)
        cases.append(
            Case(
                "cache",
                "unwritable cache_dir",
                "encodes without the disk cache (a warning), or a ValueError naming cache_dir before any work",
                observed,
                passed,
            )
        )

    shared = work / "cache" / "shared"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import reliability; "
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code + f"reliability.cache_worker({str(shared)!r}, {seed})"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(worker.wait(), worker.stderr.read()) for worker in workers]
    entries = len(list(shared.glob("*.safetensors"))) if shared.is_dir() else 0
    cases.append(
        Case(
            "cache",
            "two processes sharing one cache_dir (60 prompts each, in different orders)",
            "both exit 0; every encode equals an uncached one",
            "; ".join(f"exit {status}" + (f" ({last_line(err)[:100]})" if status else "") for status, err in results)
            + f"; {entries} entries on disk",
            all(status == 0 for status, _ in results),
        )
    )
    return cases


def make_unwritable(folder: Path) -> str | None:
    """Make `folder` refuse new files, as well as this user can: its mode, or (as root, whom
    modes do not stop) the immutable attribute. Returns how, or None when neither worked."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return "mode 0555"
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            return "chattr +i"
        (folder / "probe").unlink()
    return None


def make_writable(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    if folder.exists():
        folder.chmod(0o755)


# ---------------------------------------------------------------- prompts


def prompt_cases() -> list[Case]:
    from clipcond.prompts import parse_prompt
    from clipcond.schedule import split_and

    spaces = " " * 40000  # A1111's BREAK and AND patterns rescan such a run from each position
    inputs = [
        (parse_prompt, "(a" * 20000, 'parse_prompt("(a" * 20000)', "fragments"),
        (parse_prompt, "[a" * 20000, 'parse_prompt("[a" * 20000)', "fragments"),
        (parse_prompt, "(" * 40000, 'parse_prompt("(" * 40000)', "fragments"),
        (parse_prompt, f"a{spaces}b BREAK c", 'parse_prompt("a" + " " * 40000 + "b BREAK c")', "fragments"),
        (split_and, f"a{spaces}b AND c :1.2", 'split_and("a" + " " * 40000 + "b AND c :1.2")', "parts"),
    ]
    cases = []
    for function, text, name, noun in inputs:
        # CPU time of this process is the criterion: on a shared machine the wall clock also
        # counts the other processes' turns.
        cpu, wall = [], []
        for _ in range(7):
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            result = function(text)
            cpu.append((time.process_time() - started_cpu) * 1e3)
            wall.append((time.perf_counter() - started_wall) * 1e3)
        median = statistics.median(cpu)
        cases.append(
            Case(
                "prompts",
                f"{name}, {len(text) // 1000} KB",
                f"median CPU time < {PROMPT_BUDGET_MS:.0f} ms",
                f"median {median:.1f} ms CPU of 7 (max {max(cpu):.1f}), wall clock {statistics.median(wall):.1f} ms; "
                f"{len(result)} {noun}",
                median < PROMPT_BUDGET_MS,
            )
        )
    return cases


def encode_cases() -> list[Case]:
    """Huge inputs in bounded encoder batches, and an encoder with NaN weights."""
    import torch

    from clipcond.window_encoding import NonFiniteEncoding

    conditioner = tiny_conditioner(None)
    conditioner.cache = None  # every prompt through the encoder
    rows: list[int] = []

    def record(module, args, kwargs):
        rows.append((args[0] if args else kwargs["input_ids"]).shape[0])

    conditioner.clip[0].model.register_forward_pre_hook(record, with_kwargs=True)
    limit = conditioner.max_batch_windows
    cases = []
    prompts = [f"a red circle number {index} to the left of a blue square" for index in range(10_000)]
    started = time.perf_counter()
    embeds = conditioner.encode(prompts)
    seconds = time.perf_counter() - started
    alone = conditioner.encode(prompts[-3:]).tokens  # a batch of 3: one encoder call
    difference = float((embeds.tokens[-3:] - alone).abs().max())
    cases.append(
        Case(
            "encode",
            "10,000 prompts in one encode",
            f"at most max_batch_windows={limit} windows per encoder call; the last 3 equal to encoding them alone "
            "(within 1e-6)",
            f"{len(rows)} calls, largest {max(rows)} windows, {seconds:.1f} s; max difference {difference:.1e}",
            max(rows) <= limit and difference <= 1e-6,
        )
    )
    rows.clear()
    words = "a red circle to the left of a blue square and a green triangle above them "
    huge = words * (1_000_000 // len(words))
    started = time.perf_counter()
    tokens = conditioner.encode(huge).tokens
    seconds = time.perf_counter() - started
    cases.append(
        Case(
            "encode",
            f"one prompt of {len(huge) / 1e6:.1f} MB",
            f"at most {limit} windows per encoder call",
            f"{tokens.shape[1] // 77} windows in {len(rows)} calls, largest {max(rows)}; {seconds:.1f} s",
            max(rows) <= limit,
        )
    )
    with torch.no_grad():
        model = conditioner.clip[0].model
        next(p for name, p in model.named_parameters() if name.endswith("layers.0.mlp.fc1.weight"))[0, 0] = float("nan")
    try:
        conditioner.encode("a red circle")
        observed, passed = "encoded without an error", False
    except NonFiniteEncoding as error:
        observed = f"NonFiniteEncoding: {error}"
        passed = "CLIPTextModel" in str(error) and "float32" in str(error) and "weights hold NaN" in str(error)
    cases.append(
        Case(
            "encode",
            "NaN in the text encoder's weights",
            "encode raises an error naming the encoder, its dtype and the non-finite weights",
            observed,
            passed,
        )
    )
    return cases


# ---------------------------------------------------------------- the report


def report(cases: list[Case], command: str, seconds: float, started: datetime.datetime, work: Path) -> str:
    import torch

    passed = sum(case.passed is True for case in cases)
    failed = sum(case.passed is False for case in cases)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        "# Reliability: fault cases end to end",
        "",
        f"Command: `{command}`. Run {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min. Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (load average {load} at the end), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        f"**{passed} pass, {failed} fail, {len(cases) - passed - failed} not measured** of {len(cases)} cases. "
        "`<work>` is the --work-dir.",
        "",
        "| group | case | expected | observed | result |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        result = {True: "pass", False: "**FAIL**", None: "not measured"}[case.passed]
        observed = cell(case.observed.replace(str(work), "<work>"))
        lines.append(f"| {case.group} | {cell(case.name)} | {cell(case.expected)} | {observed} | {result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error(f"--kills must be >= 1, got {args.kills}")
    groups = args.only or list(GROUPS)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    work = args.work_dir.resolve()
    if work.exists():
        for folder in work.rglob("*"):  # a previous run interrupted inside the unwritable-cache case
            if folder.is_dir():
                make_writable(folder)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shards = good_shards(work / "shards")
    needs_six = {"checkpoint", "lock", "run-folder"} & set(groups)
    six = six_step_run(work, shards) if needs_six else None
    cases: list[Case] = []
    for group in GROUPS:
        if group not in groups:
            continue
        print(f"[reliability] {group} ...", flush=True)
        if group == "kill":
            cases += kill_cases(work, shards, args.kills, args.seed)
        elif group == "checkpoint":
            cases += checkpoint_cases(six)
        elif group == "lock":
            cases += lock_cases(work, shards, six)
        elif group == "run-folder":
            cases += run_folder_cases(six)
        elif group == "data":
            cases += data_cases(work)
        elif group == "cache":
            cases += cache_cases(work)
        elif group == "prompts":
            cases += prompt_cases()
        elif group == "encode":
            cases += encode_cases()
        else:
            cases += model_folder_cases(work)
        for case in cases[-1:]:
            print(f"  last: {case.name}: {case.passed}", flush=True)
    command = "python benchmarks/reliability.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report(cases, command.strip(), time.perf_counter() - started, started_at, work)
    print(text)
    print(f"wrote {write_result(args.output, text)}")


if __name__ == "__main__":
    main()
