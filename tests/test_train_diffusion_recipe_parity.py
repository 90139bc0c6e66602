"""`train_diffusion` takes the steps of diffusers' ``examples/text_to_image/train_text_to_image.py``.

Both sides start from one tiny Stable Diffusion folder (`tiny_pipelines.build_sd`, saved with
``save_pretrained``; ours reads it as ``init_from`` and ``text_encoder``) and read one JSONL
manifest of 8 px images with distinct captions in its order (ours with ``data.shuffle: false``,
the script's DataLoader unshuffled, as benchmarks/bench_train_diffusion.py runs both). They get
the same random numbers: at step ``k`` the script's three draws (``latent_dist.sample()``, the
noise, the timesteps) come from a generator seeded ``DRAW_SEED + k``, and our loop's
`SampleGenerators` is replaced by `StepDraws`, which makes the same three calls in the same order
on a generator seeded alike. The script draws the noise with ``torch.randn_like(latents)`` on
torch's global generator; here it is ``torch.randn(latents.shape, generator=...)``, the same
distribution: ``randn_like`` keeps the latents' memory layout (channels-last out of the tiny VAE
on the CPU), and torch fills a tensor of that layout in another order, so the same seed would
give other numbers, not another step. Any difference left is one in what the two compute.

The script's step is written below in our own words (`diffusers_recipe`), float32, on one CPU
process, where accelerate's ``prepare``, ``backward`` and ``clip_grad_norm_`` are the plain torch
calls used here. Its options are the benchmark's: ``--lr_scheduler cosine`` without warm-up
(with ``w`` warm-up steps the two differ: diffusers' factor at step ``s`` is ``s / w``, ours
``(s + 1) / w``), ``--adam_weight_decay 0`` (the script's default 1e-2 decays every parameter, ours leaves gains
and biases undecayed, so the two agree only at 0), ``--max_grad_norm 1``, no EMA, no noise
offset, no SNR weighting; ``--learning_rate`` 1e-3 rather than 1e-4, so that three steps move
the weights well past the float32 noise (by up to 2e-3).

Measured (torch 2.13 CPU, diffusers 0.42, one thread), ours against the script: the losses of
the 3 steps agree within 1.1e-7 relative (steps 2 and 3 to the bit) and the two updates differ
by 1.0e-5 of ours' norm (AdamW fused against torch's default kernel; pixels /127.5 - 1 against
(/255 - 0.5) / 0.5). The largest difference of a single weight is no measure of this: AdamW's
first steps move a weight by about ``lr * g / |g|`` whatever the size of its gradient ``g``, so a
weight whose gradient sums to nearly zero takes the float32 rounding of that sum up to ``lr``
in size. Over draw seeds 0-59 the largest single-weight difference ranged from 3e-7 to 9.9e-5
(a resnet conv weight at the worst; CI once saw 1.7e-5 at seed 1000, where this machine sees
1.4e-6), while the update difference stayed below 5.2e-4 of ours' norm and the losses within
2.9e-7. Every timestep one later on the script's side moves the losses by 2.3e-3 relative;
twice its learning rate makes the updates differ by 1.0 of ours' norm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipcond.training.diffusion import loop
from clipcond.training.diffusion.config import DiffusionDataConfig, TrainDiffusionConfig

IMAGE_SIZE = 8  # pixels; the tiny VAE keeps the size (4 latent channels), the UNet halves it once
BATCH = 2
STEPS = 3
LR = 1e-3
DRAW_SEED = 1000
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]


class StepDraws:
    """Stands in for the loop's `SampleGenerators(seed, indices)`: the batch of step ``k`` (its
    global sample indices ``k * BATCH ...``) draws from one generator seeded ``DRAW_SEED + k``, in
    the calls the script makes on the global generator: ``normal`` twice (latent sample, then
    noise; float32 of `shape`), then ``integers`` (timesteps, (batch,) int64). Each instance's
    indices are appended to `seen`."""

    seen: list[list[int]] = []

    def __init__(self, seed: int, indices: Sequence[int], stream: str = "noise") -> None:
        self.indices = list(indices)
        StepDraws.seen.append(self.indices)
        self.generator = torch.Generator().manual_seed(DRAW_SEED + self.indices[0] // BATCH)

    def __len__(self) -> int:
        return len(self.indices)

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator)

    def integers(self, high: int) -> torch.Tensor:
        return torch.randint(0, high, (len(self.indices),), generator=self.generator)


@pytest.fixture(scope="module")
def sd_and_manifest(sd_pipe, tmp_path_factory) -> tuple[Path, Path]:
    """(tiny SD folder, manifest of BATCH * STEPS random 8 px images with distinct captions)."""
    root = tmp_path_factory.mktemp("recipe_parity")
    sd_pipe.save_pretrained(root / "sd")  # tiny_pipelines.build_sd, saved and loaded once a session
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for index in range(BATCH * STEPS):
        pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        caption = f"a {COLOURS[index]} square above a circle, picture {index}"
        lines.append(json.dumps({"image": f"images/{index}.png", "caption": caption}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return root / "sd", manifest


def ours(sd: Path, manifest: Path, output: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """`train_diffusion` with `StepDraws` and the benchmark's settings (`our_config` there), the
    loop's names patched with `monkeypatch`: {"losses": per step, "captions": per step as the
    caption encoder read them, "indices": the global sample indices per step, "unet": final
    weights}."""
    captions: list[list[str]] = []
    real_encoding = loop._caption_encoding

    def recording(conditioner, embeddings):
        encode = real_encoding(conditioner, embeddings)

        def encode_and_record(batch_captions: list[str]) -> torch.Tensor:
            captions.append(list(batch_captions))
            return encode(batch_captions)

        return encode_and_record

    StepDraws.seen = []
    monkeypatch.setattr(loop, "SampleGenerators", StepDraws)
    monkeypatch.setattr(loop, "_caption_encoding", recording)
    config = TrainDiffusionConfig(
        text_encoder=str(sd),
        init_from=str(sd),
        train="unet",
        data=DiffusionDataConfig(source="manifest", manifest=str(manifest), shuffle=False),
        image_size=IMAGE_SIZE,
        batch_size=BATCH,
        steps=STEPS,
        lr=LR,
        weight_decay=0.0,
        warmup_steps=0,
        max_grad_norm=1.0,
        caption_dropout=0.0,
        ema_decay=None,
        mixed_precision="no",
        checkpoint_every=STEPS,
        log_every=1,
        output_dir=str(output),
        seed=0,
    )
    result = loop.train_diffusion(config, show_progress=False)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {
        "losses": [record["loss"] for record in records if "loss" in record],
        "captions": captions,
        "indices": StepDraws.seen,
        "unet": load_file(str(result.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")),
    }


def script_pixels(path: Path) -> torch.Tensor:
    """The script's image transform on an image already of the training size (Resize and
    CenterCrop leave it; no flip): ToTensor, Normalize([0.5], [0.5]); (3, H, W) float32."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


