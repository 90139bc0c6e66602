"""Cold start of the ``clipcond`` command: each timing is a fresh interpreter, as a user meets it.

Medians over rounds whose order rotates (`median_timing`) of:

- ``python -c pass``: the interpreter alone, the floor of every line below;
- ``clipcond --help`` and ``clipcond generate --help`` (goal: under 0.3 s);
- ``python -c "from clipcond import parse_prompt"``;
- ``clipcond generate PROMPT --steps 50`` on the bundled shapes model, against its floor: a bare
  script (`sample_floor`, run in its own interpreter) that loads the same bundled components
  with diffusers and transformers alone and samples the same 50 steps the same way (the CLIP
  tokens of the prompt and of "", classifier-free guidance, the coordinate channels, ancestral
  Euler with the same generator), then writes the PNG. Goal: generate <= 1.1 x the floor. The
  two images are compared, so the floor is known to do the same work.

    python benchmarks/bench_cold_start.py                       # writes runs/benchmarks/cold_start.md
    python benchmarks/bench_cold_start.py --repeats 7 --output benchmarks/results/cold_start.md
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from median_timing import median_seconds
from result_paths import default_output, write_result

PROMPT = "a red circle to the left of a blue square"
SEED = 0
GUIDANCE = 3.0  # generate's default
BENCHMARKS = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    """The options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each runs every command once (default 5)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps of generate and its floor (default 50)")
    parser.add_argument("--output", type=Path, default=default_output("cold_start.md"), help="markdown table to write")
    return parser


def sample_floor(model: str, steps: int, output: str) -> None:
    """The floor of ``clipcond generate PROMPT --steps STEPS``: the bundled model's components
    loaded with diffusers and transformers, sampled as CLIPConditionedPipeline samples them
    (recipe "sd": the CLIP text encoder's last hidden state, 77 tokens; the unconditional
    tokens of ""; coordinate channels on the UNet input; no VAE), written to `output` (PNG)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from diffusers.image_processor import VaeImageProcessor
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(model)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32).eval()
    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(folder / "scheduler")
    with torch.no_grad():
        ids = tokenizer(["", PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        context = text_encoder(ids.input_ids).last_hidden_state  # (2, 77, width): unconditional, prompt
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(SEED)
        size = unet.config.sample_size
        channels = unet.config.in_channels - 2  # the last two input channels are the coordinates
        latents = torch.randn((1, channels, size, size), generator=generator) * scheduler.init_noise_sigma
        xs = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel-centre coordinates in [-1, 1]
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"))[None].expand(2, -1, -1, -1)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise = unet(torch.cat([model_input, grid], dim=1), t, encoder_hidden_states=context).sample
            unconditional, conditional = noise.chunk(2)
            noise = unconditional + GUIDANCE * (conditional - unconditional)
            latents = scheduler.step(noise, t, latents, generator=generator).prev_sample
    VaeImageProcessor(vae_scale_factor=1).postprocess(latents, output_type="pil")[0].save(output)


def _run(command: list[str], cpu_seconds: list[float]) -> float:
    """Run `command` to the end; its wall-clock seconds, and its CPU seconds (user + system,
    its own children's included) appended to `cpu_seconds`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def _max_pixel_difference(a: Path, b: Path) -> int:
    import numpy as np
    from PIL import Image

    first, second = (np.asarray(Image.open(path), dtype=np.int16) for path in (a, b))
    return int(np.abs(first - second).max())


def main(argv: list[str] | None = None) -> Path:
    """Measure, write the table, print it. Returns the path written."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        raise SystemExit("--repeats and --steps must be >= 1")
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

    script = Path(sys.executable).with_name("clipcond")
    clipcond = [str(script)] if script.is_file() else [sys.executable, "-m", "clipcond.cli"]
    with tempfile.TemporaryDirectory(prefix="cold-start-") as folder:
        generated, floored = Path(folder) / "generate.png", Path(folder) / "floor.png"
        floor_code = (
            f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); from bench_cold_start import sample_floor; "
            f"sample_floor({str(BUNDLED_MODEL)!r}, {args.steps}, {str(floored)!r})"
        )
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "clipcond --help": [*clipcond, "--help"],
            "clipcond generate --help": [*clipcond, "generate", "--help"],
            'python -c "from clipcond import parse_prompt"': [
                sys.executable,
                "-c",
                "from clipcond import parse_prompt",
            ],
            f"clipcond generate --steps {args.steps}": [
                *clipcond,
                "generate",
                PROMPT,
                "--steps",
                str(args.steps),
                "-o",
                str(generated),
                "--force",
            ],  # fmt: skip
            f"floor: bare diffusers, {args.steps} steps": [sys.executable, "-c", floor_code],
        }
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        load_before = os.getloadavg()[0]
        sides = [(name, (command, cpu[name])) for name, command in commands.items()]
        medians = median_seconds(sides, lambda side: _run(*side), args.repeats)
        load_after = os.getloadavg()[0]
        difference = _max_pixel_difference(generated, floored)
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    names = list(commands)
    ratio = medians[names[4]] / medians[names[5]]
    cpu_ratio = cpu_medians[names[4]] / cpu_medians[names[5]]
    lines = [
        "# Cold start of the `clipcond` command",
        "",
        f"`python benchmarks/bench_cold_start.py --repeats {args.repeats} --steps {args.steps} --output {args.output}`",
        "",
        f"Each command in a fresh interpreter; medians of {args.repeats} rounds in rotating order. CPU is "
        "user + system time of the process (the figure least moved by other load on the machine). "
        f"{os.cpu_count()} CPU cores, load average {load_before:.1f} before and {load_after:.1f} after. "
        f'Prompt "{PROMPT}", seed {SEED}, guidance {GUIDANCE}, the bundled shapes model.',
        "",
        "| command | median wall s | median CPU s |",
        "|---|---:|---:|",
        *(f"| `{name}` | {seconds:.3f} | {cpu_medians[name]:.3f} |" for name, seconds in medians.items()),
        "",
        f"generate / floor: **{ratio:.3f}** wall clock, {cpu_ratio:.3f} CPU time (goal <= 1.1); the two images "
        f"differ by at most {difference} of 255 per pixel channel.",
        f"`--help` goal < 0.3 s: `clipcond --help` {medians[names[1]]:.3f} s, "
        f"`clipcond generate --help` {medians[names[2]]:.3f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    return write_result(args.output, text)


if __name__ == "__main__":
    main()
