"""`clipcond generate --parameters-from IMAGE`: draw again from the generation parameters an
image holds, as A1111's "PNG Info" -> "Send to txt2img" does.

A1111 (and `clipcond generate`, `png_output`) keep them in a PNG's ``parameters`` text chunk (and
A1111 in a JPEG's or WebP's EXIF comment):
the prompt, a ``Negative prompt: `` line, then one line of ``name: value`` fields. `read_infotext`
reads that text as A1111's reader does: the last line is the fields when at least three
``name: value`` pairs are found there (a value is a JSON string, or the text up to the next
comma), lines from one starting with ``Negative prompt:`` on are the negative, each line
stripped.

`apply_parameters` puts what applies into `generate`'s options, where the command line did not
give that option itself: the prompt and negative, ``Steps``, ``Sampler``, ``Schedule type``,
``CFG scale``, ``Seed``, ``Size`` (without ``--image``), ``Clip skip`` (A1111's count, one more
than diffusers'), ``Batch size``, ``Denoising strength`` (with ``--image``, or of the hires fix),
A1111's hires fix (``Hires upscale``, ``Hires steps``, ``Hires upscaler``; without ``--image``),
and how the prompt is read. clipcond's PNGs name the emphasis, syntax and window split; a PNG
another program wrote (no ``Version: clipcond ...``) was read as A1111 reads prompts: its
``Emphasis`` ("Original" by default; "No norm" is clipcond's "multiply") and windows cut after
the last comma ("a1111"). The fields that would change the image but are not applied (the
model, LoRAs, embeddings, the hires fix's ``Hires resize``, sampler or prompt, ...) are
returned, for a warning. These are diffusers' samplers: the image is not the one A1111 drew.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcond.emphasis_modes import check_emphasis
from clipcond.errors import UsageError
from clipcond.pipelines.hires_fix import upscaler_name
from clipcond.pipelines.png_output import NEGATIVE_PREFIX, PARAMETERS_KEY, model_name
from clipcond.pipelines.samplers import sampler_name, saved_scheduler_class, schedule_type_name, scheduler_class_named
from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, model_source
from clipcond.prompt_syntaxes import check_syntax
from clipcond.window_splits import check_window_split

# the options a PNG may set that argparse gives a value when they are not on the command line;
# `GivenOption` records which of them were
DEFAULTED_OPTIONS = ("seed", "steps", "guidance", "n")
_NEGATIVE = NEGATIVE_PREFIX.strip()  # a line starting so, spaces after it or not
# A1111's pattern of a field is `\s*([\w ]+):` then `_VALUE`: a name of word characters and
# spaces, then a JSON string or the text up to a comma. `_field_pairs` finds what it finds.
_VALUE = re.compile(r'\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NAME_RUN = re.compile(r"[\w ]+")
_SPACE_RUN = re.compile(r"\s+")
# A1111's emphasis names -> clipcond's emphasis modes
_A1111_EMPHASIS = {"Original": "a1111", "No norm": "multiply"}
# where EXIF keeps a comment: its Exif IFD's UserComment, whose first 8 bytes name the encoding
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_COMMENT_ENCODINGS = {b"UNICODE\0": "utf-16-be", b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis"}
# fields that describe the run but do not change the image
_DESCRIPTIVE = ("Version", "Model hash", "VAE hash", "Lora hashes", "TI hashes", "Hashes")


@dataclass(frozen=True)
class Infotext:
    """A PNG's generation parameters as A1111 reads them: the prompt, the negative ("" when
    there is none) and the fields by name, each value as text."""

    prompt: str
    negative: str
    fields: dict[str, str]


class GivenOption(argparse.Action):
    """argparse's ``store``, also recording the option's name in the namespace's ``given`` set:
    for the options of `DEFAULTED_OPTIONS`, whose value alone cannot say whether the command
    line gave it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def add_parameters_from_argument(parser: argparse.ArgumentParser) -> None:
    """`generate`'s ``--parameters-from``."""
    parser.add_argument(
        "--parameters-from",
        metavar="IMAGE",
        help="draw with the generation parameters an image holds (a PNG's 'parameters' text, as A1111 and clipcond "
        "write it, or the EXIF comment of A1111's JPEG and WebP): its prompt, negative, steps, sampler, schedule "
        "type, CFG scale, seed, size, clip skip, batch size and hires fix, where this command line does not give them "
        "(clipcond.pipelines.png_parameters); the fields not applied are named in a warning",
    )


def read_infotext(text: str) -> Infotext:
    """`text` (a ``parameters`` chunk) read as A1111 reads it (see the module docstring)."""
    *lines, last = text.strip().split("\n")
    found = _field_pairs(last)
    if len(found) < 3:  # no fields line: the last line is the prompt's or the negative's
        lines, found = [*lines, last], []
    prompt: list[str] = []
    negative: list[str] = []
    for line in (line.strip() for line in lines):
        if line.startswith(_NEGATIVE):
            negative.append(line.removeprefix(_NEGATIVE).strip())
        else:
            (negative if negative else prompt).append(line)
    fields = {}
    for name, value in found:
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # kept as written, as A1111 keeps a value its JSON reader refuses
        fields[name.strip()] = str(value)
    return Infotext("\n".join(prompt), "\n".join(negative), fields)


