"""Diffusion training throughput: ``clipcond train-diffusion`` against diffusers' own recipe.

The peer is diffusers' ``examples/text_to_image/train_text_to_image.py`` (not in the wheel;
read from the diffusers repository), its per-step work re-expressed here in `PeerRecipe`: the
models loaded from a Stable Diffusion folder as the script loads them (frozen VAE and text
encoder, UNet in train mode), `torch.optim.AdamW` over the UNet, diffusers' ``get_scheduler``,
``accelerator.prepare`` of UNet, optimizer, dataloader and LR schedule; then per step, as its
loop does: VAE encode and ``latent_dist.sample()`` times the scaling factor, ``randn_like``
noise, uniform timesteps, ``noise_scheduler.add_noise``, the text encoder's forward on the
batch's token ids (every step), the epsilon (or v) target, the UNet forward, MSE in float32,
the gathered loss read with ``.item()``, ``accelerator.backward``, gradient clipping, optimizer
and LR-schedule step, ``zero_grad``. Precision is the script's default (float32, no mixed
precision). Its dataloader tokenizes with ``padding="max_length"`` and transforms images with
Resize, CenterCrop, ToTensor and Normalize(0.5, 0.5), written with PIL and numpy here
(torchvision is not installed); the images are already of the training size, so resize and
crop do nothing. Deviations, all options the script has or that do not change the work:
``--lr_scheduler cosine`` with no warm-up (as ours runs), ``--adam_weight_decay 0`` (ours
uses none either), no shuffling (both read the same samples in the same order), no EMA,
no validation or checkpoint within the timed steps.

Ours is `clipcond.training.diffusion.loop.train_diffusion` in the same process, on the same
folder (``init_from``), data (a JSONL manifest) and settings: with the captions pre-encoded
by ``clipcond encode`` (``data.embeddings``); with the captions and the images' VAE latents
pre-encoded (``clipcond encode --latents``, ``data.latents``: the VAE's forward is read, the
latent is still drawn per step, as the script's ``latent_dist.sample()``); and with the live
frozen encoder and VAE.
Each run's step times are those of its own steps (ours: the loop's per-step throughput in
``metrics.jsonl``; the peer: the same window, from the end of one step to the end of the
next, data loading included); the first ``--warmup`` steps of every run are dropped. The
three sides run in rounds whose order rotates; the median over rounds is reported. Every
caption is distinct, so the live encoder's in-memory cache never answers.

    python benchmarks/bench_train_diffusion.py                 # writes runs/benchmarks/train_diffusion.md
    python benchmarks/bench_train_diffusion.py --output benchmarks/results/train_diffusion.md
    python benchmarks/bench_train_diffusion.py --size sd15 --image-size 256 --mixed-precision bf16 \
        --threads 16 --repeats 2       # on a lent GPU: both sides train on it (accelerate picks it)

With ``--mixed-precision bf16`` (or fp16) both sides train in accelerate's mixed precision, and
the script's frozen VAE and text encoder are cast to that dtype, as its ``weight_dtype`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import components
from result_paths import default_output, write_result

UPSTREAM = "huggingface/diffusers examples/text_to_image/train_text_to_image.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=default_output("train_diffusion_work"))
    parser.add_argument("--output", type=Path, default=default_output("train_diffusion.md"))
    parser.add_argument("--image-size", type=int, default=64, help="training images, pixels (latents are 1/8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=4, help="first steps of each run left out of the timing")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every side once")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    parser.add_argument(
        "--size",
        choices=["small", "sd15"],
        default="small",
        help="bench_pipeline's components: scaled down (default) or Stable Diffusion 1.5's full shapes",
    )
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="only time the parts of a step that differ between the sides (text encoder forward, the "
        "script's tokenizer, AdamW default vs fused) on --work-dir's components, and print them",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.image_size < 8 or args.image_size % 8:
        parser.error(f"--image-size must be a multiple of 8 (the VAE's downsampling), got {args.image_size}")
    if min(args.batch, args.repeats, args.threads) < 1 or not 0 <= args.warmup < args.steps - 1:
        parser.error("--batch, --repeats, --threads must be >= 1 and 0 <= --warmup < --steps - 1")


# ------------------------------------------------------------------ shared setup


def write_sd_folder(folder: Path, size: str = "small") -> None:
    """bench_pipeline's SD-1.5-shaped components (`size` "small": scaled down; "sd15": full),
    saved as a Stable Diffusion folder (the DDIM config as the training schedule, as SD's own
    folders hold it)."""
    from diffusers import StableDiffusionPipeline

    parts = components(size)
    StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(folder)


def write_manifest(folder: Path, count: int, image_size: int, seed: int) -> Path:
    """`count` shapes images of `image_size` px and distinct captions, as a JSONL manifest."""
    from clipcond.shapes import ShapesStream

    stream = ShapesStream(seed=seed, image_size=image_size, min_objects=1, max_objects=2, split="train")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        sample = stream.sample(index)
        name = f"images/{index:06d}.png"
        sample.image.save(folder / name)
        lines.append(json.dumps({"image": name, "caption": f"{sample.caption}, picture {index}"}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# ------------------------------------------------------------------ ours


def our_config(
    args: argparse.Namespace,
    sd: Path,
    manifest: Path,
    output: Path,
    embeddings: Path | None,
    latents: Path | None = None,
):
    from clipcond.training.diffusion.config import DiffusionDataConfig, TrainDiffusionConfig

    return TrainDiffusionConfig(
        text_encoder=str(sd),
        init_from=str(sd),
        train="unet",
        data=DiffusionDataConfig(
            source="manifest",
            manifest=str(manifest),
            embeddings=None if embeddings is None else str(embeddings),
            latents=None if latents is None else str(latents),
            shuffle=False,  # the manifest's order, as the peer's loop reads it (no --shuffle there)
        ),
        image_size=args.image_size,
        batch_size=args.batch,
        steps=args.steps,
        lr=args.lr,
        weight_decay=0.0,
        warmup_steps=0,
        max_grad_norm=1.0,
        caption_dropout=0.0,
        ema_decay=None,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.steps,
        log_every=1,
        output_dir=str(output),
        seed=args.seed,
    )


def run_ours(config) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step) of one `train_diffusion` run. Its run folder is deleted
    after (its checkpoint and model: about 14 GB a run at SD 1.5's full shapes)."""
    import shutil

    from clipcond.training.diffusion.loop import train_diffusion

    train_diffusion(config, show_progress=False)
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(config.output_dir)
    steps = [record for record in records if "loss" in record]
    return [config.batch_size / record["samples_per_second"] for record in steps], [record["loss"] for record in steps]


