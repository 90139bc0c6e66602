"""clipcond.models: configs, ClipTwoTower against transformers' CLIPModel and an independent
OpenAI-layout CLIP, the ResNet tower's attention pool against torch's multi-head attention,
safetensors save/load, the text tower inside diffusers, gradient checkpointing."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import tiny_pipelines
import torch
import torch.nn.functional as F
from reference_openai_clip import OpenAIStyleCLIP, as_custom_text_clip, tiny_openai_clip
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from clipcond import TextConditioner
from clipcond.models import (
    AttentionPool2d,
    ClipTwoTower,
    MeanPool2d,
    ResNetImageTower,
    build_clip_model,
    convert_openai_state_dict,
    count_parameters,
    hf_clip_config,
    load_clip,
    load_model_config,
    load_text_tower,
    model_config_from_dict,
    save_clip,
)
from clipcond.tokenization import clip_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
BOS, EOS = 49406, 49407


def _config(name: str):
    return load_model_config(CONFIGS / f"{name}.yaml")


def _seeded(config, seed: int = 0) -> ClipTwoTower:
    torch.manual_seed(seed)
    return ClipTwoTower(config).eval()


def _token_ids(lengths: list[int], context: int = 16, seed: int = 0) -> torch.Tensor:
    """Rows of bos, `length` ordinary tokens, eos, then zeros (as OpenAI's `clip.tokenize` pads).

    eos (49407) is the largest id of every row and occurs once, so OpenAI's argmax pooling and
    transformers' first-eos pooling read the same position.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1 : 1 + length] = torch.randint(1, BOS, (length,), generator=generator)
        ids[row, 1 + length] = EOS
    return ids


def _pixels(batch: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _logits(model: ClipTwoTower, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    image, text = model(ids, pixels)
    return model.logit_scale.exp() * image @ text.t()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _assert_within(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Elementwise |actual - expected| <= atol (no relative slack)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# ----------------------------------------------------------------------------- configs and sizes


@pytest.mark.parametrize(
    "name", ["clip-tiny", "clip-tiny-vit", "clip-rn-tiny", "clip-vit-b-32", "clip-vit-l-14", "clip-rn50"]
)
def test_shipped_configs_load_and_round_trip_through_dict(name):
    config = _config(name)
    assert model_config_from_dict(config.to_dict()) == config


def _openai_clip_config(text: tuple[int, int, int], vision: tuple[int, int, int, int], embed_dim: int) -> CLIPConfig:
    """A CLIPConfig written out by hand from OpenAI's published sizes (not from our builder)."""
    text_width, text_layers, text_heads = text
    vision_width, vision_layers, vision_heads, patch = vision
    return CLIPConfig(
        text_config=dict(
            hidden_size=text_width,
            intermediate_size=4 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=77,
            vocab_size=49408,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=4 * vision_width,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=224,
            patch_size=patch,
        ),
        projection_dim=embed_dim,
    )


@pytest.mark.parametrize(
    "name, peer_config, expected",
    [
        ("clip-vit-b-32", _openai_clip_config((512, 12, 8), (768, 12, 12, 32), 512), 151_277_313),
        ("clip-vit-l-14", _openai_clip_config((768, 12, 12), (1024, 24, 16, 14), 768), 427_616_513),
    ],
)
def test_vit_parameter_counts_equal_transformers_clip_model(name, peer_config, expected):
    with torch.device("meta"):
        peer = CLIPModel(peer_config)
    peer_count = sum(parameter.numel() for parameter in peer.parameters())
    assert count_parameters(_config(name)) == peer_count == expected


def test_count_parameters_equals_an_allocated_model():
    for name in ("clip-tiny-vit", "clip-rn-tiny"):
        model = ClipTwoTower(_config(name))
        assert count_parameters(_config(name)) == sum(p.numel() for p in model.parameters())


TINY_YAML = """\
embed_dim: 32
text: {width: 32, layers: 2, heads: 2}
vision:
  kind: vit
  image_size: 32
  vit: {patch_size: 8, width: 32, layers: 2, heads: 2}
"""

RESNET_YAML = """\
embed_dim: 32
text: {width: 32, layers: 2, heads: 2}
vision:
  kind: resnet
  image_size: 32
  resnet: {embedding_size: 16, hidden_sizes: [32, 64], depths: [1, 1], pool_heads: 2}
"""


def _broken(case_id: str, base: str, old: str, new: str, message: str):
    """A config error case: `base` with `old` (which occurs once) replaced by `new` must fail with `message`."""
    return pytest.param(base, old, new, message, id=case_id)


def _load_broken(tmp_path: Path, base: str, old: str, new: str) -> tuple[Path, str]:
    assert base.count(old) == 1
    path = tmp_path / "broken.yaml"
    path.write_text(base.replace(old, new))
    with pytest.raises(ValueError) as error:
        load_model_config(path)
    return path, str(error.value)


VIT_LINE = "vit: {patch_size: 8, width: 32, layers: 2, heads: 2}"


@pytest.mark.parametrize(
    "base, old, new, message",
    [
        _broken(
            "unknown-nested-key", TINY_YAML, "layers: 2, heads: 2}\nvision", "layrs: 2, heads: 2}\nvision", "text.layrs"
        ),
        _broken("unknown-top-key", TINY_YAML, "embed_dim: 32", "embed_dim: 32\nembed_size: 32", "embed_size"),
        _broken("missing-required-key", TINY_YAML, "embed_dim: 32\n", "", "embed_dim"),
        _broken("wrong-type", TINY_YAML, "text: {width: 32,", "text: {width: 32.5,", "text.width"),
        _broken(
            "text-heads",
            TINY_YAML,
            "text: {width: 32, layers: 2, heads: 2}",
            "text: {width: 32, layers: 2, heads: 3}",
            "not divisible into 3 attention heads",
        ),
        _broken("vit-heads", TINY_YAML, VIT_LINE, VIT_LINE.replace("heads: 2", "heads: 5"), "vision.vit"),
        _broken("vit-unknown-key", TINY_YAML, "patch_size: 8", "patch_sise: 8", "vision.vit"),
        _broken(
            "vocabulary-below-clips",  # the special ids inside it, but CLIP's tokenizer gives ids up to 49407
            TINY_YAML,
            "heads: 2}\nvision",
            "heads: 2, vocab_size: 1000, bos_token_id: 998, eos_token_id: 999, pad_token_id: 999}\nvision",
            "text.vocab_size must be at least 49408, got 1000: every command tokenizes with CLIP's BPE tokenizer",
        ),
        _broken(
            "image-not-multiple-of-patch",
            TINY_YAML,
            "patch_size: 8",
            "patch_size: 7",
            "not a multiple of vision.vit.patch_size 7",
        ),
        _broken("vit-without-vit-section", TINY_YAML, f"  {VIT_LINE}\n", "", "`vision.vit` section is missing"),
        _broken(
            "resnet-without-resnet-section",
            TINY_YAML,
            "kind: vit",
            "kind: resnet",
            "`vision.resnet` section is missing",
        ),
        _broken("unknown-kind", TINY_YAML, "kind: vit", "kind: swin", "expected one of ['vit', 'resnet']"),
        _broken(
            "image-size-zero",
            TINY_YAML,
            "image_size: 32",
            "image_size: 0",
            "vision.image_size must be a positive integer",
        ),
        _broken(
            "embed-dim-negative", TINY_YAML, "embed_dim: 32", "embed_dim: -1", "embed_dim must be a positive integer"
        ),
        _broken(
            "vit-kind-with-resnet-section", RESNET_YAML, "kind: resnet", "kind: vit", "`vision.vit` section is missing"
        ),
        _broken(
            "resnet-with-vit-section",
            RESNET_YAML,
            "pool_heads: 2}",
            f"pool_heads: 2}}\n  {VIT_LINE}",
            "remove the `vision.vit` section",
        ),
        _broken(
            "image-not-multiple-of-downsampling", RESNET_YAML, "image_size: 32", "image_size: 36", "not a multiple of 8"
        ),
        _broken("stages-mismatch", RESNET_YAML, "depths: [1, 1]", "depths: [1]", "vision.resnet"),
        _broken("pool-heads", RESNET_YAML, "pool_heads: 2", "pool_heads: 3", "vision.resnet"),
        *(
            _broken(
                f"logit-scale-init-{name}",
                TINY_YAML,
                "embed_dim: 32",
                f"embed_dim: 32\nlogit_scale_init: {value}",
                f"logit_scale_init must be a finite number (the initial log of the logit scale, "
                f"log(1 / 0.07) = 2.659 in CLIP), got {shown}",
            )
            for name, value, shown in [("nan", ".nan", "nan"), ("inf", ".inf", "inf"), ("minus-inf", "-.inf", "-inf")]
        ),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path, base, old, new, message):
    path, error = _load_broken(tmp_path, base, old, new)
    assert message in error and str(path) in error


@pytest.mark.parametrize(
    "base, old, new, message",
    [
        _broken(
            "vit-heads",
            TINY_YAML,
            VIT_LINE,
            VIT_LINE.replace("heads: 2", "heads: 5"),
            "vision.vit: width 32 is not divisible into 5 attention heads",
        ),
        _broken("vit-unknown-key", TINY_YAML, "patch_size: 8", "patch_sise: 8", "vision.vit.patch_sise"),
        _broken("stages-mismatch", RESNET_YAML, "depths: [1, 1]", "depths: [1]", "need one entry per stage"),
        _broken("pool-heads", RESNET_YAML, "pool_heads: 2", "pool_heads: 3", "not divisible into 3 attention heads"),
        _broken(
            "pooling",
            RESNET_YAML,
            "pool_heads: 2",
            "pool_heads: 2, pooling: max",
            "expected one of ['attention', 'mean']",
        ),
    ],
)
def test_errors_inside_a_vision_section_keep_their_reason(tmp_path, base, old, new, message):
    path, error = _load_broken(tmp_path, base, old, new)
    assert message in error and str(path) in error


def test_base_yamls_of_the_error_cases_are_valid(tmp_path):
    for text in (TINY_YAML, RESNET_YAML):
        path = tmp_path / "ok.yaml"
        path.write_text(text)
        load_model_config(path)


def test_missing_config_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_model_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- ViT against transformers


def test_vit_two_tower_equals_transformers_clip_model_both_ways():
    config = _config("clip-tiny-vit")
    ids, pixels = _token_ids([3, 7, 0]), _pixels(2)

    torch.manual_seed(0)
    peer = build_clip_model(config).eval()
    ours = ClipTwoTower.from_clip_model(peer).eval()
    with torch.no_grad():
        expected = peer(input_ids=ids, pixel_values=pixels)
        image, text = ours(ids, pixels)
        logits = _logits(ours, ids, pixels)
    _assert_within(logits, expected.logits_per_image, 1e-6)
    _assert_within(image, expected.image_embeds, 1e-6)
    _assert_within(text, expected.text_embeds, 1e-6)

    # and back: our random weights into a fresh CLIPModel, strictly
    ours = _seeded(config, seed=3)
    peer = CLIPModel(hf_clip_config(config)).eval()
    peer.load_state_dict(ours.clip_state_dict(), strict=True)
    with torch.no_grad():
        _assert_within(_logits(ours, ids, pixels), peer(input_ids=ids, pixel_values=pixels).logits_per_image, 1e-6)


def test_load_clip_state_dict_reports_missing_and_unknown_keys():
    model = ClipTwoTower(_config("clip-tiny-vit"))
    state = model.clip_state_dict()
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unknown keys \['extra.weight'\], missing keys \['logit_scale'\]"):
        model.load_clip_state_dict(state)


def test_from_clip_model_refuses_settings_it_cannot_hold():
    config = hf_clip_config(_config("clip-tiny-vit"))
    config.text_config.layer_norm_eps = 1e-6
    with pytest.raises(ValueError, match="layer_norm_eps"):
        ClipTwoTower.from_clip_model(CLIPModel(config))


# ----------------------------------------------------------------------------- ResNet tower


def test_attention_pool_equals_torch_multi_head_attention():
    torch.manual_seed(0)
    channels, grid, heads, out_dim = 16, 3, 4, 12
    pool = AttentionPool2d(channels, grid, heads, out_dim).eval()
    features = torch.randn(5, channels, grid, grid)

    # The CLIP paper's formulation, sequence-first: the mean cell is the only query.
    cells = features.flatten(2).permute(2, 0, 1)  # (grid*grid, batch, C)
    tokens = torch.cat([cells.mean(dim=0, keepdim=True), cells]) + pool.positional_embedding[:, None]
    expected, _ = F.multi_head_attention_forward(
        query=tokens[:1],
        key=tokens,
        value=tokens,
        embed_dim_to_check=channels,
        num_heads=heads,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.out_proj.weight,
        out_proj_bias=pool.out_proj.bias,
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        training=False,
        need_weights=False,
    )
    with torch.no_grad():
        _assert_within(pool(features), expected[0], 1e-6)

    with pytest.raises(ValueError, match="built for a 3x3 feature map, got 4x4"):
        pool(torch.randn(1, channels, 4, 4))


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_resnet_tower_is_backbone_then_pool(pooling):
    data = _config("clip-rn-tiny").to_dict()
    data["vision"]["resnet"]["pooling"] = pooling
    model = _seeded(model_config_from_dict(data))
    tower = model.vision
    assert isinstance(tower, ResNetImageTower)
    assert isinstance(tower.pool, AttentionPool2d if pooling == "attention" else MeanPool2d)
    pixels = _pixels(3)
    with torch.no_grad():
        features = tower.backbone(pixel_values=pixels).last_hidden_state  # (3, 64, 4, 4)
        output = tower(pixel_values=pixels)
        if pooling == "mean":
            expected = tower.pool.out_proj(features.mean(dim=(2, 3)))
        else:
            expected = tower.pool(features)
        image, text = model(_token_ids([2, 4, 6]), pixels)
    assert features.shape == (3, 64, 4, 4)
    torch.testing.assert_close(output.image_embeds, expected, rtol=0, atol=0)
    torch.testing.assert_close(output.last_hidden_state, features.flatten(2).transpose(1, 2), rtol=0, atol=0)
    assert image.shape == text.shape == (3, 32)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))


# ----------------------------------------------------------------------------- save / load


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    model = _seeded(_config("clip-tiny-vit"), seed=5)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    return model, save_clip(model, tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory):
    model = _seeded(_config("clip-rn-tiny"), seed=6)
    # Non-trivial BatchNorm statistics, so that the round trip has to carry the buffers.
    model.train()
    with torch.no_grad():
        model.vision(pixel_values=_pixels(4, seed=9))
    model.eval()
    return model, save_clip(model, tmp_path_factory.mktemp("resnet"))


WEIGHT_SUFFIXES_NOT_SAFETENSORS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")


@pytest.mark.parametrize("saved", ["saved_vit", "saved_resnet"])
def test_save_load_round_trip_is_exact_and_safetensors_only(request, saved):
    model, folder = request.getfixturevalue(saved)
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    assert not [name for name in files if name.endswith(WEIGHT_SUFFIXES_NOT_SAFETENSORS)], files
    assert {
        "clip_config.yaml",
        "logit_scale.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "image_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
    } <= set(files)

    loaded = load_clip(folder)
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    ids, pixels = _token_ids([1, 5, 9]), _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded, ids, pixels), _logits(model, ids, pixels), rtol=0, atol=0)


def test_a_siglip_bias_is_saved_beside_the_model_and_read_back(saved_vit, tmp_path):
    from clipcond.models import load_logit_bias

    model, folder = saved_vit
    assert load_logit_bias(folder) is None  # saved without one: no file
    with_bias = save_clip(model, tmp_path / "siglip", logit_bias=torch.nn.Parameter(torch.tensor(-12.25)))
    assert (with_bias / "logit_bias.safetensors").is_file()
    assert torch.equal(load_logit_bias(with_bias), torch.tensor(-12.25))
    loaded = load_clip(with_bias)  # the towers and the scale load as before
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
    save_clip(model, with_bias)  # saved again without a bias: the old one does not linger
    assert load_logit_bias(with_bias) is None


def test_saved_vit_image_encoder_is_a_transformers_folder(saved_vit):
    model, folder = saved_vit
    vision = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder").eval()
    pixels = _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values=pixels).image_embeds, model.encode_image(pixels), rtol=0, atol=0)


