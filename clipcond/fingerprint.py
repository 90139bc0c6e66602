"""Fingerprints of model weights, so cached embeddings are never stale.

`WeightsWatch` answers two questions about a set of modules:
- `state()`: a cheap token that changes whenever any parameter or buffer is replaced
  (a different tensor object or storage) or modified in place (torch bumps a tensor's
  version counter on every in-place write: optimizer steps, `load_state_dict`, `copy_`).
  For modules placed by accelerate hooks (`enable_model_cpu_offload`), whose storage moves
  on every call by design, a change of dtype or device stands in for a change of storage
  (so a write that ends on the same dtype and device, such as a `.to(torch.bfloat16)
  .to(torch.float32)` round trip between two encodes, goes unseen: `mark_written()`).
  A weight that accelerate offloads to the meta device (sequential or disk offload) is watched
  where its values are, the hook's `weights_map`: its tensor there (a quantized weight's inner
  tensors, `stored_tensors`), or its file on disk.
  The settings of peft adapter layers (scale, active, merged, disabled) are part of it too.
  A write through `.data` (`weight.data += delta`) bumps no version counter; code that writes
  so tells the watch with `mark_written()` (peft's merge and unmerge do: `fuse_lora`).
- `content_hash()`: a hash of the weights' names, shapes, dtypes and bytes, stable across
  processes (used for the on-disk cache); computed once per state, since it reads every byte.
  An offloaded weight is hashed from the values its hook loads for each forward: the hash
  equals that of the same weights not offloaded.

Quantized weights are watched through the plain tensors that hold their values
(`stored_tensors`): a tensor subclass such as torchao's `Int8Tensor` reports no storage of its
own (`data_ptr()` is 0, its bytes cannot be viewed) and a write to its inner `qdata` or
`scale` leaves its own version counter alone; bitsandbytes keeps the scales of a quantized
weight beside it (on the parameter, or on its layer).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

# Where bitsandbytes keeps a 4-bit weight's scales: attributes of its `Params4bit`. (An 8-bit
# weight's scale `SCB` moves from the weight to its layer on the first forward: `_watched_tensors`.)
_BITSANDBYTES_SCALES = (("quant_state", "absmax"), ("quant_state", "state2", "absmax"))


def stored_tensors(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The plain tensors that hold the values of the weight `name`, each with a name: the
    weight itself; for a tensor subclass (torchao's quantized tensors), its inner tensors,
    recursively (``name.qdata``, ``name.scale``); for a bitsandbytes 4-bit parameter, the
    packed weight and its scales (``name.quant_state.absmax``)."""
    if is_traceable_wrapper_subclass(tensor):
        inner, _ = tensor.__tensor_flatten__()
        return [
            part for attribute in inner for part in stored_tensors(f"{name}.{attribute}", getattr(tensor, attribute))
        ]
    found = [(name, tensor)]
    for path in _BITSANDBYTES_SCALES:
        value = tensor
        for attribute in path:
            value = getattr(value, "__dict__", {}).get(attribute)
        if isinstance(value, torch.Tensor):
            found.append((".".join((name, *path)), value))
    return found


def _watched_tensors(parts: list[tuple[str, nn.Module]]) -> list[tuple[str, torch.Tensor]]:
    """The plain tensors that hold the weights of a module, given its `named_modules()`, each
    with the path of its weight: each part's own parameters and persistent buffers
    (`stored_tensors`; those of the state dict), then a bitsandbytes 8-bit layer's scale,
    wherever it is now (on the weight until the first forward, on the layer after). Not the
    state dict itself: bitsandbytes builds new tensors for it on every call (`weight_format`,
    the packed 4-bit `quant_state`)."""
    tensors = []
    for prefix, part in parts:
        buffers = [
            (name, buffer) for name, buffer in part._buffers.items() if name not in part._non_persistent_buffers_set
        ]
        for name, weight in (*part._parameters.items(), *buffers):
            if weight is not None:
                path = f"{prefix}.{name}" if prefix else name
                tensors.extend((path, tensor) for _, tensor in stored_tensors(name, weight))
        scale = getattr(part._parameters.get("weight"), "SCB", None)
        if scale is None:
            scale = getattr(part.__dict__.get("state"), "SCB", None)
        if isinstance(scale, torch.Tensor):
            tensors.append((f"{prefix}.SCB" if prefix else "SCB", scale))
    return tensors


