"""Tiny, seeded diffusers pipelines of every supported family, built from configs.

Sizes follow diffusers' own `get_dummy_components` in spirit: every model is a few layers of
width 32 or less (SD3's CLIP-G and T5, 48 and 96, keep SD3's layout of widths), so building,
saving and reloading all of them takes seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
)
from transformers.initialization import no_init_weights

from clipcond.tokenization import clip_tokenizer
from clipcond.tokenizer_fingerprint import tokenizer_fingerprint

WIDTH = 32


def copy_sharing_tokenizers(parts: dict) -> dict:
    """`copy.deepcopy(parts)` (a pipeline's components by name) but for its tokenizers, which the
    copy shares with `parts`: a CLIP tokenizer's deep copy writes its backend to JSON and parses
    it back (about 0.15 s here). For tests that leave the
    tokenizers as they are; `shared_tokenizers_kept` checks that they did."""
    memo = {id(part): part for part in parts.values() if isinstance(part, PreTrainedTokenizerBase)}
    return copy.deepcopy(parts, memo)


def tokenizer_fingerprints_of(parts: dict) -> dict[str, str]:
    """`tokenizer_fingerprint` of each tokenizer among `parts`, by name."""
    return {
        name: tokenizer_fingerprint(part) for name, part in parts.items() if isinstance(part, PreTrainedTokenizerBase)
    }


@contextlib.contextmanager
def shared_tokenizers_kept(parts: dict, before: dict[str, str] | None = None) -> Iterator[None]:
    """Fail after the block if it changed a tokenizer of `parts` (their fingerprints, or
    `before`, taken earlier): a test that shares them (`copy_sharing_tokenizers`) must not."""
    before = tokenizer_fingerprints_of(parts) if before is None else before
    yield
    changed = sorted(
        name for name, fingerprint in tokenizer_fingerprints_of(parts).items() if before[name] != fingerprint
    )
    assert not changed, f"a test changed the shared tokenizer(s) {changed}: give it a deep copy of its own"


def clip_text_config(**overrides) -> CLIPTextConfig:
    """A CLIP text config with the real vocabulary and window, tiny otherwise."""
    values = dict(
        vocab_size=49408,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=WIDTH,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    values.update(overrides)
    return CLIPTextConfig(**values)


# (class, seed, overrides) -> the weights `clip_text_model` drew, and the random state after it
_DRAWN_CLIP_WEIGHTS: dict[tuple, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}


def clip_text_model(seed: int, with_projection: bool = False, **overrides):
    """A tiny CLIP text model (`clip_text_config`) with transformers' initialisation seeded by
    `seed`. Drawing its 49408-token embedding is most of the time of building one, so a
    process draws each (class, seed, overrides) once: later calls build the model without
    initialising it, copy the weights drawn then into it, and leave torch's random state as
    the draw left it. The model and its tensors are new each time."""
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    config = clip_text_config(**overrides)
    key = (model_class, seed, tuple(sorted(overrides.items())))
    if key not in _DRAWN_CLIP_WEIGHTS:
        torch.manual_seed(seed)
        model = model_class(config)
        _DRAWN_CLIP_WEIGHTS[key] = ({name: t.clone() for name, t in model.state_dict().items()}, torch.get_rng_state())
        return model.eval()
    weights, random_state = _DRAWN_CLIP_WEIGHTS[key]
    with no_init_weights():
        model = model_class(config)
    model.load_state_dict(weights)
    torch.set_rng_state(random_state)
    return model.eval()


def captions(count: int = 2000, seed: int = 0) -> list[str]:
    """Simple English captions to train the tiny T5 tokenizer on."""
    rng = random.Random(seed)
    colors = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "grey"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "rectangle", "cat", "dog", "house", "tree"]
    relations = ["to the left of", "to the right of", "above", "below", "next to", "behind"]
    extras = ["a photo of", "a painting of", "an astronaut riding a horse", "a lighthouse at dusk", "blurry"]
    return [
        f"{rng.choice(extras)} a {rng.choice(['small', 'large', ''])} {rng.choice(colors)} {rng.choice(shapes)} "
        f"{rng.choice(relations)} {rng.choice(['a', 'two', 'three'])} {rng.choice(colors)} {rng.choice(shapes)}s"
        for _ in range(count)
    ]


def save_t5_tokenizer(path: Path) -> Path:
    """Train a tiny SentencePiece-unigram T5-style tokenizer locally and save it to `path`.

    Special tokens follow T5: <pad>=0, </s>=1, <unk>=2; "</s>" ends every sequence.
    """
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    trained = SentencePieceUnigramTokenizer()
    trained.train_from_iterator(
        captions(), vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend = trained._tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512
    )
    tokenizer.save_pretrained(path)
    return path


def t5_encoder(seed: int, vocab_size: int, width: int = WIDTH) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def _t5_tokenizer(t5_tokenizer_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(t5_tokenizer_path)


def _small_vae(**overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    values = dict(
        block_out_channels=(4,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
    )
    values.update(overrides)
    return AutoencoderKL(**values)


def sd_components(unet_in_channels: int = 4) -> dict:
    """Fresh tiny SD 1.x components (seeded): `unet`, `vae`, `scheduler` (a default
    `DDIMScheduler`, whose config has `steps_offset: 0` and `clip_sample: true`, as SD
    checkpoints of 2022 do), `text_encoder`, `tokenizer`. `unet_in_channels=9`: an inpainting
    UNet (latents, mask, masked image's latents: 4 + 1 + 4), as SD's inpainting checkpoints."""
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    unet = _two_level_unet((4, 8), 32, unet_in_channels, 4, norm_num_groups=2)
    return dict(
        unet=unet,
        vae=_small_vae(),
        scheduler=DDIMScheduler(),
        text_encoder=clip_text_model(1),
        tokenizer=clip_tokenizer(),
    )


def build_sd():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def build_clip_t5_custom(sd, t5_tokenizer_path: Path):
    """A `CLIPConditionedPipeline` of recipe "custom" over `sd`'s UNet, VAE and CLIP, with a T5
    (seed 3) as its `text_encoder_2`: CLIP tokens, then T5 tokens on the sequence axis."""
    from clipcond import CLIPConditionedPipeline

    tokenizer_2 = _t5_tokenizer(t5_tokenizer_path)
    return CLIPConditionedPipeline.from_pipe(
        sd, text_encoder_2=t5_encoder(3, len(tokenizer_2)), tokenizer_2=tokenizer_2, recipe="custom"
    )


def build_sd_inpaint():
    """A StableDiffusionInpaintPipeline over the tiny SD components with a 9-channel inpainting UNet."""
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(
        **sd_components(unet_in_channels=9), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def build_sdxl(unet_in_channels: int = 4, open_clip_width: int | None = None):
    """A tiny StableDiffusionXLPipeline (seeded); `unet_in_channels=9`: an inpainting UNet.
    `open_clip_width`: the second encoder's width (and projection), as SDXL's OpenCLIP-G is
    wider than its CLIP-L (1280 and 768); None: both `WIDTH` wide."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    second_width = WIDTH if open_clip_width is None else open_clip_width
    widen = {} if open_clip_width is None else dict(hidden_size=open_clip_width, projection_dim=open_clip_width)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + second_width,
        cross_attention_dim=WIDTH + second_width,
        norm_num_groups=2,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_small_vae(),
        scheduler=EulerDiscreteScheduler(),
        text_encoder=clip_text_model(1),
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_model(2, with_projection=True, **widen),
        tokenizer_2=clip_tokenizer(pad_token="!"),
    )


def sdxl_refiner_components(unet_in_channels: int = 4) -> dict:
    """An SDXL refiner's components: one CLIP with projection (`text_encoder_2`; `text_encoder`
    and `tokenizer` None) and a UNet whose added embedding reads 5 time ids (the aesthetic
    score instead of the target size); VAE and scheduler as `build_sdxl`'s."""
    from diffusers import UNet2DConditionModel

    base = build_sdxl()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **{
            **base.unet.config,
            "in_channels": unet_in_channels,
            "projection_class_embeddings_input_dim": 5 * 8 + WIDTH,
            "cross_attention_dim": WIDTH,
        }
    )
    return dict(
        unet=unet,
        scheduler=base.scheduler,
        vae=base.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2,
    )


