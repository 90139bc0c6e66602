"""Text encoders over transformers models: which hidden state, which pooled vector.

A `TextEncoder` pairs a transformers model with its tokenizer and knows its kind (CLIP or
T5). The forward helpers read the hidden state a recipe asks for without copying weights.

An encoder may run in a dtype other than the one its states are returned in
(`compute_dtype`): T5 in float16 overflows (activations beyond 65504 turn into NaN,
diffusers #8604), so it can compute in float32 and hand float16 states on. The model object
is shared (a pipeline's own encoder), so it is never cast: each encode runs on a copy of its
weights in the compute dtype and puts the weights back after (`weights_in`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

EncoderKind = Literal["clip", "t5"]

_CLIP_MODEL_TYPES = ("clip_text_model", "clip")
_T5_MODEL_TYPES = ("t5", "umt5", "mt5", "t5gemma")


def encoder_kind(model: nn.Module) -> EncoderKind:
    """ "clip" or "t5" from the model's config; a TypeError for anything else."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _CLIP_MODEL_TYPES:
        return "clip"
    if model_type in _T5_MODEL_TYPES:
        return "t5"
    raise TypeError(
        f"text encoder must be a transformers CLIP text model or T5 encoder, got {type(model).__name__} "
        f"(config.model_type={model_type!r})"
    )