def _offload_source(parts: Mapping[str, nn.Module], path: str) -> tuple[Mapping, str] | None:
    """Where accelerate keeps the values of the tensor at `path` (in the module whose
    `named_modules(remove_duplicate=False)` are `parts`) while it rests on the meta device: the
    `weights_map` of the `AlignDevicesHook` that loads it for each forward, and its key there;
    None when no hook does. That hook is on the tensor's own module (the key: the tensor's
    name), or on an ancestor that loads its submodules' tensors too (`place_submodules`, for
    `preload_module_classes`; the key: the path below that ancestor), as the hook's
    `pre_forward` reads them."""
    names = path.split(".")
    for depth in range(len(names) - 1, -1, -1):
        hook = getattr(parts.get(".".join(names[:depth])), "__dict__", {}).get("_hf_hook")
        for candidate in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
            if not getattr(candidate, "offload", False) or getattr(candidate, "weights_map", None) is None:
                continue
            if depth == len(names) - 1 or getattr(candidate, "place_submodules", False):
                return candidate.weights_map, ".".join(names[depth:])
    return None


def _offloaded_value(source: tuple[Mapping, str], tensor: torch.Tensor) -> torch.Tensor | None:
    """The values accelerate loads for an offloaded `tensor` from its `source`, in the tensor's
    dtype (the hook casts to it: `set_module_tensor_to_device`); None if the map lacks it."""
    weights_map, key = source
    try:
        value = weights_map[key]
    except KeyError:
        return None
    return value if value.dtype == tensor.dtype else value.to(tensor.dtype)


def offloaded_tensor(modules: Mapping[str, nn.Module], path: str, tensor: torch.Tensor) -> torch.Tensor | None:
    """The values accelerate loads for the meta `tensor` at `path` (in the module whose
    `named_modules(remove_duplicate=False)` are `modules`) for each forward, in its dtype; None
    when no offload hook holds them (`_offload_source`)."""
    source = _offload_source(modules, path)
    return None if source is None else _offloaded_value(source, tensor)


def _source_mark(source: tuple[Mapping, str], stats: dict[str, os.stat_result]) -> tuple[tuple, list[torch.Tensor]]:
    """A mark of the values behind an offloaded weight that changes when they change, read
    without loading them, and the tensors in memory that hold them (whose identity the watch
    follows; none for values in a file). Values in memory (`cpu_offload`'s state dict) are
    marked as any weight, through the plain tensors that hold them (`stored_tensors`: a
    quantized weight's inner tensors, which a write changes alone); values on disk (`offload_folder`: accelerate's `.dat` files or the
    checkpoint's safetensors file) by their file's size, time of last write and inode. Another
    kind of map is asked for the value, which is marked as it comes (a map that builds a new
    tensor on every read makes every state new: correct, but each disk-cache lookup then
    reads the weights again). `stats`: the files stat-ed so far in this `state()`."""
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    weights_map, key = source
    while isinstance(weights_map, PrefixedDataset):
        key, weights_map = f"{weights_map.prefix}{key}", weights_map.dataset
    if isinstance(weights_map, OffloadedWeightsLoader) and key not in weights_map.state_dict:
        info = weights_map.index.get(key)
        if info is None:
            return ("missing", key), []
        file = info.get("safetensors_file") or os.path.join(weights_map.save_folder, f"{key}.dat")
        if file not in stats:
            try:
                stats[file] = os.stat(file)
            except OSError:  # gone: a forward fails too, and says so
                return ("missing", key), []
        stat = stats[file]
        return ("file", file, info.get("weight_name", key), stat.st_size, stat.st_mtime_ns, stat.st_ino), []
    try:
        value = weights_map[key]
    except KeyError:
        return ("missing", key), []
    holders = [part for _, part in stored_tensors(key, value)]
    return ("tensor", value.dtype, *((part._version, part.data_ptr()) for part in holders)), holders