# ------------------------------------------------------------------ the peer


class PeerRecipe:
    """The per-step work of diffusers' train_text_to_image.py (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, sd: Path, manifest: Path) -> None:
        self.args, self.sd, self.manifest = args, sd, manifest

    def dataset(self, tokenizer):
        import numpy as np
        import torch
        from PIL import Image

        size, root = self.args.image_size, self.manifest.parent
        entries = [json.loads(line) for line in self.manifest.read_text().splitlines()]

        def transform(image: Image.Image) -> torch.Tensor:
            # Resize(size, bilinear) + CenterCrop(size) + ToTensor + Normalize([0.5], [0.5])
            width, height = image.size
            scale = size / min(width, height)
            if scale != 1:
                image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            return (pixels - 0.5) / 0.5

        class Examples(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(entries)

            def __getitem__(self, index: int) -> dict:
                entry = entries[index]
                with Image.open(root / entry["image"]) as image:
                    pixels = transform(image.convert("RGB"))
                ids = tokenizer(
                    [entry["caption"]],
                    max_length=tokenizer.model_max_length,
                    padding="max_length",
                    truncation=True,
                    return_tensors="pt",
                ).input_ids[0]
                return {"pixel_values": pixels, "input_ids": ids}

        return Examples()

    def run(self) -> tuple[list[float], list[float]]:
        """(seconds per step, loss per step) of one run."""
        import torch
        import torch.nn.functional as F
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        args, folder = self.args, str(self.sd)
        accelerator = Accelerator(mixed_precision=args.mixed_precision)
        set_seed(args.seed)
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        unet.train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)

        def collate(examples: list[dict]) -> dict:
            pixels = torch.stack([example["pixel_values"] for example in examples])
            pixels = pixels.to(memory_format=torch.contiguous_format).float()
            return {"pixel_values": pixels, "input_ids": torch.stack([example["input_ids"] for example in examples])}

        loader = torch.utils.data.DataLoader(
            self.dataset(tokenizer), shuffle=False, collate_fn=collate, batch_size=args.batch, num_workers=0
        )
        lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
        text_encoder.to(accelerator.device, dtype=weight_dtype)
        vae.to(accelerator.device, dtype=weight_dtype)

        times, losses = [], []
        step_started = time.perf_counter()
        while len(losses) < args.steps:
            for batch in loader:
                with accelerator.accumulate(unet):
                    latents = vae.encode(batch["pixel_values"].to(weight_dtype)).latent_dist.sample()
                    latents = latents * vae.config.scaling_factor
                    noise = torch.randn_like(latents)
                    timesteps = torch.randint(
                        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                    ).long()
                    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                    encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                    if noise_scheduler.config.prediction_type == "epsilon":
                        target = noise
                    else:
                        target = noise_scheduler.get_velocity(latents, noise, timesteps)
                    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                    avg_loss = accelerator.gather(loss.repeat(args.batch)).mean()
                    losses.append(avg_loss.item())
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                now = time.perf_counter()
                times.append(now - step_started)
                step_started = now
                if len(losses) == args.steps:
                    break
        return times, losses


# ------------------------------------------------------------------ the benchmark


def samples_per_second(times: list[float], batch: int, warmup: int) -> float:
    measured = times[warmup:]
    return batch * len(measured) / sum(measured)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    import shutil

    import torch

    torch.set_num_threads(args.threads)
    work = args.work_dir
    ours = (work / "sd" / "model_index.json").is_file() and (work / "data" / "manifest.jsonl").is_file()
    if args.phases:
        if not ours:
            parser.error(f"--phases reads the components of a finished run: none in --work-dir {work}")
        print("\n".join(phase_lines(work / "sd", work / "data" / "manifest.jsonl", args.batch, args.image_size)))
        return
    if work.exists() and any(work.iterdir()) and not ours:
        parser.error(f"--work-dir {work} holds files that are not this benchmark's; give an empty or new folder")
    if work.exists():
        shutil.rmtree(work)  # a previous run's work folder
    work.mkdir(parents=True)
    sd, data = work / "sd", work / "data"
    write_sd_folder(sd, args.size)
    manifest = write_manifest(data, args.batch * args.steps, args.image_size, args.seed)

    # pre-encode the captions once, with the command a user runs
    config_path = work / "encode.yaml"
    import dataclasses

    import yaml

    config_path.write_text(yaml.safe_dump(dataclasses.asdict(our_config(args, sd, manifest, work / "x", None))))
    encode = [sys.executable, "-m", "clipcond.training.encode_command", "--train-config", str(config_path)]
    encode += ["--out", str(work / "embeddings"), "--latents", str(work / "latents"), "--no-progress"]
    started = time.perf_counter()
    subprocess.run(encode, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    encode_seconds = time.perf_counter() - started

    sides = {
        "ours, captions pre-encoded": lambda r: run_ours(
            our_config(args, sd, manifest, work / f"ours-pre-{r}", work / "embeddings")
        ),
        "ours, captions and images pre-encoded": lambda r: run_ours(
            our_config(args, sd, manifest, work / f"ours-lat-{r}", work / "embeddings", work / "latents")
        ),
        "ours, live encoder": lambda r: run_ours(our_config(args, sd, manifest, work / f"ours-live-{r}", None)),
        "diffusers recipe": lambda r: PeerRecipe(args, sd, manifest).run(),
    }
    names = list(sides)
    rates: dict[str, list[float]] = {name: [] for name in names}
    curves: dict[str, list[float]] = {}
    for round_ in range(args.repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times, losses = sides[name](round_)
            rates[name].append(samples_per_second(times, args.batch, args.warmup))
            curves.setdefault(name, losses)
            print(f"round {round_} {name}: {rates[name][-1]:.2f} samples/s", flush=True)
    write_result(args.output, report(args, rates, curves, encode_seconds))
    print(f"wrote {args.output}")


def phase_lines(sd: Path, manifest: Path, batch: int, image_size: int, repeats: int = 15) -> list[str]:
    """Markdown rows: median milliseconds of the parts of a step that differ between the sides,
    each timed alone on the benchmark's components (`write_sd_folder`) and captions."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    def median_ms(work) -> float:
        work()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    captions = [json.loads(line)["caption"] for line in manifest.read_text().splitlines()[:batch]]
    tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").eval().requires_grad_(False)

    def tokenize_one_by_one() -> list:
        return [
            tokenizer([c], max_length=77, padding="max_length", truncation=True, return_tensors="pt") for c in captions
        ]

    ids = torch.cat([encoded.input_ids for encoded in tokenize_one_by_one()])
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet").train()
    for parameter in unet.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    default = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.0)
    fused = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").eval().requires_grad_(False)
    size = image_size
    pixels = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        encoder_ms = median_ms(lambda: text_encoder(ids)[0])
        vae_ms = median_ms(lambda: vae.encode(pixels).latent_dist.sample())
    return [
        f"| part of a step | ms (median of {repeats}) | who runs it |",
        "|---|---:|---|",
        f"| text encoder forward, batch {batch} x 77 tokens | {encoder_ms:.1f} | the script and ours live; not ours pre-encoded |",
        f"| the script's tokenizer, {batch} captions one by one | {median_ms(tokenize_one_by_one):.1f} | the script |",
        f"| VAE encode and sample, batch {batch} x {size} px | {vae_ms:.1f} | the script and ours but with images pre-encoded |",
        f"| AdamW step over the UNet, torch's default | {median_ms(default.step):.1f} | the script |",
        f"| AdamW step over the UNet, fused | {median_ms(fused.step):.1f} | ours |",
    ]