@contextmanager
def weights_in(module: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, `module` computes on `dtype` copies of its floating parameters and
    buffers; after it, every parameter and buffer is the tensor object it was, holding the
    storage, dtype and device it held (nothing written: no version bump, no new storage).

    Without grad the copies replace each tensor's `.data`, so hooks that hold the parameter
    objects see them: accelerate's offloading moves them for the forward (model offload) or
    loads its kept values in their dtype (sequential and disk offload, whose weights rest on
    the meta device). With grad the copies are differentiable casts put in the module's slots,
    so gradients reach the weights, in their own dtype. A weight shared by two modules (T5's
    tied embedding) gets one copy. None, or a module already all in `dtype`: nothing happens.
    """
    if dtype is None:
        yield
        return
    with _SWAPPING:
        yield from _computing_on_copies(module, dtype)


# Held while any weights are swapped: two threads encoding with one model (a server's threads
# sharing a conditioner, or two conditioners over one pipeline's encoder) would each take the
# other's copies for the originals and leave the model in the compute dtype. One lock for all
# modules, since a module's parts (the CLIP's text projection) are swapped on their own too.
# Reentrant: a part may be swapped inside its model's block.
_SWAPPING = threading.RLock()


def _computing_on_copies(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """`weights_in`'s body, under `_SWAPPING`."""
    # (slots, name, tensor, its data): every tensor of every part, to put back exactly as it was
    # (a hook may replace a slot's tensor or move it: model offload moves the int buffers too).
    held = [
        (slots, name, tensor, tensor.data)
        for part in module.modules()
        for slots in (part._parameters, part._buffers)
        for name, tensor in slots.items()
        if tensor is not None
    ]
    differentiable = torch.is_grad_enabled()
    copies: dict[int, torch.Tensor] = {}  # id of a weight -> its copy
    try:
        for slots, name, tensor, data in held:
            copy = copies.get(id(tensor))
            if copy is None:
                if not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                copy = copies[id(tensor)] = (tensor if differentiable else data).to(dtype)
            if differentiable:
                slots[name] = copy
            else:
                tensor.data = copy
        yield
    finally:
        for slots, name, tensor, data in held:
            slots[name] = tensor
            tensor.data = data


def weights_quantization(model: nn.Module) -> str | None:
    """What quantized `model`'s weights, or None when they are plain floating tensors that a
    cast can copy (`weights_in`). Read from the weights: a tensor subclass (torchao's
    `quantize_`, or `TorchAoConfig`), a parameter class of its own (bitsandbytes' `Int8Params`
    and `Params4bit`, loaded by transformers or put in by hand), or an integer parameter (packed
    blocks: GGUF kept packed). transformers' quantizer counts too, as some keep their weights
    in buffers of their own modules (GPTQ, AWQ), except the ones that may leave plain weights:
    GGUF (dequantized on load unless packed) and a config with ``dequantize=True``."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not _may_leave_plain_weights(quantizer):
        return type(quantizer).__name__
    for parameter in model.parameters():
        if type(parameter.data) is not torch.Tensor:
            return type(parameter.data).__name__
        if type(parameter) not in (nn.Parameter, torch.Tensor):
            return type(parameter).__name__
        if not (parameter.is_floating_point() or parameter.is_complex()):
            return f"{parameter.dtype} weights"
    return None


def _may_leave_plain_weights(quantizer: Any) -> bool:
    """Whether transformers' `quantizer` may have dequantized the weights on load (the
    weights then say whether they are quantized)."""
    config = getattr(quantizer, "quantization_config", None)
    return getattr(config, "quant_method", None) == "gguf" or getattr(config, "dequantize", False) is True


# transformers' `PreTrainedModel.to` refuses a new dtype for models quantized with these.
_DTYPE_FIXED_BY = ("bitsandbytes", "gptq", "quark")


def dtype_to_cast(model: nn.Module, dtype: torch.dtype | None, name: str) -> torch.dtype | None:
    """The dtype to pass to ``model.to`` for `TextConditioner.to(dtype)`: `dtype`, or
    None when there is nothing to cast (no `dtype`, or every floating parameter and buffer is
    in it already). A ValueError naming the encoder (`name`, such as "clip[1]") when `model`
    is quantized with a method whose models transformers will not cast (bitsandbytes, GPTQ,
    Quark: `PreTrainedModel.to` raises), so that the caller can refuse before moving any."""
    if dtype is None:
        return None
    floating = [tensor for tensor in (*model.parameters(), *model.buffers()) if tensor.is_floating_point()]
    if all(tensor.dtype == dtype for tensor in floating):
        return None
    method = getattr(model, "quantization_method", None)
    if method in _DTYPE_FIXED_BY:  # a `QuantizationMethod`, a str enum
        raise ValueError(
            f"`dtype` ({dtype}) cannot be given to {name} ({type(model).__name__}): it is quantized with "
            f"{getattr(method, 'value', method)}, and transformers does not cast such a model; load it with "
            f"`torch_dtype={dtype}` instead, or cast the other encoders yourself. Nothing has moved"
        )
    return dtype


@dataclass(eq=False)
class TextEncoder:
    """A transformers text model with its tokenizer.

    Attributes:
        model: `CLIPTextModel`, `CLIPTextModelWithProjection` or `T5EncoderModel` (used as is,
            quantized ones included: torchao, bitsandbytes).
        tokenizer: the matching transformers tokenizer.
        compute_dtype: a floating dtype to run the model in, or None (its own). Each encode
            runs on a copy of the weights in it (`weights_in`: for float16 to float32, twice
            the weights' bytes beside them while it runs), and the states are returned in the
            weights' dtype, `dtype`. The model itself is left as it is: a pipeline sharing it
            computes in its own dtype. Models whose weights are quantized are refused
            (`weights_quantization`: they cannot be cast); a GGUF model dequantized on load is not.
        kind: "clip" or "t5", read from the model config.
    """

    model: nn.Module
    tokenizer: Any
    compute_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(self.model).__name__}")
        if self.tokenizer is None or not callable(self.tokenizer):
            raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(self.tokenizer).__name__}")
        self.kind: EncoderKind = encoder_kind(self.model)
        if self.compute_dtype is not None:
            self._check_compute_dtype()

    def _check_compute_dtype(self) -> None:
        dtype = self.compute_dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`compute_dtype` must be a floating torch.dtype such as torch.float32, got {dtype!r}")
        quantized = weights_quantization(self.model)
        if quantized is not None and dtype != self.weights_dtype:
            raise ValueError(
                f"`compute_dtype` ({dtype}) runs {type(self.model).__name__} on a copy of its weights cast to it, but "
                f"the model is quantized ({quantized}) and cannot be cast; load it with `torch_dtype={dtype}` instead"
            )

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Within the block the model computes in `computes_in` (`weights_in`); it is as it
        was after."""
        with weights_in(self.model, self.compute_dtype):
            yield

    @property
    def width(self) -> int:
        """Width of the per-token hidden states."""
        config = self.model.config
        return config.hidden_size if self.kind == "clip" else config.d_model

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        config = self.model.config
        return config.num_hidden_layers if self.kind == "clip" else config.num_layers

    @property
    def window_length(self) -> int:
        """Tokens per CLIP window: the tokenizer's length, capped by the position embeddings."""
        limit = getattr(self.model.config, "max_position_embeddings", 77)
        return min(int(self.tokenizer.model_max_length), int(limit))

    @property
    def pooled_width(self) -> int:
        """Width of the pooled vector: the projection width when the model has a projection."""
        if self.pooled_projection is not None:
            return self.model.config.projection_dim
        return self.width

    @property
    def pooled_projection(self) -> nn.Module | None:
        """The model's `text_projection` (CLIP with projection: SDXL's and SD3's second
        encoder), which makes the pooled vector from the pooled state; None without one.
        Records hold the pooled state, and assembly applies this to a call's rows
        (`clipcond.assembly`): its matrix product rounds differently with the number of rows,
        so it runs over the batches diffusers runs it over."""
        projection = getattr(self.model, "text_projection", None)
        return projection if isinstance(projection, nn.Module) else None

    def project_pooled(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, width) pooled states -> (rows, pooled_width) pooled vectors: through the
        model's `text_projection`, in the dtype the model computes in (the states as they are
        without one)."""
        projection = self.pooled_projection
        if projection is None:
            return states
        # Where its weights are: a cache hit under model offload projects on the CPU, without
        # bringing the encoder back to the GPU. Weights on the meta device are placed by a hook
        # (sequential offload), which also moves the input.
        weight = next(projection.parameters(), None)
        where = states.device if weight is None or weight.device.type == "meta" else weight.device
        with weights_in(projection, self.compute_dtype):
            projected = projection(states.to(device=where, dtype=self.computes_in))
        return self.as_states(projected).to(states.device)

    @property
    def device(self) -> torch.device:
        """Where the model computes: the execution device of an accelerate hook placing its
        weights (`enable_model_cpu_offload`, `enable_sequential_cpu_offload`, whose weights
        wait on the CPU or the meta device), else the device of its first parameter."""
        first = next(self.model.parameters()).device
        # Model offload hooks the model itself; sequential offload hooks its layers and leaves
        # the weights on the meta device. Only then are the layers searched (this runs per
        # prompt on cache hits: a CLIP-G has ~400 modules).
        hooks = [self.model] if first.type != "meta" else self.model.modules()
        for module in hooks:
            execution = getattr(module.__dict__.get("_hf_hook"), "execution_device", None)
            if execution is not None:
                return torch.device(execution)
        return first

    @property
    def weights_dtype(self) -> torch.dtype:
        """Dtype of the model's first floating parameter (what its weights are stored in); read
        once no other thread computes on copies of the weights (`weights_in`)."""
        with _SWAPPING:
            for parameter in self.model.parameters():
                if parameter.is_floating_point():
                    return parameter.dtype
        return torch.float32

    @property
    def computes_in(self) -> torch.dtype:
        """Dtype the model computes in: `compute_dtype`, else its weights'."""
        return self.compute_dtype if self.compute_dtype is not None else self.weights_dtype

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the states it returns: the weights' dtype (`compute_dtype` or not)."""
        return self.weights_dtype

    @property
    def pooled_state_dtype(self) -> torch.dtype:
        """Dtype of the pooled state `run_clip` returns and records hold: `dtype`, except before
        a `pooled_projection`, where it is the dtype the model computes in (they differ only under
        `compute_dtype`): the projection reads the unrounded state and its output alone is
        rounded to `dtype`, as a run in the compute dtype would be."""
        return self.computes_in if self.pooled_projection is not None else self.dtype

    def as_states(self, output: torch.Tensor) -> torch.Tensor:
        """`output` of the model in the dtype of its states (`dtype`); the same tensor when
        they already agree."""
        return output.to(self.dtype)

    @property
    def uses_attention_mask(self) -> bool:
        """CLIP models trained with a padding mask say so in their config (as diffusers checks)."""
        return bool(getattr(self.model.config, "use_attention_mask", False))


