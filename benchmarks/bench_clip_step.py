"""Training throughput, peak memory and FLOP use of our contrastive step against a peer's.

Both sides train the same architecture on the same batches; the peer is one of:

- ``--peer transformers`` (default): `transformers.CLIPModel(return_loss=True)` +
  `torch.optim.AdamW` (defaults), the usual hand-written loop, from our very weights;
- ``--peer open_clip``: open_clip's own training loop, ``open_clip_train.train.train_one_epoch``
  of open_clip_torch 3.3 (in its wheel), called on the batches with the setup its ``main.py``
  makes (re-expressed here: main.py is a script): `open_clip.model.CLIP` built from the same
  sizes (same parameter count), AdamW with weight decay 0.2 on matrices only (not on gains,
  biases or the temperature), betas (0.9, 0.98), eps 1e-6, its ``cosine_lr`` schedule,
  `open_clip.loss.ClipLoss`, precision ``amp_bf16`` / ``amp`` (with its GradScaler) / ``fp32``.
  Its own random initialisation (the two libraries name weights differently); the work per
  step does not depend on the values. open_clip's tokenizer pads every caption to the context
  length (77) and its text tower takes nothing shorter, so the peer's captions are padded so
  (pad id 0), where ours pad to the batch's longest caption (``--seq``): give ``--seq 77`` for
  the same work on both sides. Needs ``pip install open_clip_torch`` (which needs torchvision).

- ours: `clipcond.training.clip.loop.ContrastiveStep` (the loop's own step: ContrastiveModel,
  `clip_loss`, AdamW without decay on gains/biases/temperature, fused kernel, warm-up+cosine).

Each measurement runs in a fresh process (so peak RSS belongs to one side only), sides
alternate, and the median of the repeats is reported as a ratio ours / peer. Memory is the
training memory: each side reads its baseline after its model is built, on its device, with
its optimizer made (the peer's process also holds the source `ClipTwoTower` its weights are
copied from, kept alive so that no freed memory is reused by training), resets the peak RSS to
it, and reports the peak above it: gradients, optimizer state, activations and temporaries,
not the weights.

After its timed steps each side runs one more step under `torch.utils.flop_counter`: the
floating-point operations of its forward and backward (matrix products, convolutions,
attention), per sample. Model FLOP utilisation (MFU) is that count times the samples/s over
the device's peak: ``--peak-tflops``, or on a GPU the dense bf16 figure of its data sheet when
its name is in `PEAK_BF16_TFLOPS` (float32 runs on a GPU need ``--peak-tflops``).

    python benchmarks/bench_clip_step.py                 # CPU, the default size; writes runs/benchmarks/clip_step.md
    python benchmarks/bench_clip_step.py --output benchmarks/results/clip_step.md   # update the recorded result
    python benchmarks/bench_clip_step.py --peer open_clip --device cuda --mixed-precision bf16 \
        --model configs/models/clip-vit-b-32.yaml --batch 256 --seq 77      # when a GPU is lent
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from result_paths import add_output_argument, write_result

# Dense bf16 tensor-core peak of each GPU's data sheet, TFLOP/s (SXM parts), by a name that
# torch.cuda.get_device_name contains. H100 and H200 share the chip's compute; the H200 was
# measured at 769-798 TFLOP/s on an 8192^3 bf16 product in this workplace.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}

DEFAULT_MODEL = {
    "embed_dim": 256,
    "text": {"width": 256, "layers": 4, "heads": 4, "context_length": 77},
    "vision": {"kind": "vit", "image_size": 64, "vit": {"patch_size": 8, "width": 256, "layers": 4, "heads": 4}},
}


def _batches(count: int, batch: int, image_size: int, seq: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        ids = torch.randint(1, 49000, (batch, seq), generator=generator)
        ids[:, 0] = 49406
        ids[:, -1] = 49407
        pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
        yield {"input_ids": ids.to(device), "pixel_values": pixels.to(device)}


def worker(args: argparse.Namespace) -> dict:
    """Train `args.steps` steps on one side and report samples/s, the training memory and the
    FLOPs of one step."""
    import torch
    import yaml

    from clipcond.models import ClipTwoTower, model_config_from_dict

    torch.manual_seed(0)
    model_data = yaml.safe_load(Path(args.model).read_text()) if args.model else DEFAULT_MODEL
    model_config = model_config_from_dict(model_data)
    clip = ClipTwoTower(model_config)
    image_size = model_config.vision.image_size
    batches = list(_batches(args.warmup + args.steps + 1, args.batch, image_size, args.seq, "cpu"))
    device = torch.device(args.device)

    # 1. each side's model on its device and its optimizer: all before the baseline
    if args.side == "ours":
        trained, train = per_batch(_our_side(args, clip), device)
    elif args.peer == "transformers":
        trained, train = per_batch(_transformers_side(args, clip, model_config, device), device)
    else:
        trained, train = _open_clip_side(args, model_config, device)

    def synchronise():
        if args.device == "cuda":
            torch.cuda.synchronize()

    # 2. the baseline: what the process holds with the model built, before any training
    synchronise()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    peak_reset = reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # 3. warm-up and timed steps
    train(batches[: args.warmup])
    synchronise()
    start = time.perf_counter()
    train(batches[args.warmup : -1])
    synchronise()
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    result = {
        "side": args.side,
        "samples_per_second": args.batch * args.steps / elapsed,
        "peak_rss_increase_mib": peak_kib / 1024,
        "weights_mib": sum(p.numel() * p.element_size() for p in trained.parameters()) / 2**20,
        "parameters": sum(p.numel() for p in trained.parameters()),
        "peak_reset": peak_reset,
    }
    if args.device == "cuda":
        result["peak_gpu_increase_mib"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
        result["device_name"] = torch.cuda.get_device_name(device)
    # 4. one more step, counted (after the timing: the counter slows the step it watches)
    result["flops_per_sample"] = step_flops(train, batches[-1:]) / args.batch
    return result


# A side's training: a list of (cpu) batches -> None, one optimizer step per batch.
Train = Callable[[list[dict]], None]


def per_batch(side: tuple[object, Callable[[dict], object]], device) -> tuple[object, Train]:
    """(model, one step on a batch on `device`) -> (model, training on a list of batches)."""
    trained, train_step = side

    def train(batches: list[dict]) -> None:
        for batch in batches:
            train_step({k: v.to(device) for k, v in batch.items()})

    return trained, train


def step_flops(train: Train, batches: list[dict]) -> int:
    """Floating-point operations of `train` on `batches` (forward and backward: matrix
    products, convolutions, attention), counted by `torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train(batches)
    return counter.get_total_flops()


def _our_side(args: argparse.Namespace, clip) -> tuple[object, Callable[[dict], object]]:
    """The loop's own `ContrastiveStep` on `clip`, prepared by accelerate."""
    from accelerate import Accelerator

    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.clip.loop import ContrastiveStep, make_optimizer
    from clipcond.training.clip.model_setup import ContrastiveModel

    run_config = TrainClipConfig(model="-", steps=args.warmup + args.steps + 1, warmup_steps=10, lr=1e-4)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    model = ContrastiveModel(clip).train()
    optimizer, scheduler = make_optimizer(model, run_config)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    step = ContrastiveStep(accelerator, prepared, optimizer, scheduler)

    def train_step(batch):
        loss = step.backward(batch)
        step.update()
        return loss

    return model, train_step


def _autocast_dtype(args: argparse.Namespace):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)


def _transformers_side(args, clip, model_config, device) -> tuple[object, Callable[[dict], object]]:
    """transformers' CLIPModel from `clip`'s weights, its own loss, torch's AdamW."""
    import torch

    from clipcond.models import build_clip_model

    peer = build_clip_model(model_config)
    peer.load_state_dict(clip.clip_state_dict())  # `clip` stays alive: see the module docstring
    peer.to(device).train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    dtype = _autocast_dtype(args)

    def train_step(batch):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = peer(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return peer, train_step


def open_clip_sizes(model_config) -> dict:
    """The keyword arguments of `open_clip.model.CLIP` for the ViT CLIP `model_config`."""
    text, vision = model_config.text, model_config.vision
    if vision.kind != "vit":
        raise SystemExit("--peer open_clip: the benchmark builds ViT towers only")
    vit = vision.vit
    return {
        "embed_dim": model_config.embed_dim,
        "quick_gelu": model_config.quick_gelu,
        "vision_cfg": {
            "image_size": vision.image_size,
            "patch_size": vit.patch_size,
            "width": vit.width,
            "layers": vit.layers,
            "head_width": vit.width // vit.heads,
            "mlp_ratio": (vit.intermediate_size or 4 * vit.width) / vit.width,
        },
        "text_cfg": {
            "context_length": text.context_length,
            "vocab_size": text.vocab_size,
            "width": text.width,
            "heads": text.heads,
            "layers": text.layers,
            "mlp_ratio": (text.intermediate_size or 4 * text.width) / text.width,
        },
    }


def _open_clip_side(args, model_config, device) -> tuple[object, Train]:
    """open_clip's `train_one_epoch` (open_clip_train/train.py) on the batches, set up as its
    main.py sets up a run (AdamW groups, cosine_lr, ClipLoss, the GradScaler for ``amp``)."""
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    model = CLIP(**open_clip_sizes(model_config), output_dict=True).to(device)

    def excluded(name: str, p: torch.nn.Parameter) -> bool:  # main.py: no decay on gains, biases, temperature
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for name, p in named if excluded(name, p)], "weight_decay": 0.0},
            {"params": [p for name, p in named if not excluded(name, p)], "weight_decay": 0.2},
        ],
        lr=1e-4,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    precision = {"bf16": "amp_bf16", "fp16": "amp", "no": "fp32"}[args.mixed_precision]
    settings = argparse.Namespace(  # what train_one_epoch reads of main.py's arguments
        device=str(device),
        precision=precision,
        distill=False,
        accum_freq=1,
        skip_scheduler=False,
        grad_clip_norm=None,
        log_every_n_steps=100,
        batch_size=args.batch,
        world_size=1,
        rank=0,
        local_rank=0,
        wandb=False,
        horovod=False,
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "amp" else None
    # main.py's schedule runs over every step of the run; the epochs here are the warm-up, the
    # timed steps and the counted one
    schedule = cosine_lr(optimizer, 1e-4, 10, args.warmup + args.steps + 1)
    loss = ClipLoss(cache_labels=True, rank=0, world_size=1)
    epochs = [0]

    def train(batches: list[dict]) -> None:
        pairs = [
            # open_clip's tokenizer pads every caption to the context length
            (
                b["pixel_values"],
                torch.nn.functional.pad(b["input_ids"], (0, model.context_length - b["input_ids"].shape[1])),
            )
            for b in batches
        ]
        data = {"train": _OpenClipData(pairs)}
        train_one_epoch(model, data, loss, epochs[0], optimizer, scaler, schedule, None, settings)
        epochs[0] += 1

    return model, train


class _OpenClipData:
    """What `train_one_epoch` reads of open_clip_train's `DataInfo`: `set_epoch`, and a
    `dataloader` of (images, texts) with `num_batches` and `num_samples`."""

    class _Loader(list):
        num_batches: int
        num_samples: int

    def __init__(self, pairs: list) -> None:
        self.dataloader = self._Loader(pairs)
        self.dataloader.num_batches = len(pairs)
        self.dataloader.num_samples = sum(len(images) for images, _ in pairs)

    def set_epoch(self, epoch: int) -> None:
        pass


def reset_peak_rss() -> bool:
    """Lower this process's peak RSS (ru_maxrss) to its current RSS (Linux: /proc/self/clear_refs),
    so a peak reached while building a model (a state-dict conversion, say) cannot hide training
    memory below it. Returns False where the kernel offers no reset; the peak then counts from start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (and of its per-side worker processes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help="a ViT CLIP model YAML (the peer, transformers CLIPModel, has no ResNet tower; "
        "default: a 256-wide, 4-layer ViT CLIP at 64 px)",
    )
    parser.add_argument("--batch", type=int, default=64, help="samples per step (default 64)")
    parser.add_argument("--seq", type=int, default=20, help="caption length in tokens (default 20)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per side (default 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument(
        "--peer",
        default="transformers",
        choices=["transformers", "open_clip"],
        help="transformers' CLIPModel (default) or open_clip's own training loop (needs open_clip_torch)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak TFLOP/s at this precision, for the MFU column (default: on a GPU, "
        "its dense bf16 data-sheet figure when known; none on the CPU)",
    )
    parser.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)
    add_output_argument(parser, "clip_step.md", "table")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject sizes the benchmark cannot run, before any process starts."""
    for name, least in (("batch", 1), ("seq", 2), ("steps", 1), ("repeats", 1)):  # a caption holds bos and eos
        if getattr(args, name) < least:
            parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.model and not Path(args.model).is_file():
        parser.error(f"--model {args.model}: no such file")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")


def worker_command(args: argparse.Namespace, side: str) -> list[str]:
    """The command line of one side's worker process, rebuilt from the parsed settings (only
    what the worker reads: never the parent's argv, whose flags may take separate values)."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        *(["--model", str(args.model)] if args.model else []),
        *("--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)),
        *("--warmup", str(args.warmup), "--device", args.device, "--mixed-precision", args.mixed_precision),
        *("--peer", args.peer, "--side", side),
    ]


PEER_TITLES = {
    "transformers": "transformers CLIPModel(return_loss=True) + AdamW",
    "open_clip": "open_clip's own training loop (open_clip_train.train.train_one_epoch)",
}


def peak_tflops(args: argparse.Namespace, device_name: str | None) -> float | None:
    """The peak that MFU is taken against: --peak-tflops, else a known GPU's dense bf16 figure
    when the run is in bf16 or fp16 (the same tensor-core rate), else none."""
    if args.peak_tflops is not None:
        return args.peak_tflops
    if device_name is None or args.mixed_precision == "no":
        return None
    return next((tflops for name, tflops in PEAK_BF16_TFLOPS.items() if name in device_name), None)


def report(args: argparse.Namespace, runs: dict[str, list[dict]], command: str) -> list[str]:
    """The markdown result of every worker's run: medians per side and the ratios."""
    keys = ("samples_per_second", "peak_rss_increase_mib", "weights_mib", "peak_gpu_increase_mib", "flops_per_sample")
    median = {
        side: {key: statistics.median(r[key] for r in results) for key in keys if key in results[0]}
        for side, results in runs.items()
    }
    on_gpu = args.device == "cuda"
    device_name = runs["ours"][0].get("device_name")
    peak = peak_tflops(args, device_name)
    for m in median.values():
        m["tflops"] = m["flops_per_sample"] * m["samples_per_second"] / 1e12
    gpu_cell = lambda m: f" {m['peak_gpu_increase_mib']:.1f} |" if on_gpu else ""  # noqa: E731
    mfu_cell = lambda m: f" {100 * m['tflops'] / peak:.1f}% |" if peak else ""  # noqa: E731
    speed_ratio = median["ours"]["samples_per_second"] / median["peer"]["samples_per_second"]
    memory_ratio = median["ours"]["peak_rss_increase_mib"] / median["peer"]["peak_rss_increase_mib"]
    parameters = {side: results[0]["parameters"] for side, results in runs.items()}
    return [
        f"# Contrastive training step: clipcond vs {PEER_TITLES[args.peer]}",
        "",
        f"device {device_name or args.device}, mixed precision {args.mixed_precision}, batch {args.batch}, "
        f"caption {args.seq} tokens"
        + (" (the peer's padded to the context length, as its tokenizer does)" if args.peer == "open_clip" else "")
        + f", {args.steps} timed steps after {args.warmup} warm-up, median of "
        f"{args.repeats} fresh processes per side",
        f"model: {args.model or 'default (ViT 256 wide, 4 layers, 64 px, patch 8; text 256 wide, 4 layers)'}; "
        f"parameters: ours {parameters['ours']:,}, peer {parameters['peer']:,}"
        + ("" if parameters["ours"] == parameters["peer"] else " (DIFFERENT architectures)"),
        f"command: `python benchmarks/bench_clip_step.py {command}`",
        "",
        "training memory: peak RSS above each side's baseline, read after its model was built and its optimizer "
        "made, with the peak reset to it"
        + ("" if all(r["peak_reset"] for results in runs.values() for r in results) else " (NOT reset on this system)")
        + " (weights excluded, listed apart); FLOPs: one step's forward and backward, counted by "
        "torch.utils.flop_counter" + (f"; MFU against {peak:g} TFLOP/s" if peak else ""),
        "",
        "| side | samples/s | peak RSS increase while training (MiB) | model weights (MiB) |"
        + (" peak GPU memory increase while training (MiB) |" if on_gpu else "")
        + " GFLOP per sample | TFLOP/s |"
        + (" MFU |" if peak else ""),
        "|---|---|---|---|" + ("---|" if on_gpu else "") + "---|---|" + ("---|" if peak else ""),
        *(
            f"| {side} | {m['samples_per_second']:.1f} | {m['peak_rss_increase_mib']:.1f} | {m['weights_mib']:.1f} |"
            + gpu_cell(m)
            + f" {m['flops_per_sample'] / 1e9:.4g} | {m['tflops']:.3g} |"
            + mfu_cell(m)
            for side, m in median.items()
        ),
        "",
        f"samples/s ratio ours/peer: **{speed_ratio:.3f}** (goal >= {1.1 if args.peer == 'open_clip' else 1.0}); "
        f"training memory ratio: **{memory_ratio:.3f}** (goal <= 1.0)",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.side:
        print(json.dumps(worker(args)))
        return

    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for repeat in range(args.repeats):
        for side in ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours"):
            out = subprocess.run(worker_command(args, side), capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {side} worker failed (exit {out.returncode}):\n{out.stderr}")
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    lines = report(args, runs, shlex.join(sys.argv[1:] if argv is None else argv))
    write_result(args.output, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