SIZES = {
    "small": "bench_pipeline's SD-1.5-shaped components scaled down (UNet 32/64/128/128, four-level VAE, "
    "4-layer CLIP text encoder 128 wide)",
    "sd15": "bench_pipeline's components at Stable Diffusion 1.5's full shapes (860M UNet, VAE, ViT-L/14 "
    "text encoder; random weights)",
}


def device_words() -> str:
    """Where the sides trained: the GPU accelerate picks, else the CPU."""
    import torch

    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"


def report(
    args: argparse.Namespace, rates: dict[str, list[float]], curves: dict[str, list[float]], encode_seconds: float
) -> str:
    import diffusers
    import torch

    median = {name: statistics.median(values) for name, values in rates.items()}
    peer = median["diffusers recipe"]
    command = "python benchmarks/bench_train_diffusion.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Diffusion training throughput: clipcond train-diffusion / diffusers' train_text_to_image.py",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {device_words()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__} with {args.threads} thread(s), "
        f"diffusers {diffusers.__version__}. Peer: `{UPSTREAM}`, its per-step work re-expressed in the "
        "benchmark (see its docstring).",
        "",
        f"Setup: {SIZES[args.size]}, {args.image_size} px images ({args.image_size // 8} px latents), "
        f"batch {args.batch}, {args.steps} steps per run of which the first {args.warmup} are not timed, "
        f"{'float32' if args.mixed_precision == 'no' else args.mixed_precision + ' mixed precision'}, AdamW lr {args.lr} with cosine decay, gradient clipping 1.0, {args.batch * args.steps} "
        f"distinct captions and images; medians of {args.repeats} rounds (order rotating). Pre-encoding the "
        f"{args.batch * args.steps} captions and images with `clipcond encode --latents` took {encode_seconds:.1f} s "
        "(process start included).",
        "",
        "| side | samples/s (median) | per round | ours / diffusers |",
        "|---|---:|---|---:|",
    ]
    for name in rates:
        rounds = ", ".join(f"{value:.2f}" for value in rates[name])
        lines.append(f"| {name} | {median[name]:.2f} | {rounds} | {median[name] / peer:.3f} |")
    lines += [
        "",
        "Loss per step of each side's first run (same data in the same order, same seed; the noise and",
        "timesteps are drawn differently, ours from a generator seeded per step, the script's from the",
        "global generator, so the curves agree within the noise of the draws, not step by step):",
        "",
        "| step | " + " | ".join(curves) + " |",
        "|---:|" + "---:|" * len(curves),
    ]
    for step in range(args.steps):
        lines.append(f"| {step + 1} | " + " | ".join(f"{curves[name][step]:.4f}" for name in curves) + " |")
    means = ", ".join(f"{name} {statistics.mean(curves[name]):.4f}" for name in curves)
    lines += ["", f"Mean loss over the run: {means}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
