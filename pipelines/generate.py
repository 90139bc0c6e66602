"""``clipcond generate``: prompt -> PNG with a saved pipeline.

`--model` takes a folder (or hub id) holding a saved `CLIPConditionedPipeline`, or any diffusers
Stable Diffusion pipeline, which is then driven through clipcond's conditioner
(`CLIPConditionedPipeline.from_pipe`). With `--n` above 1 the images are written as one grid.

A pipeline folder may hold `vocabulary.txt`, the words its training captions used (one per
line; the bundled shapes model has one): a prompt with other words, or an empty prompt, is
then named in a warning before sampling, since such a model draws shapes whatever it is asked.

Every argument is checked before the model loads (`check_output`, `model_source`), and what
depends on the model (size, `--steps` against the scheduler, `--clip-skip`, a `--lora` that adds
no adapter, `--n` images that no memory holds) before sampling. Latents that turn NaN or
infinite stop the run at that step (`RunFailed`, exit 1) and nothing is written; an existing PNG
is replaced only with ``--force``, and only by a complete file (`write_atomically`); without it,
a file that another run wrote at ``-o`` while the images were drawn is kept (exit 1).

The checks that need the loaded model live in `generate_checks`, the source images' in
`generate_sources`, the prompt's in `generate_prompts`; where `--model` and `--lora` point and
how a pipeline folder loads, in `saved_pipelines`; the names of `--lora` and `--embedding`, in
`named_sources`; `--sampler`, in `samplers`; `--hires-scale` (A1111's hires fix), in `hires_fix`;
the PNG and its parameters, in `png_output`; the vocabulary warning, in `vocabulary`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcond.emphasis_modes import EMPHASIS_MODES
from clipcond.errors import RunFailed, UsageError, user_errors
from clipcond.output_paths import check_new_file
from clipcond.pipelines import generate_checks, hires_fix
from clipcond.pipelines.generate_prompts import check_prompt_against, check_prompt_text, saved_syntax
from clipcond.pipelines.generate_sources import (
    SourceImages,
    add_source_arguments,
    check_sources_against,
    read_sources,
    source_call_arguments,
    source_pipeline,
)
from clipcond.pipelines.named_sources import NamedSource, check_names, embedding_argument, lora_argument
from clipcond.pipelines.png_output import generate_parameters, infotext, write_png
from clipcond.pipelines.png_parameters import GivenOption, add_parameters_from_argument, take_png_parameters
from clipcond.pipelines.samplers import (
    add_sampler_arguments,
    sampler_settings,
    saved_scheduler_class,
    scheduler_for_sampler,
)
from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, load_pipeline, model_source
from clipcond.pipelines.vocabulary import added_tokens, read_vocabulary, warn_about_vocabulary
from clipcond.prompt_syntaxes import SYNTAXES
from clipcond.window_splits import WINDOW_SPLITS

if TYPE_CHECKING:
    import torch

# The CPU allocator's messages, in torch's RuntimeError, for memory it cannot get, or a size
# its arithmetic cannot hold.
_OUT_OF_MEMORY_SIGNS = ("can't allocate memory", "bad_alloc", "Storage size calculation overflowed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `generate`."""
    parser.add_argument(
        "prompt", nargs="?", help='the prompt, e.g. "a red circle to the left of a blue square" (or --parameters-from)'
    )
    parser.add_argument("-o", "--output", default="out.png", help="PNG to write (a grid when --n > 1); must not exist")
    parser.add_argument("--force", action="store_true", help="replace the -o file if it exists")
    parser.add_argument(
        "--model",
        help="saved CLIPConditionedPipeline or diffusers SD pipeline: a folder, or a hub id `org/name` "
        "(a path starting with . / ~ or holding two slashes is always a folder); default: the bundled shapes model",
    )
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--seed", type=int, action=GivenOption, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int, action=GivenOption, default=50, help="denoising steps (default: %(default)s)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        action=GivenOption,
        default=3.0,
        help="classifier-free guidance scale (default: %(default)s; diffusers' StableDiffusionPipeline: 7.5)",
    )
    parser.add_argument(
        "--n",
        type=int,
        action=GivenOption,
        default=1,
        help="images to generate, written as a grid (default: %(default)s)",
    )
    add_parameters_from_argument(parser)
    parser.add_argument(
        "--no-parameters",
        action="store_true",
        help="write no generation parameters into the PNG (by default the prompt, negative, steps, sampler, guidance, "
        "seed, size and model are written as A1111 writes them, in its 'parameters' text chunk)",
    )
    add_sampler_arguments(parser)
    for side in ("height", "width"):  # not with --image: the output takes its size
        parser.add_argument(
            f"--{side}",
            type=int,
            help=f"image {side} in pixels (default: the UNet's sample size times the VAE's scale)",
        )
    parser.add_argument(
        "--lora",
        action="append",
        metavar="[NAME=]SOURCE",
        help="LoRA weights to load (a folder or file saved by diffusers' save_lora_weights, or a hub id), as the "
        "adapter NAME (default: the file's name without its suffix, the folder's name or the hub id's last part); "
        "may be given more than once. Without <lora:NAME:0.8> tags in the prompt every --lora runs at 1; with "
        "tags, the tagged ones alone, at their multipliers",
    )
    parser.add_argument(
        "--lora-scale", type=float, help="scale of the --lora weights in the UNet and text encoder (default 1)"
    )
    parser.add_argument(
        "--embedding",
        action="append",
        metavar="[TOKEN=]SOURCE",
        help="textual-inversion embedding to load (diffusers' format, A1111's .pt or .safetensors, or an SDXL "
        "clip_l/clip_g pair; a file, folder or hub id) as the word TOKEN of prompts (default: a file's name without "
        "its suffix, as A1111 and ComfyUI name embeddings; for a folder or hub id, the token its file holds); may be "
        "given more than once",
    )
    parser.add_argument("--clip-skip", type=int, help="skip this many final CLIP layers (as in diffusers)")
    parser.add_argument(
        "--emphasis",
        choices=EMPHASIS_MODES,
        help="how (word:1.3) weights change the text encoder's states (clipcond.emphasis); "
        "default: the model's own setting (multiply unless it was saved with another)",
    )
    parser.add_argument(
        "--syntax",
        choices=SYNTAXES,
        help="how prompts write weights: A1111's (word:1.3), [word], BREAK, [a:b:0.5], AND (a1111), compel's "
        "word+, word-, (words)1.3 (compel; clipcond.compel_syntax), or ComfyUI's (words:1.3), embedding:name "
        "(comfy; clipcond.comfy_syntax); default: the model's own setting (a1111 unless it was saved with another)",
    )
    parser.add_argument(
        "--window-split",
        choices=WINDOW_SPLITS,
        help="where a prompt longer than 75 tokens is cut into CLIP windows: at a word end (word), after the "
        "last comma, as A1111 (a1111), before a whole word, as ComfyUI (comfy), or not at all: the first 75 "
        "tokens are kept, as diffusers (truncate); "
        "default: the model's own setting (word unless saved with another)",
    )
    add_source_arguments(parser)
    hires_fix.add_hires_arguments(parser)


