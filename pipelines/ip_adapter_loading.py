"""`load_ip_adapter` that leaves the pipeline as it was when it fails, and the check of
`set_ip_adapter_scale`'s scales.

diffusers' `IPAdapterMixin.load_ip_adapter` changes the pipeline in steps: it registers the
image encoder (and a `CLIPImageProcessor`) where the pipeline has none, sets the UNet's
`encoder_hid_proj` to None, converts the adapter's attention layers, sets the attention
processors, then the image projection. A file that fails midway leaves the steps before it
done. Measured on diffusers 0.42.1 with a tiny SD pipeline:

- an adapter file without its `ip_adapter.*` keys (or one of them missing) fails with a bare
  `KeyError: '1.to_k_ip.weight'` after the image encoder is registered;
- loaded over a working adapter, the same failure leaves the old adapter's attention layers
  with no image projection: the next call with `ip_adapter_image` fails inside the UNet
  (`'NoneType' object has no attribute 'image_projection_layers'`);
- an adapter whose weights are NaN loads silently (every image is then NaN);
- a FaceID adapter's file also holds a LoRA, which the loader loads (as `faceid_0`) and makes
  the only active adapter: when the load then failed, that LoRA stayed, and a LoRA the user had
  active was switched off.

`rolled_back_on_failure` snapshots what the loader changes (the LoRA adapters and which of
them are active included) and puts it back when loading fails or when the layers
it loaded hold NaN or infinite values; a missing key and a safetensors file that cannot be read
become a `ValueError` naming the source.

`set_ip_adapter_scale` in diffusers stores whatever it is given: an object, a string or a tuple
failed inside the UNet at the next call, after the text was encoded, and NaN made every image
NaN. `check_ip_adapter_scale` refuses them when the scale is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcond.file_damage import refuse_damaged_folder
from clipcond.pipelines.lora_snapshots import LoraState
from clipcond.scalars import finite_number_tree

# the pipeline components diffusers' loader registers when the pipeline has none
_COMPONENTS = ("image_encoder", "feature_extractor")
_ABSENT = object()  # a UNet without `text_encoder_hid_proj` (only Kolors' has one)


@dataclass(frozen=True)
class IPAdapterState:
    """What `load_ip_adapter` may change, as it was before the call."""

    components: dict[str, Any]
    processors: dict[str, Any]
    encoder_hid_proj: Any
    encoder_hid_dim_type: Any
    text_encoder_hid_proj: Any
    lora: LoraState  # a FaceID adapter's file also loads and activates a LoRA of its own

    @classmethod
    def of(cls, pipe: Any) -> IPAdapterState:
        unet = pipe.unet
        return cls(
            lora=LoraState.of(pipe),
            components={name: getattr(pipe, name) for name in _COMPONENTS if hasattr(pipe, name)},
            processors=dict(unet.attn_processors),
            encoder_hid_proj=unet.encoder_hid_proj,
            encoder_hid_dim_type=unet.config.encoder_hid_dim_type,
            text_encoder_hid_proj=getattr(unet, "text_encoder_hid_proj", _ABSENT),
        )

    def restore(self, pipe: Any) -> None:
        """Put `pipe` back as it was (the same module and processor objects)."""
        unet = pipe.unet
        changed = {name: value for name, value in self.components.items() if getattr(pipe, name) is not value}
        if changed:
            pipe.register_modules(**changed)
        unet.set_attn_processor(dict(self.processors))
        unet.encoder_hid_proj = self.encoder_hid_proj
        unet.config.encoder_hid_dim_type = self.encoder_hid_dim_type  # as diffusers' loader sets it
        if self.text_encoder_hid_proj is _ABSENT:
            if hasattr(unet, "text_encoder_hid_proj"):
                del unet.text_encoder_hid_proj
        else:
            unet.text_encoder_hid_proj = self.text_encoder_hid_proj
        self.lora.restore(pipe)

    def loaded_parameters(self, pipe: Any) -> Iterator[tuple[str, torch.Tensor]]:
        """The parameters of the attention processors and image projection that are not the
        ones of before (what the call loaded)."""
        unet = pipe.unet
        for name, processor in unet.attn_processors.items():
            if processor is not self.processors.get(name) and isinstance(processor, torch.nn.Module):
                yield from ((f"{name}.{key}", value) for key, value in processor.named_parameters())
        if unet.encoder_hid_proj is not None and unet.encoder_hid_proj is not self.encoder_hid_proj:
            yield from ((f"encoder_hid_proj.{key}", value) for key, value in unet.encoder_hid_proj.named_parameters())


def describe_source(source: Any, weight_name: Any) -> str:
    """How a message names what `load_ip_adapter` was given."""
    if isinstance(source, dict):
        return "the state dict"
    if isinstance(source, list):
        return ", ".join(describe_source(item, name) for item, name in zip(source, _as_list(weight_name, len(source))))
    return f"{source} ({weight_name})" if weight_name else str(source)


def _as_list(value: Any, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def check_image_encoder_folders(pipe: Any, source: Any, subfolder: Any, image_encoder_folder: Any) -> None:
    """Refuse damaged files in the image-encoder folder that diffusers' `load_ip_adapter` would
    read (`<source>/<subfolder>/<image_encoder_folder>`, or `<source>/<image_encoder_folder>`
    when that holds a "/"), before anything loads. diffusers reads it only where the pipeline has
    no `image_encoder`, and from the first source of a list only (it registers the encoder
    there; a first source that is a state dict is its own error). Without this, a cut
    `model.safetensors` there was reported as the adapter file's damage.

    Raises:
        ValueError: naming the image encoder's folder and each damaged file.
    """
    if getattr(pipe, "image_encoder", None) is not None or not isinstance(image_encoder_folder, str):
        return
    sources = source if isinstance(source, list) else [source]
    subfolders = _as_list(subfolder, 1)
    if not sources or not subfolders:
        return  # diffusers' own error: nothing to read
    first, inside = sources[0], subfolders[0]
    if not isinstance(first, (str, Path)) or not Path(first).is_dir():
        return
    relative = Path(image_encoder_folder) if "/" in image_encoder_folder else Path(inside or "", image_encoder_folder)
    folder = Path(first) / relative
    if folder.is_dir():
        refuse_damaged_folder(f"the IP-Adapter image encoder at {folder}", folder, [""])


@contextlib.contextmanager
def rolled_back_on_failure(pipe: Any, source: str) -> Iterator[None]:
    """Run a `load_ip_adapter` in the block; if it raises, or loads NaN or infinite weights,
    put `pipe` back as it was and raise. `source` names what is loaded in messages.

    Raises:
        ValueError: weights without a key the adapter needs, a safetensors file that cannot be
            read, or loaded weights holding NaN or infinite values; each naming `source`.
    """
    from safetensors import SafetensorError

    state = IPAdapterState.of(pipe)
    try:
        yield
        for name, value in state.loaded_parameters(pipe):
            if not bool(torch.isfinite(value.detach().float()).all()):
                raise ValueError(
                    f"the IP-Adapter weights of {source} hold NaN or infinite values ({name}; a damaged file?): "
                    "nothing was loaded"
                )
    except KeyError as error:
        state.restore(pipe)
        raise ValueError(
            f"the IP-Adapter weights of {source} have no {error.args[0]!r} (an incomplete or damaged file, or no "
            "IP-Adapter for this UNet): nothing was loaded"
        ) from error
    except SafetensorError as error:
        state.restore(pipe)
        raise ValueError(f"{source} is not a readable safetensors file ({error}): nothing was loaded") from error
    except BaseException:
        state.restore(pipe)
        raise


_SCALE_FORMS = (
    "a finite number, a dict of block scales (diffusers' InstantStyle form: {'up': {'block_0': [0.0, 1.0, 0.0]}}) "
    "or a list of those, one per IP-Adapter"
)


def check_ip_adapter_scale(scale: Any) -> Any:
    """`scale` as diffusers' `set_ip_adapter_scale` takes it, its numbers read as Python floats
    (numpy's and 0-d tensors included): a number, a dict of block scales whose values are
    numbers, lists of numbers or dicts of them, or a list of those (one per adapter).

    Raises:
        TypeError: anything else, naming `scale` and the forms it takes.
        ValueError: a NaN or infinite number anywhere in it.
    """
    return finite_number_tree(scale, "scale", _SCALE_FORMS)


__all__ = [
    "IPAdapterState",
    "check_image_encoder_folders",
    "check_ip_adapter_scale",
    "describe_source",
    "rolled_back_on_failure",
]