def _field_pairs(line: str) -> list[tuple[str, str]]:
    r"""The (name, value) pairs A1111's field pattern finds in `line` (Python's ``findall`` of
    ``\s*([\w ]+):`` + `_VALUE`), in work linear in the line's length: ``findall`` tries the
    name part at every position, and each try runs to the end of its run of word characters and
    spaces, so a long line of words without a colon took time quadratic in its length (an
    80,000-character line, 79 s). Here each position's run ends are looked up instead.

    At a position `p` the name part matches when, past the whitespace at `p` (to `q`), a run of
    word characters and spaces ends at a colon (the name is that run), or when no word
    character follows that whitespace but a space and a colon end it (the name is " ": the
    pattern gives the whitespace back one character at a time). Then `_VALUE` reads the value
    from after the colon, which it always can, and the search goes on where it ended.
    """
    size = len(line)
    name_end = [-1] * size  # for a word character or space: where its run ends
    for run in _NAME_RUN.finditer(line):
        name_end[run.start() : run.end()] = [run.end()] * (run.end() - run.start())
    space_end = list(range(size))  # for whitespace: where its run ends; else the position itself
    for run in _SPACE_RUN.finditer(line):
        space_end[run.start() : run.end()] = [run.end()] * (run.end() - run.start())
    pairs, position = [], 0
    while position < size:
        after_space = space_end[position]
        name = None
        if after_space < size and name_end[after_space] != -1:
            end = name_end[after_space]
            if end < size and line[end] == ":":
                name = (after_space, end)
        elif (
            after_space < size and line[after_space] == ":" and after_space > position and line[after_space - 1] == " "
        ):
            name = (after_space - 1, after_space)
        if name is None:
            position += 1
            continue
        value = _VALUE.match(line, name[1] + 1)
        pairs.append((line[name[0] : name[1]], value.group(1)))
        position = value.end()
    return pairs


def infotext_of_image(path: str | Path) -> Infotext:
    """The generation parameters the image at `path` holds (`read_infotext`): a PNG's
    ``parameters`` text chunk, or the EXIF ``UserComment`` where A1111 writes them into a JPEG
    or WebP (`user_comment_text`). The pixels are not decoded for a PNG whose text comes first,
    as A1111 and clipcond write it.

    Raises:
        UsageError: naming ``--parameters-from`` and `path`: no such file, no image PIL reads,
            or an image without parameters (a ComfyUI PNG keeps its workflow instead).
    """
    from PIL import Image, UnidentifiedImageError

    where = f"--parameters-from {path}"
    try:
        with Image.open(path) as image:
            chunks, raw_comment = dict(image.info), None
            if PARAMETERS_KEY not in chunks:  # a PNG's text after the pixels, or EXIF, is read with the pixels
                chunks.update(getattr(image, "text", {}))
                raw_comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except FileNotFoundError as error:
        raise UsageError(f"{where}: no such file") from error
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise UsageError(f"{where}: cannot read it as an image ({error})") from error
    text = chunks.get(PARAMETERS_KEY)
    if not isinstance(text, str) or not text.strip():
        text = user_comment_text(raw_comment) if isinstance(raw_comment, bytes) else None
    if not text or not text.strip():
        workflow = " (it holds a ComfyUI workflow, which is no A1111 parameters text)" if "workflow" in chunks else ""
        raise UsageError(
            f"{where}: the image holds no generation parameters (no 'parameters' text, no EXIF comment){workflow}"
        )
    return read_infotext(text)


def user_comment_text(raw: bytes) -> str:
    """The text of an EXIF ``UserComment`` value: its first 8 bytes name the encoding (EXIF 2.3,
    table 9: ``UNICODE`` is UTF-16 big-endian, as A1111 writes it; ``ASCII``; ``JIS``); a value
    without such a mark is read as UTF-8, what cannot be read left out, as A1111 reads one."""
    encoding = _COMMENT_ENCODINGS.get(raw[:8])
    if encoding is None:
        return raw.decode("utf-8", errors="ignore")
    return raw[8:].decode(encoding, errors="replace")


