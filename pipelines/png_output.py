"""The PNG `clipcond generate` writes: its generation parameters in A1111's text form, and
the atomic write (`write_png`).

A1111 stores them in a PNG text chunk named ``parameters`` (other tools, such as image hosts
and A1111's own "PNG Info", read it there):

    a red circle, (sharp:1.2)
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 3.0, Seed: 4, Size: 32x32, Model: sd, Clip skip: 2

The prompt comes first (its lines as written), then the negative after ``Negative prompt: ``,
then one line of ``name: value`` fields joined by ``, ``; a value holding a comma, a colon or a
line break is written as a JSON string (double quotes, escapes), as A1111 quotes it, so that
A1111's reader (`name: ("..."|[^,]*)` repeated) reads each value back whole. The field names
and meanings are A1111's where it has one: ``Clip skip`` counts the last layer as 1 (A1111's
``CLIP_stop_at_last_layers``), one more than diffusers' `clip_skip`; ``Sampler`` is the
`--sampler` name, or the diffusers scheduler's class name without one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipcond.errors import RunFailed, one_line
from clipcond.output_paths import write_atomically

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt: "


def quoted(value: object) -> str:
    """`value` as a field's text: as written, or as a JSON string where it holds ``,``, ``:``
    or a line break (A1111's rule; non-ASCII characters kept)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(prompt: str, negative: str | None, fields: Mapping[str, object]) -> str:
    """The ``parameters`` text of one image: `prompt`, the `negative` line when there is one,
    and the `fields` whose value is not None, in order.

    Raises:
        ValueError: a field name that A1111's reader would not read back as one (empty, or
            holding anything but letters, digits, ``_`` and spaces).
    """
    for name in fields:
        if not name or not all(character.isalnum() or character in "_ " for character in name):
            raise ValueError(f"a parameter name must hold letters, digits, '_' and spaces only, got {name!r}")
    lines = [prompt]
    if negative:
        lines.append(NEGATIVE_PREFIX + negative)
    lines.append(", ".join(f"{name}: {quoted(value)}" for name, value in fields.items() if value is not None))
    return "\n".join(lines)


def model_name(model: str | Path) -> str:
    """The ``Model`` field of a run on `model`: a hub id whole, a folder by its name."""
    return model if isinstance(model, str) else Path(model).resolve().name


def generate_parameters(
    args: Any,
    pipe: Any,
    model: str | Path,
    size: tuple[int, int],
    loras: list[Any],
    embeddings: list[Any],
    hires: Any = None,
) -> dict[str, object]:
    """The fields of a `clipcond generate` run (its parsed `args`, the pipeline `pipe` that drew,
    `model` as given, one image's (width, height) in pixels, the `--lora` and `--embedding`
    values as `named_sources.NamedSource`s): A1111's ``Steps``, ``Sampler``,
    ``Schedule type`` (when given), ``CFG scale``, ``Seed`` (the first image's: image i takes seed + i), ``Size``, ``Model`` (the
    folder's name or the hub id), ``Clip skip``, ``Denoising strength`` (with ``--image``) and
    ``Batch size`` (with ``--n`` above 1), the hires fix's (`hires_fix.hires_parameters` of
    `hires`, a `hires_fix.HiresFix`; `size` is then the first pass's); then clipcond's: the `--lora` adapter names and their
    scale, the `--embedding` tokens (a folder's or hub id's as given), the emphasis, syntax and window split the pipeline read
    the prompt with, and clipcond's version. None for a field that does not apply."""
    from importlib.metadata import version

    from clipcond.pipelines.hires_fix import hires_parameters

    strength = None
    if args.image is not None:
        strength = pipe.default_strength() if args.strength is None else args.strength
    config = pipe.config
    return {
        "Steps": args.steps,
        "Sampler": args.sampler or type(pipe.scheduler).__name__,
        "Schedule type": args.schedule_type,
        "CFG scale": args.guidance,
        "Seed": args.seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model": model_name(model),
        "Clip skip": None if args.clip_skip is None else args.clip_skip + 1,
        "Denoising strength": strength,
        "Batch size": args.n if args.n > 1 else None,
        **hires_parameters(hires),
        "Lora": ", ".join(lora.name for lora in loras) or None,
        "Lora scale": args.lora_scale,
        "Embeddings": ", ".join(embedding.name or embedding.written for embedding in embeddings) or None,
        "Emphasis": config.emphasis,
        "Syntax": config.syntax,
        "Window split": config.window_split,
        "Version": f"clipcond {version('clipcond')}",
    }


def write_png(picture: Any, output: Path, force: bool, parameters: str | None = None) -> None:
    """Write the PIL image `picture` to `output` as PNG, with the text `parameters` (when given)
    in its ``parameters`` chunk (`infotext`), atomically (`write_atomically`: a
    unique hidden temporary file, removed if the write fails, then a rename), its folders made.
    Without `force`, a file that appeared at `output` while the images were drawn (another
    run's) is kept: the last step is an exclusive link, not a rename.

    Raises:
        RunFailed: the folder or file cannot be written (a full disk, no permission), or
            `output` appeared meanwhile and `force` is not set; the `-o` file, if it existed,
            is unchanged.
    """
    import io

    from PIL.PngImagePlugin import PngInfo

    encoded = io.BytesIO()
    info = PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, parameters)  # as A1111: tEXt, or UTF-8 iTXt beyond Latin-1
    picture.save(encoded, format="PNG", pnginfo=info)
    try:  # a file where a folder should be is FileExistsError too, but not another run's image
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_write(output, error) from error
    try:
        write_atomically(output, encoded.getvalue(), replace=force)
    except FileExistsError as error:
        raise RunFailed(
            f"-o {output} was written by something else while the images were drawn; it is kept and nothing was "
            "written: pass --force to replace it, or choose another -o"
        ) from error
    except OSError as error:
        raise _cannot_write(output, error) from error


def _cannot_write(output: Path, error: OSError) -> RunFailed:
    """The failed run for an `OSError` writing `output` (a full disk, no permission)."""
    return RunFailed(f"cannot write -o {output}: {error.strerror or one_line(error)}; nothing was written")