def _layout(tensor: torch.Tensor) -> str:
    """What a tensor subclass adds to its inner tensors' bytes: its type and flatten context
    (torchao: block size, original dtype, activation quantization); "" for a plain tensor."""
    if not is_traceable_wrapper_subclass(tensor):
        return ""
    _, context = tensor.__tensor_flatten__()
    return f"{type(tensor).__qualname__}{context!r}"


def _tensors(modules: Sequence[nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the modules' state dicts (quantized ones as they are), by "index.name"."""
    named = []
    for index, module in enumerate(modules):
        for name, tensor in module.state_dict(keep_vars=True).items():
            named.append((f"{index}.{name}", tensor))
    return named


def weights_hash(modules: Sequence[nn.Module]) -> str:
    """Hex digest (blake2b, 32 bytes) of every tensor's name, dtype, shape and bytes (a
    quantized tensor's: of its layout and its inner tensors, `stored_tensors`), and of the
    modules' peft adapter settings."""
    return _with_adapter_settings(_tensor_digest(modules), modules)


def _tensor_digest(modules: Sequence[nn.Module]) -> Any:
    """The running blake2b digest of `weights_hash` over the tensors (it reads every byte; an
    offloaded tensor's from where accelerate keeps it, `_offload_source`)."""
    digest = hashlib.blake2b(digest_size=32)
    parts: dict[int, dict[str, nn.Module]] = {}  # per module index, built on its first meta tensor
    for name, tensor in _tensors(modules):
        layout = _layout(tensor)  # appended only for subclasses: plain weights hash as they always have
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}{'|' + layout if layout else ''}".encode())
        stored = stored_tensors(name, tensor)
        if any(part.device.type == "meta" for _, part in stored):
            index, path = name.split(".", 1)
            if int(index) not in parts:
                parts[int(index)] = dict(modules[int(index)].named_modules(remove_duplicate=False))
            # the whole weight as its hook loads it (a quantized one with its inner tensors)
            stored = stored_tensors(name, _meta_values(parts[int(index)], path, tensor, name))
        for part_name, part in stored:
            if part_name != name:
                digest.update(f"{part_name}|{part.dtype}|{tuple(part.shape)}".encode())
            # as a plain tensor: bitsandbytes' parameter classes change what `.to` does
            data = part.detach().as_subclass(torch.Tensor).to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(data.numpy()))
    return digest


def _meta_values(parts: Mapping[str, nn.Module], path: str, tensor: torch.Tensor, label: str) -> torch.Tensor:
    """The values of the weight `tensor` on the meta device at `path` (a quantized weight whole,
    not one of its inner tensors): what its accelerate hook loads for it. Raises ValueError,
    naming it by `label`, when there are none to read."""
    source = _offload_source(parts, path)
    value = None if source is None else _offloaded_value(source, tensor)
    if value is not None:
        return value
    if source is not None:
        raise ValueError(
            f"cannot fingerprint weights on the meta device ({label}): the accelerate hook that "
            f"offloads them has no {source[1]!r} in its weights_map, so a forward could not load them either"
        )
    raise ValueError(
        f"cannot fingerprint weights on the meta device ({label}): they have no values, and no "
        "accelerate offload hook holds any for them (a model made on the meta device, e.g. under "
        "init_empty_weights, and never loaded); load its weights, or dispatch it with accelerate, first"
    )


def _with_adapter_settings(tensor_digest: Any, modules: Sequence[nn.Module]) -> str:
    """`weights_hash` from the tensors' digest (left unchanged): the adapter settings added."""
    digest = tensor_digest.copy()
    for index, module in enumerate(modules):
        digest.update(f"{index}|adapters|{_adapter_settings(list(module.named_modules()))!r}".encode())
    return digest.hexdigest()


# Hooks and adapter settings are plain attributes: read from __dict__, which skips
# nn.Module.__getattr__'s slow miss on the many modules that lack them.


def _placed_by_hook(parts: list[tuple[str, nn.Module]]) -> bool:
    """True when accelerate hooks place the weights of a module, given its `named_modules()`
    (`enable_model_cpu_offload`)."""
    return any(part.__dict__.get("_hf_hook") is not None for _, part in parts)


