"""OpenAI CLIP, open_clip and Long-CLIP ViT checkpoints -> the transformers `CLIPModel` layout.

Both use OpenAI's key names (`visual.conv1.weight`, `transformer.resblocks.N.attn.in_proj_weight`,
...). open_clip's `CustomTextCLIP` keeps the text tower in a submodule, so its text keys carry
a `text.` prefix (`text.token_embedding.weight`, `text.transformer.resblocks.N...`); the prefix
is removed first. The sizes are read from the tensor shapes; only the head counts and the
activation are not stored anywhere.

Head counts, unless given: `clipcond.models.attention_heads` (OpenAI's rules, checked against
every ViT config open_clip 3.3.0 ships).

What the key layout cannot show, and so is not supported: open_clip's text `pool_type` other than
`argmax` (`first`, `last`, or `eos` with an id other than 49407), `no_causal_mask`, and the vision
`pool_type` `avg` / `none` (transformers' CLIPModel pools the text at the first
`<|endoftext|>` under a causal mask and the image at the class token). What it does show is
refused: a vocabulary other than CLIP's 49408 BPE tokens (open_clip's `*-worldwide` and CLIPA
text towers: the saved tokenizer is CLIP's), a missing `visual.ln_pre` (CLIPA's `no_ln_pre`),
tensors with no place in a CLIPModel (`ls_init_value`, attention pooling, `proj_bias`, ...), and a
tensor whose shape disagrees with the sizes read from the others (a damaged checkpoint).

What changes on the way:
- `attn.in_proj_weight` / `in_proj_bias` stack q, k, v on the first axis; transformers keeps
  three separate `q_proj` / `k_proj` / `v_proj` linears.
- `visual.proj` and `text_projection` are (width, embed) matrices applied as `x @ proj`;
  transformers' projections are `nn.Linear` weights, (embed, width): transposed.
- positional embeddings are raw parameters in OpenAI's layout and `nn.Embedding` weights here.
- Long-CLIP (github.com/beichenzbc/Long-CLIP, `model/model_longclip.py`) is OpenAI's layout with
  a 248-row text `positional_embedding` (the first 20 rows of the 77-row original, the rest
  stretched 4x) plus a trainable `positional_embedding_res` of the same shape. Its `encode_text`
  adds `positional_embedding * mask1 + positional_embedding_res * mask2`, where `mask1` is 1 on
  the first 20 positions and `mask2` on the rest: each position reads exactly one of the two
  tables. transformers has one table, so it is folded: rows 0-19 from `positional_embedding`,
  rows 20-247 from `positional_embedding_res`. Adding the folded row equals Long-CLIP's sum to
  the bit (the other table's row is multiplied by 0). The text context becomes 248.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from transformers import CLIPConfig

from clipcond.models.attention_heads import given_heads, text_heads_for_width, vision_heads_for_width
from clipcond.tokenization import CLIP_VOCAB_SIZE

# Non-tensor leftovers that OpenAI's TorchScript checkpoints carry (their `build_model` drops them too),
# and the causal mask that some open_clip versions store as a buffer (transformers builds its own).
_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

# open_clip `CustomTextCLIP`: the text tower's keys live under `text.`.
_TEXT_TOWER_PREFIX = "text."

# Long-CLIP keeps its original positions 0..19 ("knowledge-preserved stretching", mask1 in its
# `encode_text`) and reads `positional_embedding_res` from position 20 on.
LONG_CLIP_KEPT_POSITIONS = 20

_BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}


def convert_openai_state_dict(
    state_dict: dict[str, torch.Tensor],
    quick_gelu: bool = True,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Convert an OpenAI / open_clip / Long-CLIP ViT CLIP state dict for transformers' `CLIPModel`.

    Args:
        state_dict: the checkpoint's tensors under OpenAI key names; a `module.` prefix (from a
            DDP-wrapped open_clip training run) and a `text.` prefix on the text tower's keys
            (open_clip `CustomTextCLIP`) are removed. A Long-CLIP checkpoint (with
            `positional_embedding_res`) gets one folded position table, as its forward pass
            combines the two (see the module docstring).
        quick_gelu: True for OpenAI's models and open_clip's `*-quickgelu` ones (x * sigmoid(1.702 x));
            False for open_clip models trained with plain GELU. Nothing in the weights tells them apart.
        text_heads, vision_heads: attention heads; by default width // 64 for the text tower and
            `vision_heads_for_width(width)` for the image tower (the module docstring lists the
            open_clip configs these rules were checked against).

    Returns:
        (config, hf_state_dict): `CLIPModel(config).load_state_dict(hf_state_dict)` loads strictly.
        Sizes read from shapes: widths, layers, MLP widths, patch size, image size
        (patch * sqrt(positions - 1)), embed dim, context length. The vocabulary must be
        CLIP's 49408 BPE tokens; bos/eos are 49406 / 49407, so pooling at the first eos equals
        OpenAI's argmax over token ids.

    Raises:
        ValueError: a layout that does not convert, naming the key and the reason (a missing
            tensor, another vocabulary, CLIPA's missing `visual.ln_pre`, tensors left over, a
            tensor whose shape disagrees with the sizes the others give), or heads that do not
            divide their tower's width.
        TypeError: `text_heads` or `vision_heads` that is not an int.
    """
    source = _openai_keys(state_dict)
    _check_layout(source)

    # --- sizes, from shapes ---
    shape = _shape_reader(source)
    vision_width, _, _, patch_size = shape("visual.conv1.weight", "(vision width, 3, patch, patch)")
    positions, _ = shape("visual.positional_embedding", "(1 + grid * grid, vision width)")
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise ValueError("visual.positional_embedding must hold 1 + grid * grid positions for a square image")
    vision_layers = _count_blocks(source, "visual.transformer.resblocks.")
    vocab_size, text_width = shape("token_embedding.weight", "(vocabulary, text width)")
    if vocab_size != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"token_embedding.weight has {vocab_size} rows, not CLIP's BPE vocabulary of {CLIP_VOCAB_SIZE}: "
            "this text tower reads another tokenizer (as open_clip's *-worldwide and CLIPA models do) and "
            "pools at its own end token, while the converted folder gets CLIP's tokenizer and pools at "
            "<|endoftext|>; only CLIP-BPE text towers convert"
        )
    context_length, _ = shape("positional_embedding", "(context, text width)")
    text_layers = _count_blocks(source, "transformer.resblocks.")
    _, embed_dim = shape("text_projection", "(text width, embed dim)")
    text_mlp, _ = shape("transformer.resblocks.0.mlp.c_fc.weight", "(MLP width, text width)")
    vision_mlp, _ = shape("visual.transformer.resblocks.0.mlp.c_fc.weight", "(MLP width, vision width)")
    text_heads = given_heads(text_heads, text_width, "text") or text_heads_for_width(text_width)
    vision_heads = given_heads(vision_heads, vision_width, "vision") or vision_heads_for_width(vision_width)
    act = "quick_gelu" if quick_gelu else "gelu"
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": text_width,
            "intermediate_size": text_mlp,
            "projection_dim": embed_dim,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "max_position_embeddings": context_length,
            "hidden_act": act,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": vision_mlp,
            "projection_dim": embed_dim,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": grid * patch_size,
            "patch_size": patch_size,
            "hidden_act": act,
        },
        projection_dim=embed_dim,
    )

    # --- tensors, each of the shape the sizes above give it ---
    needed = _source_shapes(config)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in source:
            raise _missing(key)
        found = tuple(source[key].shape)
        if key in needed and found != needed[key]:
            raise ValueError(
                f"{key!r} has shape {found}, but the sizes the checkpoint's other tensors give need {needed[key]} "
                "(a damaged or mixed-up checkpoint)"
            )
        used.add(key)
        return source[key]

    if source["logit_scale"].numel() != 1:
        raise ValueError(f"'logit_scale' has shape {tuple(source['logit_scale'].shape)}; expected one number")
    out: dict[str, torch.Tensor] = {
        "logit_scale": take("logit_scale").reshape(()),
        # text
        "text_model.embeddings.token_embedding.weight": take("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": _text_positions(take, source),
        "text_model.final_layer_norm.weight": take("ln_final.weight"),
        "text_model.final_layer_norm.bias": take("ln_final.bias"),
        "text_projection.weight": take("text_projection").t(),
        # vision
        "vision_model.embeddings.patch_embedding.weight": take("visual.conv1.weight"),
        "vision_model.embeddings.class_embedding": take("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": take("visual.positional_embedding"),
        "vision_model.pre_layrnorm.weight": take("visual.ln_pre.weight"),  # sic: transformers' name
        "vision_model.pre_layrnorm.bias": take("visual.ln_pre.bias"),
        "vision_model.post_layernorm.weight": take("visual.ln_post.weight"),
        "vision_model.post_layernorm.bias": take("visual.ln_post.bias"),
        "visual_projection.weight": take("visual.proj").t(),
    }
    for layer in range(text_layers):
        out.update(_convert_block(take, f"transformer.resblocks.{layer}.", f"text_model.encoder.layers.{layer}."))
    for layer in range(vision_layers):
        out.update(
            _convert_block(take, f"visual.transformer.resblocks.{layer}.", f"vision_model.encoder.layers.{layer}.")
        )

    unused = sorted(set(source) - used)
    if unused:
        raise ValueError(
            f"{len(unused)} checkpoint tensors have no place in a transformers CLIPModel, e.g. {unused[:4]}; "
            "only OpenAI-layout ViT CLIP models are supported (not ResNet towers, attention-pooled or "
            "SigLIP-style open_clip variants)"
        )
    return config, {key: value.contiguous() for key, value in out.items()}


def _missing(key: str) -> ValueError:
    return ValueError(f"missing {key!r}, which every OpenAI-layout ViT CLIP has")


def _shape_reader(source: dict[str, torch.Tensor]) -> Callable[[str, str], tuple[int, ...]]:
    """`shape(key, layout)`: the shape of `source[key]`, refused (naming the key) unless it has as many
    dimensions as `layout` ("(context, text width)") names; the sizes are read from these shapes."""

    def shape(key: str, layout: str) -> tuple[int, ...]:
        if key not in source:
            raise _missing(key)
        found = tuple(source[key].shape)
        if len(found) != layout.count(",") + 1:
            raise ValueError(f"{key!r} has shape {found}; expected {layout}")
        return found

    return shape


def _source_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every OpenAI-layout tensor of a ViT CLIP with `config`'s sizes (not `logit_scale`,
    which is () or (1,), nor Long-CLIP's second table, which `_text_positions` checks): the layout
    `convert_openai_state_dict` reads."""
    text, vision, embed = config.text_config, config.vision_config, config.projection_dim
    text_width, vision_width, patch = text.hidden_size, vision.hidden_size, vision.patch_size
    grid = vision.image_size // patch
    shapes = {
        "token_embedding.weight": (text.vocab_size, text_width),
        "positional_embedding": (text.max_position_embeddings, text_width),
        "ln_final.weight": (text_width,),
        "ln_final.bias": (text_width,),
        "text_projection": (text_width, embed),
        "visual.conv1.weight": (vision_width, 3, patch, patch),
        "visual.class_embedding": (vision_width,),
        "visual.positional_embedding": (1 + grid * grid, vision_width),
        "visual.proj": (vision_width, embed),
    }
    for norm in ("visual.ln_pre", "visual.ln_post"):
        shapes.update({f"{norm}.weight": (vision_width,), f"{norm}.bias": (vision_width,)})
    for prefix, tower in (("transformer.resblocks.", text), ("visual.transformer.resblocks.", vision)):
        width, mlp = tower.hidden_size, tower.intermediate_size
        vectors = ("attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "mlp.c_proj.bias")
        block = {key: (width,) for key in vectors}
        block.update({"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,)})  # q, k, v
        block.update({"attn.out_proj.weight": (width, width), "mlp.c_fc.bias": (mlp,)})
        block.update({"mlp.c_fc.weight": (mlp, width), "mlp.c_proj.weight": (width, mlp)})
        for layer in range(tower.num_hidden_layers):
            shapes.update({f"{prefix}{layer}.{key}": value for key, value in block.items()})
    return shapes


def _text_positions(take: Callable[[str], torch.Tensor], source: dict[str, torch.Tensor]) -> torch.Tensor:
    """(context, text_width) position table: OpenAI's as it is, Long-CLIP's two folded into one."""
    table = take("positional_embedding")
    if "positional_embedding_res" not in source:
        return table
    stretched = take("positional_embedding_res")
    if stretched.shape != table.shape or table.shape[0] <= LONG_CLIP_KEPT_POSITIONS:
        raise ValueError(
            f"Long-CLIP's positional_embedding_res has shape {tuple(stretched.shape)} and positional_embedding "
            f"{tuple(table.shape)}; expected the same (context, width) shape with more than "
            f"{LONG_CLIP_KEPT_POSITIONS} positions (248 in Long-CLIP's checkpoints)"
        )
    kept = LONG_CLIP_KEPT_POSITIONS
    return torch.cat([table[:kept], stretched[kept:]])  # (context, text_width)


def _convert_block(take: Callable[[str], torch.Tensor], prefix: str, target: str) -> dict[str, torch.Tensor]:
    """One residual attention block: split the stacked q/k/v, rename the rest."""
    out = {}
    for suffix in ("weight", "bias"):
        query, key, value = take(f"{prefix}attn.in_proj_{suffix}").chunk(3, dim=0)
        out[f"{target}self_attn.q_proj.{suffix}"] = query
        out[f"{target}self_attn.k_proj.{suffix}"] = key
        out[f"{target}self_attn.v_proj.{suffix}"] = value
    for name, new_name in _BLOCK_RENAMES.items():
        out[target + new_name] = take(prefix + name)
    return out


def _openai_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under OpenAI's plain key names, without the keys that carry no weights."""
    out: dict[str, torch.Tensor] = {}
    for original, value in state_dict.items():
        key = original[len("module.") :] if original.startswith("module.") else original
        if key.startswith(_TEXT_TOWER_PREFIX):
            key = key[len(_TEXT_TOWER_PREFIX) :]
        if key in _IGNORED_KEYS:
            continue
        if key in out:
            raise ValueError(f"{original!r} and another key both mean {key!r}; the state dict mixes two layouts")
        out[key] = value
    return out


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"expected residual blocks {prefix}0, {prefix}1, ...; found indices {sorted(indices)}")
    return len(indices)


# how a transformers CLIP's keys start: CLIPModel's towers, and a lone tower saved by transformers
# 5 (a CLIPTextModel's own keys, as in an SD folder's text_encoder/model.safetensors)
_TRANSFORMERS_KEY_STARTS = (
    "text_model.",
    "vision_model.",
    "embeddings.token_embedding.",
    "embeddings.patch_embedding.",
    "encoder.layers.",
)


def _check_layout(state_dict: dict[str, torch.Tensor]) -> None:
    required = (
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "logit_scale",
    )
    missing = [key for key in required if key not in state_dict]
    if not missing and "visual.ln_pre.weight" not in state_dict:
        raise ValueError(
            "missing 'visual.ln_pre.weight': an open_clip CLIPA model (no_ln_pre, and its towers pool "
            "by average and at the last token), which a transformers CLIPModel cannot hold; it does not convert"
        )
    if missing:
        hint = ""
        if "visual.layer1.0.conv1.weight" in state_dict:
            hint = " (this is a ResNet CLIP; only ViT checkpoints convert to CLIPModel)"
        elif any(key.startswith(_TRANSFORMERS_KEY_STARTS) for key in state_dict):
            hint = " (this already is a transformers CLIPModel state dict)"
        raise ValueError(f"not an OpenAI / open_clip ViT CLIP state dict: missing {missing}{hint}")