def check_output(output: str | Path, force: bool) -> Path:
    """Check that the PNG `output` can be written, before any work: it ends in ``.png``, is not
    a folder, does not exist unless `force`, and its folder takes a new file
    (`check_output_location`). Returns it as a `Path`.

    Raises:
        UsageError: saying which of these fails and what to do.
    """
    output = Path(output).expanduser()
    if output.suffix.lower() != ".png":
        raise UsageError(f"-o/--output must end in .png, got {output}")
    return check_new_file(output, "-o/--output", force, kind=".png file")


def _check_arguments(args: argparse.Namespace) -> tuple[Path, str | Path, list[NamedSource], list[NamedSource]]:
    """The checks that need no model: numbers, `-o`, `--model`, each `--lora` and `--embedding`
    and its name (`named_sources`), the prompt and `--negative` read in the syntax they will
    be read in, and `--schedule-type` against the scheduler `--sampler` names (or the model's
    own), each where it is known before loading (`generate_prompts.check_prompt_text`,
    `samplers.sampler_settings`).
    Returns (the output PNG, the model, the LoRAs, the embeddings), each in the order given."""
    if args.n < 1 or args.steps < 1:
        raise UsageError(f"--n and --steps must be >= 1, got {args.n} and {args.steps}")
    if not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if args.lora_scale is not None and args.lora is None:
        raise UsageError(f"--lora-scale {args.lora_scale} scales the --lora weights: give --lora too")
    if args.lora_scale is not None and not math.isfinite(args.lora_scale):
        raise UsageError(f"--lora-scale must be a finite number, got {args.lora_scale}")
    if not -(2**63) <= args.seed or args.seed + args.n - 1 > 2**64 - 1:  # what torch.Generator.manual_seed takes
        raise UsageError(f"--seed must be in [-2**63, 2**64 - --n] (each image i takes seed + i), got {args.seed}")
    output = check_output(args.output, args.force)
    if args.model is not None:
        model = model_source(args.model, "--model")
        if isinstance(model, Path) and not model.is_dir():
            raise UsageError(
                f"--model {model} is a file; give the folder a pipeline was saved to (it holds model_index.json)"
            )
    elif (BUNDLED_MODEL / "model_index.json").is_file():
        model = BUNDLED_MODEL
    else:
        raise UsageError(
            "this install has no bundled shapes model; pass --model with a saved CLIPConditionedPipeline "
            "or a diffusers Stable Diffusion pipeline"
        )
    loras = [lora_argument(value) for value in args.lora or ()]
    check_names(loras, "--lora")
    embeddings = [embedding_argument(value) for value in args.embedding or ()]
    check_names(embeddings, "--embedding")
    syntax = args.syntax or saved_syntax(model)
    if syntax is not None:
        check_prompt_text(args.prompt, args.negative, syntax, loras)
    if args.sampler is not None or args.schedule_type is not None:
        model_scheduler = saved_scheduler_class(model)  # a hub model's is known once it loads
        if args.sampler is not None or model_scheduler is not None:
            with user_errors(ValueError, context="--sampler / --schedule-type: "):
                sampler_settings(args.sampler, args.schedule_type, model_scheduler)
    return output, model, loras, embeddings