def _adapter_settings(parts: list[tuple[str, nn.Module]]) -> tuple:
    """The settings of peft adapter layers among a module's `named_modules()` that change its
    output without touching a weight: each layer's scaling per adapter, active adapters,
    merged adapters, and whether adapters are disabled (`set_adapters`, `scale_layer`,
    `disable_adapter_layers`)."""
    settings = []
    for name, part in parts:
        scaling = part.__dict__.get("scaling")
        if isinstance(scaling, dict) and hasattr(part, "active_adapters"):
            settings.append(
                (
                    name,
                    tuple(sorted(scaling.items())),
                    tuple(part.active_adapters),
                    tuple(getattr(part, "merged_adapters", ())),
                    bool(getattr(part, "disable_adapters", False)),
                )
            )
    return tuple(settings)


class WeightsWatch:
    """Watches the weights of `modules` for replacement or in-place change."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self._modules = list(modules)
        self._refs: list[weakref.ref] = []
        self._generation = 0
        self._hash_state: tuple | None = None
        self._hash: str | None = None
        self._tensor_digest_state: tuple | None = None
        self._tensor_digest: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Weak references cannot be pickled. With none, a copy's first `state()` sees new tensor
        # objects and starts a new generation, so its first `content_hash()` reads the weights.
        state["_refs"] = []
        return state

    def state(self) -> tuple:
        """A token equal between two calls if and only if no weight was replaced or written
        (and `mark_written` was not called)."""
        tensors: list[torch.Tensor] = []
        marks: list[tuple] = []
        adapters = []
        stats: dict[str, os.stat_result] = {}
        for module in self._modules:
            parts = list(module.named_modules())
            placed_by_hook = _placed_by_hook(parts)
            adapters.append(_adapter_settings(parts))
            all_parts: dict[str, nn.Module] | None = None  # built on the first meta tensor
            offloaded: set[str] = set()  # weights marked where their hook keeps them
            for path, tensor in _watched_tensors(parts):
                if path in offloaded:  # another inner tensor of a quantized weight marked whole
                    continue
                if tensor.device.type == "meta" and placed_by_hook:
                    # Offloaded: the hook makes a new meta tensor after each forward; watch
                    # the values it loads, where they are.
                    if all_parts is None:
                        all_parts = dict(module.named_modules(remove_duplicate=False))
                    source = _offload_source(all_parts, path)
                    if source is not None:
                        mark, holders = _source_mark(source, stats)
                        marks.append((tensor.dtype, mark))  # the hook casts the values to it
                        tensors.extend(holders)
                        offloaded.add(path)
                        continue
                tensors.append(tensor)
                # A hook moves the weights for each forward and back after: their storage
                # changes on every call while their values do not.
                where = (tensor.dtype, tensor.device) if placed_by_hook else tensor.data_ptr()
                marks.append((tensor._version, where))
        same_objects = len(tensors) == len(self._refs) and all(
            ref() is tensor for ref, tensor in zip(self._refs, tensors)
        )
        if not same_objects:
            # New tensor objects: start a new generation, so a recycled id() can never match.
            self._generation += 1
            self._refs = [weakref.ref(tensor) for tensor in tensors]
        return (self._generation, tuple(marks), tuple(adapters))

    def mark_written(self) -> None:
        """Note that the weights were written in a way `state()` cannot see (through `.data`,
        which bumps no version counter: peft's merge and unmerge, so diffusers' `fuse_lora`,
        `unfuse_lora` and an `unload_lora_weights` that puts back merged weights): `state()`
        and `content_hash()` change from here on."""
        self._generation += 1

    def content_hash(self) -> str:
        """`weights_hash` of the modules, recomputed only when `state()` changed; the bytes are
        read again only when a weight may have changed, not when only an adapter's scale or
        activity did (a call's LoRA scale, set and undone around every encode). A merge or
        unmerge (peft writes through `.data`) reads them again, as any other state change."""
        state = self.state()
        if self._hash is None or state != self._hash_state:
            merged = tuple(tuple(layer[3] for layer in module) for module in state[2])
            weights_state = (*state[:2], merged)  # generation, version marks, merged adapters
            if self._tensor_digest is None or weights_state != self._tensor_digest_state:
                self._tensor_digest = _tensor_digest(self._modules)
                self._tensor_digest_state = weights_state
            self._hash = _with_adapter_settings(self._tensor_digest, self._modules)
            self._hash_state = state
        return self._hash
