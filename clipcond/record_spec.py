"""`RecordSpec`: which tensors, of which shapes and dtypes, an `EncodedPrompt` must hold.

The disk cache checks every entry it reads against the spec of the conditioner asking
(`expected_record`), so a file that parses but holds the wrong tensors (another model's
width, a cast, NaNs, a missing or extra tensor) is a miss instead of a wrong answer.
`TextConditioner.assemble` checks the records it is given against it too (`check_records`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipcond.encoders import TextEncoder
from clipcond.recipes import Recipe
from clipcond.records import EncodedPrompt


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a record.

    Attributes:
        shape: the size of each axis; None on an axis of any size >= 1 (the CLIP windows).
        dtype: the dtype the encoders produce.
    """

    shape: tuple[int | None, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        """The shape as text, "windows" on an axis of any size."""
        return "(" + ", ".join("windows" if size is None else str(size) for size in self.shape) + ")"

    def fits(self, shape: Sequence[int]) -> bool:
        """True when `shape` has this spec's sizes (any size >= 1 on a None axis)."""
        return len(shape) == len(self.shape) and all(
            size >= 1 if expected is None else size == expected for size, expected in zip(shape, self.shape)
        )


@dataclass(frozen=True)
class RecordSpec:
    """The tensors of a record, by `EncodedPrompt` field name."""

    tensors: Mapping[str, TensorSpec]

    def problem(self, tensors: Mapping[str, torch.Tensor], finite: bool = True) -> str | None:
        """What is wrong with `tensors` as a record of this spec (names, shapes, dtypes and,
        with `finite`, finite values), or None when they fit. Without `finite` only the
        tensors' metadata is read (no device sync)."""
        missing = sorted(set(self.tensors) - set(tensors))
        if missing:
            return f"missing tensors {missing}"
        extra = sorted(set(tensors) - set(self.tensors))
        if extra:
            return f"unexpected tensors {extra}"
        for name, spec in self.tensors.items():
            tensor = tensors[name]
            if not spec.fits(tensor.shape):
                return f"`{name}` has shape {tuple(tensor.shape)}, expected {spec.describe()}"
            if tensor.dtype != spec.dtype:
                return f"`{name}` is {tensor.dtype}, expected {spec.dtype}"
            if finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"`{name}` holds NaN or infinite values"
        return None

    def describe(self) -> str:
        """Each tensor's name, shape and dtype, as text."""
        return ", ".join(f"{name} {spec.describe()} {spec.dtype}" for name, spec in self.tensors.items())


def check_records(records: Any, spec: RecordSpec, argument: str = "records") -> list[EncodedPrompt]:
    """`records` as a list, each an `EncodedPrompt` of `spec` (`check_record`, named
    ``records[i]``); a TypeError naming `argument` for what is no list of records."""
    if isinstance(records, (EncodedPrompt, torch.Tensor, str)) or not isinstance(records, Sequence):
        raise TypeError(f"`{argument}` must be a list of EncodedPrompt, got {type(records).__name__}")
    return [check_record(record, spec, f"{argument}[{index}]") for index, record in enumerate(records)]


def check_record(record: Any, spec: RecordSpec, name: str) -> EncodedPrompt:
    """`record` if it is an `EncodedPrompt` holding the tensors of `spec` (names, shapes, dtypes;
    values are not read). A TypeError or ValueError naming `name` and what differs otherwise:
    a record of another conditioner (another width or dtype, another recipe's tensors) would
    assemble into embeddings of the wrong shape, or fail deep in torch."""
    if not isinstance(record, EncodedPrompt):
        raise TypeError(f"`{name}` must be an EncodedPrompt, got {type(record).__name__}")
    tensors = record.tensors()
    for field, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{name}.{field}` must be a tensor, got {type(tensor).__name__}")
    problem = spec.problem(tensors, finite=False)
    if problem is not None:
        raise ValueError(
            f"`{name}` is not a record of this conditioner: {problem} (its `record_spec`: {spec.describe()})"
        )
    return record


def _joined_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The dtype of tensors of `dtypes` joined with `torch.cat` (it promotes)."""
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def expected_record(clip: Sequence[TextEncoder], t5: TextEncoder | None, recipe: Recipe) -> RecordSpec:
    """The spec of the records `clipcond.window_encoding.encode_fragments` makes with these
    encoders and this recipe (clip-skip already applied).

    - ``clip_tokens``: (windows, window_length, sum of CLIP widths), unless the recipe reads
      only CLIP's pooled vector;
    - ``pooled``: (width,) pooled state of the last CLIP, or of all CLIPs joined (``concat``),
      before any `text_projection` (assembly applies it: `clipcond.assembly`), in
      `TextEncoder.pooled_state_dtype`;
    - ``t5_tokens``: (t5_max_length, t5_width) and ``t5_mask``: (t5_max_length,) int64.
    """
    tensors: dict[str, TensorSpec] = {}
    if clip:
        if recipe.combine != "clip_pooled_t5_tokens":
            width = sum(encoder.width for encoder in clip)
            dtype = _joined_dtype([encoder.dtype for encoder in clip])
            tensors["clip_tokens"] = TensorSpec((None, clip[0].window_length, width), dtype)
        if recipe.pooled == "last":
            tensors["pooled"] = TensorSpec((clip[-1].width,), clip[-1].pooled_state_dtype)
        elif recipe.pooled == "concat":
            dtype = _joined_dtype([encoder.pooled_state_dtype for encoder in clip])
            tensors["pooled"] = TensorSpec((sum(encoder.width for encoder in clip),), dtype)
    if t5 is not None:
        tensors["t5_tokens"] = TensorSpec((recipe.t5_max_length, t5.width), t5.dtype)
        tensors["t5_mask"] = TensorSpec((recipe.t5_max_length,), torch.int64)
    return RecordSpec(tensors)