SD3_CLIP_G_WIDTH = 48
SD3_JOINT_WIDTH = 96


def build_sd3(t5_tokenizer_path: Path):
    """A tiny StableDiffusion3Pipeline (seeded) with SD3's layout of widths: CLIP-L (WIDTH) <
    CLIP-G (SD3_CLIP_G_WIDTH) and a T5 / joint width (SD3_JOINT_WIDTH) above their sum, as
    768 < 1280 and 4096 > 2048 in SD3. diffusers pads the joined CLIP tokens to the joint
    width, so CLIP-G's token states reach `prompt_embeds` (at a joint width under the sum that
    pad is negative and crops them away); the pooled vector is WIDTH + SD3_CLIP_G_WIDTH wide."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer_3 = _t5_tokenizer(t5_tokenizer_path)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=WIDTH,
        joint_attention_dim=SD3_JOINT_WIDTH,
        pooled_projection_dim=WIDTH + SD3_CLIP_G_WIDTH,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_small_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text_model(1, with_projection=True),
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_model(
            2, with_projection=True, hidden_size=SD3_CLIP_G_WIDTH, projection_dim=SD3_CLIP_G_WIDTH
        ),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=t5_encoder(3, len(tokenizer_3), width=SD3_JOINT_WIDTH),
        tokenizer_3=tokenizer_3,
    )


def build_flux(t5_tokenizer_path: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer_2 = _t5_tokenizer(t5_tokenizer_path)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        axes_dims_rope=[4, 4, 8],
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_small_vae(
            latent_channels=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        text_encoder=clip_text_model(1),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(2, len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
    )


def build_pixart(t5_tokenizer_path: Path):
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = _t5_tokenizer(t5_tokenizer_path)
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=WIDTH,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        transformer=transformer,
        vae=_small_vae(),
        scheduler=DDIMScheduler(),
        text_encoder=t5_encoder(1, len(tokenizer)),
        tokenizer=tokenizer,
    )


def build_family(family: str, t5_tokenizer_path: Path):
    """The tiny pipeline of `family` ("sd", "sdxl", "sd3", "flux" or "pixart"), progress bars off."""
    builders = {
        "sd": build_sd,
        "sdxl": build_sdxl,
        "sd3": lambda: build_sd3(t5_tokenizer_path),
        "flux": lambda: build_flux(t5_tokenizer_path),
        "pixart": lambda: build_pixart(t5_tokenizer_path),
    }
    pipe = builders[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixel_space_unet(seed: int, in_channels: int = 3):
    """A tiny UNet2DConditionModel on 16x16 pixels (3 output channels) reading WIDTH-wide tokens."""
    torch.manual_seed(seed)
    return _two_level_unet((8, 16), 16, in_channels, 3, norm_num_groups=4)


def _two_level_unet(channels: tuple[int, int], size: int, in_channels: int, out_channels: int, norm_num_groups: int):
    """A UNet2DConditionModel of two levels (cross-attention in the lower one) reading WIDTH-wide tokens."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        sample_size=size,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH,
        norm_num_groups=norm_num_groups,
    )


def overflowing_t5(vocab_size: int) -> T5EncoderModel:
    """A tiny gated T5 (as T5 v1.1 / T5-XXL) whose feed-forward products exceed float16's
    65504 (its `wi` weights scaled by 1000): float32 stays finite, float16 gives NaN."""
    torch.manual_seed(7)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("wi_0.weight", "wi_1.weight")):
                parameter.mul_(1000)
    return model