def _stop_on_non_finite_latents(steps: int) -> Any:
    """A step-end callback raising `RunFailed` at the first step whose latents hold NaN or
    infinity: the image would be black, so the run stops there and writes nothing."""
    import torch

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not bool(torch.isfinite(tensors["latents"]).all()):
            running = getattr(pipe, "num_timesteps", None) or steps  # fewer when an image's strength skips some
            raise RunFailed(
                f"the latents became NaN or infinite at step {step + 1} of {running}, so the image would be black; "
                "nothing was written. Try another --steps or --seed, or a lower --guidance"
            )
        return {}

    return callback


@contextlib.contextmanager
def _out_of_memory_is_a_failed_run(args: argparse.Namespace, sources: SourceImages | None) -> Iterator[None]:
    """Memory the sampling cannot get (torch's out-of-memory error on a GPU, Python's
    `MemoryError`, the CPU allocator's errors in `_OUT_OF_MEMORY_SIGNS`) is a `RunFailed`
    saying what to lower, not a traceback."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not isinstance(error, torch.OutOfMemoryError):
            if not any(sign in str(error) for sign in _OUT_OF_MEMORY_SIGNS):
                raise
        if sources is None:
            size, lower = f"{args.height or 'default'} x {args.width or 'default'} pixels", "--n, --height or --width"
        else:
            size, lower = (
                f"{sources.image.size[1]} x {sources.image.size[0]} pixels (--image's height x width)",
                "--n or the --image size",
            )
        raise RunFailed(
            f"out of memory sampling {args.n} image(s) of {size}; nothing was written. Lower {lower}"
        ) from error


def _load(model: str | Path, loras: Sequence[NamedSource], embeddings: Sequence[NamedSource] = ()) -> Any:
    """The pipeline in float32 (it runs on the CPU, whatever the stored dtype), with each of
    `loras` loaded as its adapter name, all of them active at 1, and each of `embeddings` as its
    token (None: the token its file holds)."""
    import torch
    from safetensors import SafetensorError

    where = "no such folder, and the Hugging Face Hub could not provide it" if isinstance(model, str) else "cannot load"
    # diffusers reports a folder it cannot read, or a hub id it cannot fetch, as OSError or
    # ValueError; a damaged weights file is safetensors' own error
    with user_errors(OSError, ValueError, SafetensorError, context=f"--model {model}: {where}: "):
        pipe = load_pipeline(model, torch_dtype=torch.float32)
    for lora in loras:
        with (
            user_errors(
                OSError,
                ValueError,
                KeyError,
                SafetensorError,
                context=f"--lora {lora.written}: cannot load LoRA weights: ",
            ),
            generate_checks.lora_of_another_architecture(lora.written),
        ):
            pipe.load_lora_weights(lora.source, adapter_name=lora.name)
        if not any(lora.name in names for names in pipe.get_list_adapters().values()):
            # diffusers only logs "No LoRA keys ... found"
            raise UsageError(
                f"--lora {lora.written}: none of its tensors names a layer of this model's UNet or text encoders, so it "
                f"would change nothing{generate_checks.what_the_lora_holds(lora.source)}; use a LoRA trained for this "
                "--model"
            )
    if len(loras) > 1:  # diffusers leaves the last one loaded active alone
        pipe.set_adapters([lora.name for lora in loras])
    for embedding in embeddings:
        # diffusers' and the conditioner's loaders refuse a file they cannot read, a token the
        # tokenizer holds already and vectors of another width with ValueError or TypeError; a
        # missing file or hub id is OSError
        with user_errors(
            OSError,
            ValueError,
            TypeError,
            KeyError,
            SafetensorError,
            context=f"--embedding {embedding.written}: cannot load the embedding: ",
        ):
            pipe.load_textual_inversion(embedding.source, token=embedding.name)
    return pipe


def run(args: argparse.Namespace) -> int:
    """Check the arguments, generate, write the PNG. Returns the exit status."""
    # 1. Check the arguments, before anything loads
    take_png_parameters(args)
    output, model, loras, embeddings = _check_arguments(args)
    sources = read_sources(args)
    hires = hires_fix.read_hires_fix(args)
    with user_errors(ValueError, context=f"--model {model}: "):  # a vocabulary.txt that is not UTF-8
        read_vocabulary(model)  # its warning comes once the model's tokens are known
    import torch
    from diffusers.utils import make_image_grid

    from clipcond.pipelines.scheduler_guards import NonFiniteLatents
    from clipcond.window_encoding import NonFiniteEncoding

    # 2. Load the pipeline and check what depends on it
    pipe = _load(model, loras, embeddings)
    if args.emphasis is not None:
        pipe.register_to_config(emphasis=args.emphasis)  # the conditioner is rebuilt with it
    if args.window_split is not None:
        pipe.register_to_config(window_split=args.window_split)
    if args.syntax is not None:
        pipe.register_to_config(syntax=args.syntax)
    if args.sampler is not None or args.schedule_type is not None:  # before an img2img pipeline takes it
        with user_errors(ValueError, context="--sampler / --schedule-type: "):
            pipe.scheduler = scheduler_for_sampler(args.sampler, pipe.scheduler, args.schedule_type)
    if sources is not None:
        pipe = source_pipeline(pipe, sources)
        check_sources_against(pipe, sources, args.steps)
    generate_checks.check_against_model(args, pipe)
    hires_size = None
    if hires is not None:
        first_size = generate_checks.text_to_image_size(args, pipe)
        hires_size = hires_fix.check_hires_against(pipe, hires, args.steps, first_size)
    check_prompt_against(pipe, args.prompt, args.negative, loras, args.clip_skip)
    with user_errors(ValueError, context=f"--model {model}: "):
        warn_about_vocabulary(args.prompt, model, pipe.config.syntax, added_tokens(pipe))
    generate_checks.check_memory(args, pipe, sources, hires_size)
    # 3. Sample, stopping at the first non-finite latents (or text encoder states)
    with (
        user_errors(NonFiniteEncoding, NonFiniteLatents, error=RunFailed, context="nothing was written: "),
        _out_of_memory_is_a_failed_run(args, sources),
    ):
        seeds = [args.seed + index for index in range(args.n)]
        arguments = {
            "prompt": args.prompt,
            "negative_prompt": args.negative,
            "guidance_scale": args.guidance,
            **(
                source_call_arguments(sources, pipe.vae_scale_factor)
                if sources is not None
                else {"height": args.height, "width": args.width}
            ),
            "num_images_per_prompt": args.n,
            "clip_skip": args.clip_skip,
            "cross_attention_kwargs": None if args.lora_scale is None else {"scale": args.lora_scale},
        }
        if hires is None:
            images = pipe(
                **arguments,
                num_inference_steps=args.steps,
                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                callback_on_step_end=_stop_on_non_finite_latents(args.steps),
            ).images
        else:
            images, first_size = hires_fix.draw_with_hires_fix(
                pipe, hires, arguments, args.steps, seeds, _stop_on_non_finite_latents
            )
    # 4. Write the image, or the grid (its last cells blank), atomically
    columns = math.ceil(math.sqrt(args.n))
    picture = (
        images[0]
        if args.n == 1
        else make_image_grid(
            images + [images[0].copy().point(lambda _: 0)] * (columns * math.ceil(args.n / columns) - args.n),
            rows=math.ceil(args.n / columns),
            cols=columns,
        )
    )
    parameters = None
    if not args.no_parameters:
        size = images[0].size if hires is None else first_size
        fields = generate_parameters(args, pipe, model, size, loras, embeddings, hires)
        parameters = infotext(args.prompt, args.negative, fields)
    write_png(picture, output, args.force, parameters)
    print(f"wrote {output}")
    return 0