def clip_final_layer_norm(model: nn.Module) -> nn.Module:
    """The CLIP final layer norm, in transformers 4 (`model.text_model`) and 5 layouts alike."""
    return getattr(model, "text_model", model).final_layer_norm


def run_clip(
    encoder: TextEncoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer_from_end: int,
    final_norm: bool,
    want_tokens: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run a CLIP text model over windows of token ids.

    Args:
        encoder: a CLIP `TextEncoder`.
        input_ids: (windows, length) token ids.
        attention_mask: (windows, length) or None.
        layer_from_end: hidden state to return, counted from the end (1 = last layer).
        final_norm: apply the final layer norm to that hidden state.
        want_tokens: False when only the pooled vector is needed (saves the hidden states).

    Returns:
        tokens: (windows, length, width) or None; pooled: (windows, width), the pooled state
        (`pooler_output`; for models with a projection, what the model feeds its
        `text_projection`, so that the projection can run later over other rows:
        `TextEncoder.pooled_projection`), in `TextEncoder.pooled_state_dtype`.
    """
    model = encoder.model
    plain_last = layer_from_end == 1 and final_norm
    projection = encoder.pooled_projection
    pooled_states: list[torch.Tensor] = []
    # The model's own pooling (its EOS rule) and its hooks (offloading) run as they do for
    # diffusers; the pooled state is read where it enters the projection. The hook sits on the
    # shared module: it keeps only this thread's calls, not those of another thread encoding
    # with the same model meanwhile (another request, the pipeline's own text path).
    thread = threading.get_ident()

    def keep_pooled_state(_, args) -> None:
        if threading.get_ident() == thread:
            pooled_states.append(args[0])

    hook = None if projection is None else projection.register_forward_pre_hook(keep_pooled_state)
    try:
        with encoder.computing():
            output = model(
                input_ids, attention_mask=attention_mask, output_hidden_states=want_tokens and not plain_last
            )
            tokens = None
            if want_tokens:
                tokens = output.last_hidden_state if plain_last else output.hidden_states[-layer_from_end]
                if final_norm and not plain_last:
                    tokens = clip_final_layer_norm(model)(tokens)
    finally:
        if hook is not None:
            hook.remove()
    # A pooled state stays in the dtype the model computes in until its projection reads it
    # (`pooled_state_dtype`): rounding it to the states' dtype first would round twice.
    pooled = (
        pooled_states[-1].to(encoder.pooled_state_dtype)
        if projection is not None
        else encoder.as_states(output.pooler_output)
    )
    return (None if tokens is None else encoder.as_states(tokens)), pooled


def run_t5(encoder: TextEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Run a T5 encoder: (batch, length) ids -> (batch, length, width) last hidden state, in
    the encoder's `dtype`."""
    with encoder.computing():
        states = encoder.model(input_ids, attention_mask=attention_mask)[0]
    return encoder.as_states(states)