def test_save_load_keeps_bfloat16(tmp_path):
    model = _seeded(_config("clip-tiny-vit")).to(torch.bfloat16)
    loaded = load_clip(save_clip(model, tmp_path))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "remove",
    [
        "clip_config.yaml",
        "logit_scale.safetensors",
        "text_encoder/model.safetensors",
        "image_encoder/model.safetensors",
    ],
)
def test_load_clip_names_the_missing_file(saved_vit, tmp_path, remove):
    folder = tmp_path / "copy"
    shutil.copytree(saved_vit[1], folder)
    (folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=Path(remove).name.replace(".", r"\.")):
        load_clip(folder)


def test_load_text_tower_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text encoder"):
        load_text_tower(tmp_path)
    # SD 1.x keeps a CLIPTextModel, without the projection: a clear error, not random weights.
    tiny_pipelines.clip_text_model(2).save_pretrained(tmp_path / "sd1")
    with pytest.raises(ValueError, match="text_projection"):
        load_text_tower(tmp_path / "sd1")


# ----------------------------------------------------------------------------- the text tower for conditioning


def test_saved_text_tower_loads_with_transformers_and_load_text_tower(saved_vit):
    model, folder = saved_vit
    ids = _token_ids([2, 6], context=77)
    with torch.no_grad():
        expected = model.text(input_ids=ids)
        for tower in (
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder").eval(),
            load_text_tower(folder),
            load_text_tower(folder / "text_encoder"),
        ):
            assert isinstance(tower, CLIPTextModelWithProjection)
            output = tower(input_ids=ids)
            torch.testing.assert_close(output.text_embeds, expected.text_embeds, rtol=0, atol=0)
            torch.testing.assert_close(output.last_hidden_state, expected.last_hidden_state, rtol=0, atol=0)
    assert load_text_tower(folder, dtype=torch.float16).dtype == torch.float16

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    reference = clip_tokenizer()
    prompt = ["a red circle to the left of a blue square"]
    assert tokenizer(prompt, padding="max_length").input_ids == reference(prompt, padding="max_length").input_ids