def script_frozen_parts(sd: Path) -> dict:
    """What the script loads from `sd` and never trains: "noise_scheduler" (DDPMScheduler of the
    folder's scheduler config), "tokenizer", "text_encoder" and "vae", the last two frozen."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "noise_scheduler": DDPMScheduler.from_pretrained(sd, subfolder="scheduler"),
        "tokenizer": CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer"),
        "text_encoder": CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").requires_grad_(False),
        "vae": AutoencoderKL.from_pretrained(sd, subfolder="vae").requires_grad_(False),
    }


def diffusers_recipe(sd: Path, manifest: Path, frozen: dict, lr: float = LR, timestep_shift: int = 0) -> dict:
    """train_text_to_image.py's training steps (see the module docstring) of `sd`'s UNet, with
    `frozen` (`script_frozen_parts` of `sd`); `lr` and `timestep_shift` (added to every timestep)
    exist to show that the comparison sees them. {"losses", "captions": per step, "unet": final
    weights}."""
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    noise_scheduler, tokenizer = frozen["noise_scheduler"], frozen["tokenizer"]
    text_encoder, vae = frozen["text_encoder"], frozen["vae"]
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=0, num_training_steps=STEPS)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]

    losses, captions = [], []
    for step in range(STEPS):
        batch = entries[step * BATCH : (step + 1) * BATCH]  # the unshuffled DataLoader's batch
        captions.append([entry["caption"] for entry in batch])
        pixel_values = torch.stack([script_pixels(manifest.parent / entry["image"]) for entry in batch])
        input_ids = tokenizer(
            captions[-1],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids
        draws = torch.Generator().manual_seed(DRAW_SEED + step)  # see the module docstring
        latents = vae.encode(pixel_values).latent_dist.sample(generator=draws)
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=draws)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=draws)
        timesteps = (timesteps.long() + timestep_shift) % noise_scheduler.config.num_train_timesteps
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
        assert noise_scheduler.config.prediction_type == "epsilon"
        target = noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    return {"losses": losses, "captions": captions, "unet": {k: v.detach() for k, v in unet.state_dict().items()}}


def differences(our_run: dict, script: dict, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far apart two runs ended: "loss", the largest relative difference of a step's loss;
    "weight", the largest absolute difference of a final UNet weight; "update", the norm of the
    difference of the two updates (final - `initial` weights, all tensors as one vector) over
    the norm of ours."""
    losses = np.asarray(our_run["losses"]), np.asarray(script["losses"])
    assert losses[0].shape == losses[1].shape == (STEPS,)
    assert our_run["unet"].keys() == script["unet"].keys() == initial.keys()
    ours_, theirs = our_run["unet"], script["unet"]
    apart = sum(((ours_[name] - theirs[name]) ** 2).sum().item() for name in initial)
    update = sum(((ours_[name] - initial[name]) ** 2).sum().item() for name in initial)
    return {
        "loss": float(np.max(np.abs(losses[0] - losses[1]) / np.abs(losses[1]))),
        "weight": max((ours_[name] - theirs[name]).abs().max().item() for name in initial),
        "update": (apart / update) ** 0.5,
    }