def apply_parameters(
    args: argparse.Namespace,
    read: Infotext,
    where: str,
    model_name: str | None = None,
    model_scheduler: str | None = None,
) -> list[str]:
    """Set `args` (`generate`'s options) from `read` where the command line left an option out
    (see the module docstring); returns the names of the fields that would change the image but
    were not applied, in the PNG's order: ``Model`` among them unless it is `model_name`, the
    name the run's model has in the ``Model`` field `generate` writes. A clipcond PNG drawn
    without ``--sampler`` names the model's scheduler class as its ``Sampler``: the run keeps
    the model's own scheduler, and the field is among those not applied when `model_scheduler`
    (the class name of the scheduler the run's model folder saved; None: not known before
    loading) is another. `where` names the PNG in errors.

    Raises:
        UsageError: a field that applies whose value is not of its kind (a Steps that is no
            whole number, a Sampler with no diffusers scheduler, a Size that is not WIDTHxHEIGHT,
            ...), naming the PNG, the field and the option that replaces it.
    """
    given = getattr(args, "given", set())
    fields = dict(read.fields)
    ours = fields.get("Version", "").startswith("clipcond")
    if args.prompt is None:
        args.prompt = read.prompt
    if args.negative is None and read.negative:
        args.negative = read.negative

    def take(name: str, option: str, parse: Callable[[str], Any], applies: bool = True) -> None:
        """Move field `name` into `args.<option>` when it applies and the option is not given."""
        if name not in fields or not applies:
            return
        text = fields.pop(name)
        if option in given or (option not in DEFAULTED_OPTIONS and getattr(args, option) is not None):
            return
        try:
            setattr(args, option, parse(text))
        except (ValueError, TypeError) as error:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{where}: its {name} {text!r:.80} cannot be read ({error}); give {flag}") from error

    take("Steps", "steps", _count)
    take("CFG scale", "guidance", _finite)
    take("Seed", "seed", _whole)
    take("Batch size", "n", _count)
    scheduler_class = ours and scheduler_class_named(fields.get("Sampler")) is not None
    if scheduler_class and (args.sampler is not None or model_scheduler in (None, fields["Sampler"])):
        del fields["Sampler"]  # the run's own scheduler, or --sampler's
    take("Sampler", "sampler", sampler_name, applies=not scheduler_class)
    take("Schedule type", "schedule_type", schedule_type_name)
    take("Clip skip", "clip_skip", lambda text: None if _whole(text) <= 1 else _whole(text) - 1)
    take("Denoising strength", "strength", _finite, applies=args.image is not None)
    take("Hires upscale", "hires_scale", _finite, applies=args.image is None)
    take("Hires steps", "hires_steps", _count, applies=args.image is None)
    take("Hires upscaler", "hires_upscaler", upscaler_name, applies=args.image is None)
    take("Denoising strength", "hires_strength", _finite, applies=args.image is None and args.hires_scale is not None)
    if "Size" in fields and args.image is None:
        width, height = _size(fields, where)
        if args.width is None and args.height is None:
            args.width, args.height = width, height
    take("Syntax", "syntax", check_syntax, applies=ours)
    take("Window split", "window_split", check_window_split, applies=ours)
    if ours:
        take("Emphasis", "emphasis", check_emphasis)
    else:
        take("Emphasis", "emphasis", _a1111_emphasis)
        if args.emphasis is None:
            args.emphasis = "a1111"  # A1111's default, "Original"
        if args.window_split is None:
            args.window_split = "a1111"
    if model_name is not None and fields.get("Model") == model_name:
        del fields["Model"]
    if args.lora is not None:
        take("Lora scale", "lora_scale", _finite)
    if args.image is None:
        fields.pop("Denoising strength", None)  # drawn from an image: no text-to-image meaning
    return [name for name in fields if name not in _DESCRIPTIVE and name != "Size"]


def take_png_parameters(args: argparse.Namespace) -> None:
    """`generate`'s options with those of ``--parameters-from`` applied (`apply_parameters`),
    the fields not applied named in a warning on stderr; without it, a check that the command
    line gave a prompt.

    Raises:
        UsageError: no prompt and no ``--parameters-from``, or what `infotext_of_image` and
            `apply_parameters` raise.
    """
    if args.parameters_from is None:
        if args.prompt is None:
            raise UsageError("give a prompt, or --parameters-from an image that holds one")
        return
    where = f"--parameters-from {args.parameters_from}"
    model = model_source(args.model, "--model") if args.model is not None else BUNDLED_MODEL
    saved = saved_scheduler_class(model)
    read = infotext_of_image(args.parameters_from)
    not_applied = apply_parameters(args, read, where, model_name(model), saved and saved.__name__)
    if not_applied:
        print(f"warning: {where}: not applied: {', '.join(not_applied)}", file=sys.stderr)


def _whole(text: str) -> int:
    """`text` as an int (``"20"``; not ``"20.5"``)."""
    return int(text.strip())


def _count(text: str) -> int:
    """`text` as an int of at least 1."""
    value = _whole(text)
    if value < 1:
        raise ValueError("not at least 1")
    return value


def _finite(text: str) -> float:
    """`text` as a finite float."""
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _size(fields: dict[str, str], where: str) -> tuple[int, int]:
    """The (width, height) of the ``Size`` field (``"512x768"``), taken out of `fields`."""
    text = fields.pop("Size")
    width, _, height = text.strip().partition("x")
    try:
        return _count(width), _count(height)
    except ValueError as error:
        raise UsageError(
            f"{where}: its Size {text!r:.80} is not WIDTHxHEIGHT (two whole numbers of at least 1); give --width "
            "and --height"
        ) from error


def _a1111_emphasis(text: str) -> str:
    """clipcond's emphasis mode for A1111's emphasis name `text`."""
    if text not in _A1111_EMPHASIS:
        raise ValueError(f"clipcond has A1111's emphasis {' and '.join(map(repr, _A1111_EMPHASIS))} only")
    return _A1111_EMPHASIS[text]