def test_saved_text_tower_conditions_a_diffusers_pipeline(saved_vit):
    from diffusers import StableDiffusionPipeline

    _, folder = saved_vit
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    conditioner = TextConditioner("sd", clip=[(load_text_tower(folder), tokenizer)], cache_size=0)
    prompts = ["a red circle to the left of a blue square", "two green stars"]
    embeds = conditioner.encode(prompts)

    # SD 1.x reads the same folder as a CLIPTextModel (the projection is simply not used).
    base = tiny_pipelines.build_sd()
    pipe = StableDiffusionPipeline(
        **{
            **base.components,
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
            "tokenizer": tokenizer,
        }
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    assert embeds.tokens.shape == (2, 77, 32)
    torch.testing.assert_close(embeds.tokens, expected, rtol=0, atol=1e-6)

    # A denoising step from the conditioner's embeddings equals the pipeline's own text path.
    run = dict(num_inference_steps=1, height=32, width=32, output_type="latent")
    with torch.no_grad():
        latents = pipe(
            **conditioner.pipeline_kwargs(prompts[0], negative_prompt="blurry"),
            **run,
            generator=torch.Generator().manual_seed(0),
        ).images
        expected_latents = pipe(
            prompt=prompts[0], negative_prompt="blurry", **run, generator=torch.Generator().manual_seed(0)
        ).images
    assert latents.shape == (1, 4, 32, 32)
    torch.testing.assert_close(latents, expected_latents, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- OpenAI / open_clip conversion


def _reference_clip(quick_gelu: bool, seed: int = 0) -> OpenAIStyleCLIP:
    """A tiny OpenAI-layout CLIP with every weight random (LayerNorms and biases included)."""
    return tiny_openai_clip(quick_gelu=quick_gelu, seed=seed)


def _layout(state: dict[str, torch.Tensor], layout: str, model: OpenAIStyleCLIP) -> dict[str, torch.Tensor]:
    if layout == "openai":
        # OpenAI's TorchScript checkpoints carry these non-weight entries.
        return {
            **state,
            "input_resolution": torch.tensor(32),
            "context_length": torch.tensor(16),
            "vocab_size": torch.tensor(49408),
        }
    if layout == "open_clip":
        # A DDP-saved open_clip CLIP, with the causal mask stored as a buffer.
        return {f"module.{key}": value for key, value in {**state, "attn_mask": model.causal_mask(16)}.items()}
    if layout == "open_clip_custom_text":
        return as_custom_text_clip({**state, "attn_mask": model.causal_mask(16)})
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["openai", "open_clip", "open_clip_custom_text"])
@pytest.mark.parametrize("quick_gelu", [True, False])
def test_converted_checkpoint_matches_the_reference(layout, quick_gelu):
    reference = _reference_clip(quick_gelu)
    state = _layout(reference.state_dict(), layout, reference)
    if layout == "open_clip_custom_text":
        assert "text.transformer.resblocks.0.attn.in_proj_weight" in state and "token_embedding.weight" not in state

    # text heads: 32 // 64 = 0 under OpenAI's rule, so it is given; vision heads follow the rule (128 // 64).
    hf_config, hf_state = convert_openai_state_dict(state, quick_gelu=quick_gelu, text_heads=2)
    assert hf_config.vision_config.num_attention_heads == 2
    peer = CLIPModel(hf_config).eval()
    peer.load_state_dict(hf_state, strict=True)
    ours = ClipTwoTower.from_clip_model(peer).eval()
    assert ours.config.quick_gelu is quick_gelu
    assert (ours.config.vision.image_size, ours.config.vision.vit.patch_size, ours.config.text.context_length) == (
        32,
        8,
        16,
    )

    ids, pixels = _token_ids([0, 4, 9, 14], context=16), _pixels(3)
    with torch.no_grad():
        expected_image, expected_text = reference.encode_image(pixels), reference.encode_text(ids)
        expected_logits, _ = reference(pixels, ids)
        _assert_within(ours.encode_image(pixels), expected_image, 1e-5)
        _assert_within(ours.encode_text(ids), expected_text, 1e-5)
        _assert_within(_logits(ours, ids, pixels), expected_logits, 1e-5)
        _assert_within(peer(input_ids=ids, pixel_values=pixels).logits_per_image, expected_logits, 1e-5)

        # The activation is not in the weights; the wrong choice must show (by about 8e-3 here, far above 1e-5).
        wrong_peer = CLIPModel(convert_openai_state_dict(state, quick_gelu=not quick_gelu, text_heads=2)[0])
        wrong_peer.load_state_dict(hf_state, strict=True)
        wrong = ClipTwoTower.from_clip_model(wrong_peer).eval()
        assert _max_diff(wrong.encode_image(pixels), expected_image) > 1e-3


def test_convert_rejects_what_it_cannot_convert():
    state = _reference_clip(True).state_dict()

    with pytest.raises(ValueError, match="not a multiple of 64"):
        convert_openai_state_dict(state)  # text width 32 and no text_heads

    with pytest.raises(ValueError, match=r"no place in a transformers CLIPModel, e.g. \['logit_bias'\]"):
        convert_openai_state_dict({**state, "logit_bias": torch.zeros(())}, text_heads=2)

    with pytest.raises(ValueError, match="mixes two layouts"):
        convert_openai_state_dict({**state, "text.ln_final.weight": state["ln_final.weight"]}, text_heads=2)

    resnet_like = {key: value for key, value in state.items() if not key.startswith("visual.")}
    resnet_like["visual.layer1.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="this is a ResNet CLIP"):
        convert_openai_state_dict(resnet_like, text_heads=2)

    with pytest.raises(ValueError, match="already is a transformers CLIPModel"):
        convert_openai_state_dict(build_clip_model(_config("clip-tiny-vit")).state_dict())

    # open_clip's *-worldwide text towers (XLM-V, 901629 tokens, pooled at its eos id 2), shrunk: the
    # folder would get CLIP's tokenizer and pool at a token id that never occurs.
    other_vocabulary = {**state, "token_embedding.weight": state["token_embedding.weight"][:1000]}
    with pytest.raises(ValueError, match=r"token_embedding.weight has 1000 rows, not CLIP's BPE vocabulary of 49408"):
        convert_openai_state_dict(other_vocabulary, text_heads=2)

    with pytest.raises(ValueError, match=r"vision_heads \(--vision-heads\) 3 does not divide the vision width 128"):
        convert_openai_state_dict(state, text_heads=2, vision_heads=3)

    no_ln_post = {key: value for key, value in state.items() if not key.startswith("visual.ln_post.")}
    with pytest.raises(ValueError, match=r"missing 'visual.ln_post.weight'"):
        convert_openai_state_dict(no_ln_post, text_heads=2)


# Image-tower width -> heads in every ViT config open_clip 3.3.0 ships (model_configs/*.json: heads =
# width // head_width), written out by hand; OpenAI's ViT-B (768) and ViT-L (1024) are among them.
OPEN_CLIP_VISION_HEADS = {
    384: 6,  # ViT-S-16, ViT-S-32 (-alt)
    512: 8,  # ViT-M-16, ViT-M-32 (-alt)
    768: 12,  # ViT-B-16, ViT-B-32 (-256, -quickgelu)
    896: 14,  # ViT-B-16-plus (-240), ViT-B-32-plus-256
    1024: 16,  # ViT-L-14, ViT-L-16 (-280, -320, -336, -CLIPA, -worldwide)
    1280: 16,  # ViT-H-14, ViT-H-16 (-378, -quickgelu, -CLIPA, -worldwide): head_width 80
    1408: 16,  # ViT-g-14: head_width 88
    1664: 16,  # ViT-bigG-14 (-quickgelu, -CLIPA, -worldwide): head_width 104
    1792: 16,  # ViT-e-14: head_width 112
}


# Text width -> heads in the same configs: OpenAI's width // 64 throughout.
OPEN_CLIP_TEXT_HEADS = {256: 4, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1280: 20}


def _shapes_only_checkpoint(vision_width: int, text_width: int = 64) -> dict[str, torch.Tensor]:
    """An OpenAI-layout state dict on the meta device: the shapes of a real one, no memory."""
    with torch.device("meta"):
        model = OpenAIStyleCLIP(
            embed_dim=16,
            image_size=28,
            patch_size=14,
            vision_width=vision_width,
            vision_layers=1,
            vision_heads=8,  # the reference's own; the state dict does not store it
            context_length=8,
            vocab_size=49408,
            text_width=text_width,
            text_layers=1,
            text_heads=4,
        )
    return model.state_dict()


@pytest.mark.parametrize("width", sorted(OPEN_CLIP_VISION_HEADS))
def test_default_vision_heads_are_open_clips_for_every_shipped_width(width):
    config, _ = convert_openai_state_dict(_shapes_only_checkpoint(width))
    assert config.vision_config.num_attention_heads == OPEN_CLIP_VISION_HEADS[width]


@pytest.mark.parametrize("width", sorted(OPEN_CLIP_TEXT_HEADS))
def test_default_text_heads_are_open_clips_for_every_shipped_width(width):
    config, _ = convert_openai_state_dict(_shapes_only_checkpoint(768, text_width=width))
    assert config.text_config.num_attention_heads == OPEN_CLIP_TEXT_HEADS[width]


def test_default_vision_heads_refuse_widths_no_rule_covers():
    with pytest.raises(ValueError, match="not a multiple of 64.*--vision-heads"):
        convert_openai_state_dict(_shapes_only_checkpoint(800))
    with pytest.raises(ValueError, match="not a multiple of 16.*--vision-heads"):
        convert_openai_state_dict(_shapes_only_checkpoint(1288))
    config, _ = convert_openai_state_dict(_shapes_only_checkpoint(1288), vision_heads=8)
    assert config.vision_config.num_attention_heads == 8


def test_converted_vit_h_image_tower_has_open_clips_16_heads_of_width_80():
    """open_clip's ViT-H-14 image tower (width 1280, head_width 80), cut to one layer: the default
    conversion must build its 16 heads, not 1280 // 64 = 20 (features then differ by about 0.1)."""
    torch.manual_seed(0)
    reference = OpenAIStyleCLIP(
        embed_dim=24,
        image_size=28,
        patch_size=14,
        vision_width=1280,
        vision_layers=1,
        vision_heads=16,
        context_length=8,
        vocab_size=49408,
        text_width=32,
        text_layers=1,
        text_heads=2,
        quick_gelu=False,
    ).eval()
    with torch.no_grad():
        for name, parameter in reference.visual.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
    config, weights = convert_openai_state_dict(reference.state_dict(), quick_gelu=False, text_heads=2)
    assert config.vision_config.num_attention_heads == 16
    peer = CLIPModel(config).eval()
    peer.load_state_dict(weights, strict=True)
    pixels = _pixels(2, size=28)
    with torch.no_grad():
        got = peer.get_image_features(pixel_values=pixels)
        got = got if isinstance(got, torch.Tensor) else got.pooler_output
        _assert_within(F.normalize(got, dim=-1), F.normalize(reference.encode_image(pixels), dim=-1), 1e-5)


# ----------------------------------------------------------------------------- gradient checkpointing


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    # A pre-hook: a recomputation stops as soon as the tensors it needs exist, possibly inside
    # the module, before a forward (post-)hook would run.
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _watched_layers(model: ClipTwoTower) -> list[torch.nn.Module]:
    """One module inside a checkpointed unit of each tower: it runs again when that unit is recomputed."""
    text_layer = model.text.text_model.encoder.layers[0].mlp
    if isinstance(model.vision, ResNetImageTower):
        return [text_layer, model.vision.backbone.encoder.stages[0].layers[0]]
    return [text_layer, model.vision.vision_model.encoder.layers[0].mlp]


def _training_step(model: ClipTwoTower) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
    """One symmetric InfoNCE loss and its backward pass.

    Returns the loss, the gradients by parameter name, and how often each watched layer ran.
    """
    counters = [_count_calls(layer) for layer in _watched_layers(model)]
    ids, pixels = _token_ids([1, 3, 5, 7]), _pixels(4)
    logits = _logits(model, ids, pixels)
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, [counter[0] for counter in counters]


@pytest.mark.parametrize("name", ["clip-tiny-vit", "clip-rn-tiny"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    plain = _seeded(_config(name)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()

    loss, grads, runs = _training_step(plain)
    loss_ckpt, grads_ckpt, runs_ckpt = _training_step(checkpointed)
    assert runs == [1, 1] and runs_ckpt == [2, 2], "checkpointing must recompute in both towers"
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(plain.parameters()))
    for key in grads:
        torch.testing.assert_close(grads_ckpt[key], grads[key], rtol=0, atol=0, msg=key)
    # BatchNorm running statistics are updated once per step, not again by the recomputation.
    for (key, buffer), buffer_ckpt in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(buffer_ckpt, buffer, rtol=0, atol=0, msg=key)

    checkpointed.disable_gradient_checkpointing()
    checkpointed.zero_grad()
    assert _training_step(checkpointed)[2] == [1, 1]


def test_resnet_tower_has_transformers_style_checkpointing_switches():
    tower = _seeded(_config("clip-rn-tiny")).vision
    tower.gradient_checkpointing_enable()
    assert tower.gradient_checkpointing
    tower.gradient_checkpointing_disable()
    tower.activation_checkpointing_enable()
    assert tower.gradient_checkpointing
    with pytest.raises(ValueError, match="use_reentrant=False"):
        tower.gradient_checkpointing_enable({"use_reentrant": True})