def initial_unet(sd: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def frozen(sd_and_manifest) -> dict:
    return script_frozen_parts(sd_and_manifest[0])


@pytest.fixture(scope="module")
def runs(sd_and_manifest, frozen, tmp_path_factory) -> tuple[dict, dict]:
    sd, manifest = sd_and_manifest
    with pytest.MonkeyPatch.context() as monkeypatch:
        our_run = ours(sd, manifest, tmp_path_factory.mktemp("ours") / "run", monkeypatch)
    return our_run, diffusers_recipe(sd, manifest, frozen)


def test_train_diffusion_takes_the_steps_of_diffusers_train_text_to_image(runs, sd_and_manifest) -> None:
    """Same data order, same draws: the same losses and the same update of the weights, float32
    (bounds: see the module docstring; the largest single-weight difference is reported only)."""
    our_run, script = runs
    sd, manifest = sd_and_manifest
    captions = [json.loads(line)["caption"] for line in manifest.read_text().splitlines()]
    in_order = [captions[step * BATCH : (step + 1) * BATCH] for step in range(STEPS)]
    assert our_run["captions"] == script["captions"] == in_order
    assert our_run["indices"] == [list(range(step * BATCH, (step + 1) * BATCH)) for step in range(STEPS)]
    apart = differences(our_run, script, initial_unet(sd))
    assert apart["loss"] < 1e-5 and apart["update"] < 1e-2, apart


def test_the_comparison_sees_a_learning_rate_or_a_timestep_off(runs, sd_and_manifest, frozen) -> None:
    """The tolerances above are far below what one changed setting does on the script's side:
    every timestep one later moves the losses, twice the learning rate the update, each by
    a hundred times the tolerance or more."""
    our_run, _ = runs
    sd, manifest = sd_and_manifest
    initial = initial_unet(sd)
    assert differences(our_run, diffusers_recipe(sd, manifest, frozen, timestep_shift=1), initial)["loss"] > 1e-3
    faster = differences(our_run, diffusers_recipe(sd, manifest, frozen, lr=2 * LR), initial)
    assert faster["update"] > 0.5, faster
