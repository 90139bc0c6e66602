"""diffusers' shared pipeline test mixins, in our words, for our pipelines.

diffusers runs the same checks on every pipeline through mixins in
tests/pipelines/test_pipelines_common.py: `PipelineTesterMixin`, `PipelineLatentTesterMixin`,
`PipelineKarrasSchedulerTesterMixin`, `IPAdapterTesterMixin` and `SDFunctionTesterMixin`.
The classes here are those mixins, one for one, as pytest classes: a test class of
tests/test_diffusers_fast_*.py inherits the ones its upstream class inherits and says what
differs, as upstream's test classes do:

    pipeline_class       the pipeline under test
    dummy_inputs(seed)   upstream's `get_dummy_inputs` (a method)
    params, batch_params, image_params and the tolerances below
    built_components     a fixture (module or class scope): upstream's `get_dummy_components`
    slow_checks          names of inherited checks to run only with `-m slow` (tests/conftest.py)

Each check's docstring names the upstream test it mirrors. Where upstream compares with a
stored slice, the test files compare with the diffusers pipeline itself instead; the checks
here compare the pipeline with itself, as upstream's mixins do. Tests that need an
accelerator are skipped without one, as upstream skips them.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import logging
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AsymmetricAutoencoderKL,
    AutoencoderKL,
    AutoencoderTiny,
    ConsistencyDecoderVAE,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import IPAdapterMixin
from tiny_ip_adapter import ip_adapter_state_dict
from tiny_pipelines import copy_sharing_tokenizers, shared_tokenizers_kept, tokenizer_fingerprints_of

# pipeline_params.py's TEXT_TO_IMAGE_PARAMS, and PipelineTesterMixin.required_optional_params
TEXT_TO_IMAGE_PARAMS = frozenset(
    {
        "prompt",
        "height",
        "width",
        "guidance_scale",
        "negative_prompt",
        "prompt_embeds",
        "negative_prompt_embeds",
        "cross_attention_kwargs",
    }
)
REQUIRED_OPTIONAL_PARAMS = frozenset(
    {"num_inference_steps", "num_images_per_prompt", "generator", "latents", "output_type", "return_dict"}
)
PROMPT = "A painting of a squirrel eating a burger"
LONG_PROMPT = 100 * "very long"  # upstream's last prompt of a batch: 900 characters, 3 CLIP windows
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (upstream: @require_accelerator)")


# ---------------------------------------------------------------- helpers


def default_attention(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Every model of `pipe` on diffusers' plain attention processor, as upstream's checks set it."""
    for component in pipe.components.values():
        if hasattr(component, "set_default_attn_processor"):
            component.set_default_attn_processor()
    return pipe


def max_diff(a: Any, b: Any) -> float:
    """max |a - b| over arrays or tensors, in float64."""
    as_array = [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in (a, b)]
    return float(np.abs(as_array[0] - as_array[1]).max())


def diffusers_pipeline(pipeline_class: type[DiffusionPipeline], parts: dict) -> DiffusionPipeline:
    """diffusers' own `pipeline_class` on the components of `parts` it takes (no safety checker
    required), progress bar off: the peer our pipeline is compared with."""
    keys = set(inspect.signature(pipeline_class.__init__).parameters)
    settings = {name: part for name, part in parts.items() if name in keys}
    if "requires_safety_checker" in keys:
        settings["requires_safety_checker"] = False
    pipe = pipeline_class(**settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_guidance_embedding(parts: dict) -> dict:
    """upstream `get_dummy_components(time_cond_proj_dim=256)`: the same UNet with a guidance
    embedding (an LCM-distilled UNet), built from the same seed."""
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel.from_config({**parts["unet"].config, "time_cond_proj_dim": 256})
    return parts


def return_names(function: Any, count: int) -> list[str]:
    """The names in `function`'s return statement of `count` values, read from its source.

    upstream's `ReturnNameVisitor` joins the names of every return statement; our
    `encode_prompt` has two (SD's two tensors, SDXL's four), so the one that made the values
    is picked by its length."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    statements = [node.value for node in ast.walk(tree) if isinstance(node, ast.Return)]
    tuples = [[ast.unparse(item) for item in node.elts] for node in statements if isinstance(node, ast.Tuple)]
    matching = [names for names in tuples if len(names) == count]
    assert len(matching) == 1, f"{function.__qualname__} has {len(matching)} returns of {count} names: {tuples}"
    return matching[0]


class _Messages(logging.Handler):
    """upstream's `CaptureLogger`, on a diffusers logger (those do not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _mean_pixel_difference(image: np.ndarray, expected: np.ndarray) -> float:
    """upstream `assert_mean_pixel_difference`'s measure: mean |difference| in 0-255 PIL pixels."""
    as_pixels = [np.asarray(DiffusionPipeline.numpy_to_pil(x)[0], dtype=np.float32) for x in (image, expected)]
    return float(np.abs(as_pixels[0] - as_pixels[1]).mean())


def _model_names(pipe: DiffusionPipeline) -> list[str]:
    return [name for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)]


def _image_embeds(width: int, rows: int = 2, face_id: bool = False) -> torch.Tensor:
    """upstream `_get_dummy_image_embeds`: (negative and positive, 1 image, width), 4-D for FaceID."""
    shape = (rows, 1, 1, width) if face_id else (rows, 1, width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(rows))


def vae_configs(block_out_channels, norm_num_groups) -> list:
    """upstream tests/models/autoencoders/vae.py: tiny configs of the four VAE kinds, in the
    shape of the pipeline's own VAE."""
    channels = list(block_out_channels)
    blocks = len(channels)
    return [
        (
            AutoencoderKL,
            dict(
                block_out_channels=channels,
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * blocks,
                up_block_types=["UpDecoderBlock2D"] * blocks,
                latent_channels=4,
                norm_num_groups=norm_num_groups,
            ),
        ),
        (
            AsymmetricAutoencoderKL,
            dict(
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * blocks,
                down_block_out_channels=channels,
                layers_per_down_block=1,
                up_block_types=["UpDecoderBlock2D"] * blocks,
                up_block_out_channels=channels,
                layers_per_up_block=1,
                act_fn="silu",
                latent_channels=4,
                norm_num_groups=norm_num_groups,
                sample_size=32,
                scaling_factor=0.18215,
            ),
        ),
        (
            ConsistencyDecoderVAE,
            dict(
                encoder_block_out_channels=channels,
                encoder_in_channels=3,
                encoder_out_channels=4,
                encoder_down_block_types=["DownEncoderBlock2D"] * blocks,
                decoder_add_attention=False,
                decoder_block_out_channels=channels,
                decoder_down_block_types=["ResnetDownsampleBlock2D"] * blocks,
                decoder_downsample_padding=1,
                decoder_in_channels=7,
                decoder_layers_per_block=1,
                decoder_norm_eps=1e-05,
                decoder_norm_num_groups=norm_num_groups,
                encoder_norm_num_groups=norm_num_groups,
                decoder_num_train_timesteps=1024,
                decoder_out_channels=6,
                decoder_resnet_time_scale_shift="scale_shift",
                decoder_time_embedding_type="learned",
                decoder_up_block_types=["ResnetUpsampleBlock2D"] * blocks,
                scaling_factor=1,
                latent_channels=4,
            ),
        ),
        (
            AutoencoderTiny,
            dict(
                in_channels=3,
                out_channels=3,
                encoder_block_out_channels=[32] * blocks,
                decoder_block_out_channels=[32] * blocks,
                num_encoder_blocks=[1] * blocks,
                num_decoder_blocks=[1] * blocks,
            ),
        ),
    ]


# ---------------------------------------------------------------- the pipeline under test


class PipelineUnderTest:
    """What every mixin reads: the class, upstream's inputs and the components' fixtures.
    A test class (or its module) defines the fixture `built_components`."""

    pipeline_class: type[DiffusionPipeline]
    peer_class: type[DiffusionPipeline]  # diffusers' pipeline that upstream's class tests
    slow_checks: frozenset[str] = frozenset()
    batch_params: frozenset[str] = frozenset({"prompt", "negative_prompt"})  # TEXT_TO_IMAGE_BATCH_PARAMS

    def dummy_inputs(self, seed: int = 0) -> dict:
        """upstream `get_dummy_inputs`: the arguments of one small call."""
        raise NotImplementedError

    def make(self, parts: dict) -> DiffusionPipeline:
        """The pipeline under test on `parts`, progress bar off."""
        pipe = self.pipeline_class(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def peer(self, parts: dict) -> DiffusionPipeline:
        """diffusers' `peer_class` on `parts`: what upstream's stored slices are images of."""
        return diffusers_pipeline(self.peer_class, parts)

    @pytest.fixture(scope="class")
    def built_tokenizer_fingerprints(self, built_components) -> dict[str, str]:
        return tokenizer_fingerprints_of(built_components)

    @pytest.fixture
    def components(self, built_components, built_tokenizer_fingerprints) -> Iterator[dict]:
        """Fresh copies of the dummy components for each test (building them takes seconds),
        the tokenizers shared; the test fails if it changed one of them."""
        with shared_tokenizers_kept(built_components, built_tokenizer_fingerprints):
            yield copy_sharing_tokenizers(built_components)

    @pytest.fixture(scope="class")
    def reference_images(self, built_components) -> Any:
        """The images of `dummy_inputs()` on the dummy components with plain attention, made
        once per class: what most checks compare against."""
        return default_attention(self.make(copy.deepcopy(built_components)))(**self.dummy_inputs())[0]

    def batched(self, inputs: dict, batch_size: int, last_prompt: str = LONG_PROMPT) -> dict:
        """upstream's batching: prompts of unequal lengths, the last one `last_prompt`, each
        other batch argument repeated, one generator per image."""
        batched = dict(inputs)
        for name in self.batch_params & inputs.keys():
            value = inputs[name]
            if name == "prompt":
                batched[name] = [value[: len(value) // i] for i in range(1, batch_size + 1)]
                batched[name][-1] = last_prompt
            else:
                batched[name] = batch_size * [value]
        batched["generator"] = [torch.Generator("cpu").manual_seed(i) for i in range(batch_size)]
        return batched

    def takes_a_source_image(self) -> bool:
        """img2img and inpainting (an `image` and a `strength`), as upstream tells them apart."""
        return {"image", "strength"} <= set(inspect.signature(self.pipeline_class.__call__).parameters)


# ---------------------------------------------------------------- PipelineTesterMixin


class PipelineChecks(PipelineUnderTest):
    """upstream `PipelineTesterMixin`, and `test_pipeline_interrupt`, which each of upstream's
    SD, SDXL, img2img and inpaint classes defines alike."""

    params: frozenset[str] = TEXT_TO_IMAGE_PARAMS
    required_optional_params: frozenset[str] = REQUIRED_OPTIONAL_PARAMS
    batch_single_max_diff = 1e-4
    attention_slicing_max_diff = 1e-3
    encode_prompt_tolerance = 1e-4
    float16_max_diff = 5e-2
    # optional in our pipelines' signature, needed by these components: the VAE (optional for
    # pixel-space UNets; upstream's is not optional), SDXL's second encoder
    needed_optional_components: frozenset[str] = frozenset({"vae"})

    def test_save_load_local(self, components, reference_images, tmp_path) -> None:
        """upstream `test_save_load_local`: saved (not safetensors) and loaded back, every
        non-optional component is logged as loaded and the images stay (< 5e-4)."""
        self.make(components).save_pretrained(tmp_path, safe_serialization=False)
        logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
        level, captured = logger.level, _Messages()
        logger.setLevel(logging.INFO)
        logger.addHandler(captured)
        try:
            loaded = self.pipeline_class.from_pretrained(tmp_path)
        finally:
            logger.removeHandler(captured)
            logger.setLevel(level)
        log = "\n".join(captured.messages)
        for name in loaded.components:
            if name not in loaded._optional_components:
                assert name in log
        loaded = default_attention(loaded)
        loaded.set_progress_bar_config(disable=True)
        assert max_diff(loaded(**self.dummy_inputs())[0], reference_images) < 5e-4

    def test_pipeline_call_signature(self) -> None:
        """upstream `test_pipeline_call_signature`: `__call__` takes the pipeline kind's
        arguments (`params`) and the common optional ones, with defaults."""
        parameters = inspect.signature(self.pipeline_class.__call__).parameters
        assert self.params <= set(parameters)
        optional = {name for name, parameter in parameters.items() if parameter.default is not inspect.Parameter.empty}
        assert self.required_optional_params <= optional

    def test_inference_batch_consistent(self, components) -> None:
        """upstream `test_inference_batch_consistent`: a batch of two prompts of unequal lengths
        (and the other batch arguments twice) gives two images."""
        assert len(self.make(components)(**self.batched(self.dummy_inputs(), 2))[0]) == 2

    @pytest.mark.parametrize(
        "last_prompt",
        [
            pytest.param(
                LONG_PROMPT,
                marks=pytest.mark.skip(
                    reason="intended difference: the 900-character prompt is chunked (3 windows), not truncated, "
                    "and the batch's shorter prompts are padded with empty-prompt windows, as A1111 pads them"
                ),
                id="upstream_900_characters",
            ),
            pytest.param(10 * "very long", id="last_prompt_within_77_tokens"),
        ],
    )
    def test_inference_batch_single_identical(self, components, reference_images, last_prompt) -> None:
        """upstream `test_inference_batch_single_identical` (`expected_max_diff` per class): the
        first image of a batch of three equals the image of its prompt alone. Run with
        upstream's batch, whose last prompt is 3 windows long here, the first prompt reads two
        empty-prompt windows more than alone (0.12 measured on SD); with a last prompt of one
        window it holds."""
        pipe = default_attention(self.make(components))
        assert len(pipe.tokenizer(last_prompt).input_ids) <= pipe.tokenizer.model_max_length
        batch = pipe(**self.batched(self.dummy_inputs(), 3, last_prompt))[0]
        assert batch.shape[0] == 3
        assert max_diff(batch[0], reference_images[0]) < self.batch_single_max_diff

    def test_dict_tuple_outputs_equivalent(self, components, reference_images) -> None:
        """upstream `test_dict_tuple_outputs_equivalent`: `return_dict=False` gives the same images."""
        as_tuple = default_attention(self.make(components))(**self.dummy_inputs(), return_dict=False)
        assert isinstance(as_tuple, tuple) and max_diff(as_tuple[0], reference_images) < 1e-4

    def test_components_function(self, components) -> None:
        """upstream `test_components_function`: `pipe.components` names exactly the components it
        was built from (ours are SD's plus the optional second encoder, its tokenizer and the
        projection of the `custom` recipe, None where unused)."""
        pipe = self.make(components)
        assert set(pipe.components) == set(components)
        assert {"safety_checker", "feature_extractor", "image_encoder"} <= set(pipe.components)

    @cuda
    def test_float16_inference(self, components) -> None:
        """upstream `test_float16_inference` (skipped upstream without CUDA or XPU): float16 images
        are float32's to a cosine distance of `float16_max_diff`."""
        pipe = default_attention(self.make(components)).to("cuda")
        half = default_attention(self.make(copy.deepcopy(components))).to("cuda", torch.float16)
        full, low = pipe(**self.dummy_inputs())[0], half(**self.dummy_inputs())[0]
        full, low = (np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, np.float64).ravel() for x in (full, low))
        distance = 1.0 - full @ low / (np.linalg.norm(full) * np.linalg.norm(low))
        assert distance < self.float16_max_diff

    @cuda
    def test_save_load_float16(self, components, tmp_path) -> None:
        """upstream `test_save_load_float16` (skipped upstream without CUDA or XPU): a float16
        pipeline saves and loads back as float16, with the same images (< 1e-2)."""
        parts = {name: part.to("cuda").half() if hasattr(part, "half") else part for name, part in components.items()}
        pipe = default_attention(self.make(parts)).to("cuda")
        output = pipe(**self.dummy_inputs())[0]
        pipe.save_pretrained(tmp_path)
        loaded = default_attention(self.pipeline_class.from_pretrained(tmp_path, dtype=torch.float16)).to("cuda")
        loaded.set_progress_bar_config(disable=True)
        for name, component in loaded.components.items():
            if hasattr(component, "dtype"):
                assert component.dtype == torch.float16, name
        assert max_diff(loaded(**self.dummy_inputs())[0], output) < 1e-2

    def test_save_load_optional_components(self, components, reference_images, tmp_path) -> None:
        """upstream `test_save_load_optional_components`: with every optional component set to
        None, the pipeline saves and loads back with them None and the same images (< 1e-4)."""
        pipe = self.make(components)
        dropped = [name for name in pipe._optional_components if name not in self.needed_optional_components]
        for name in dropped:
            setattr(pipe, name, None)
        pipe.save_pretrained(tmp_path, safe_serialization=False)
        loaded = default_attention(self.pipeline_class.from_pretrained(tmp_path))
        loaded.set_progress_bar_config(disable=True)
        for name in dropped:
            assert getattr(loaded, name) is None, name
        assert max_diff(loaded(**self.dummy_inputs())[0], reference_images) < 1e-4

    @cuda
    def test_to_device(self, components) -> None:
        """upstream `test_to_device` (an accelerator test): `pipe.to(device)` moves every model,
        and the images have no NaN on either device."""
        pipe = self.make(components).to("cpu")
        assert all(part.device.type == "cpu" for part in components.values() if getattr(part, "device", None))
        assert not np.isnan(np.asarray(pipe(**self.dummy_inputs())[0])).any()
        pipe.to("cuda")
        assert all(part.device.type == "cuda" for part in components.values() if getattr(part, "device", None))
        assert not torch.isnan(torch.as_tensor(np.asarray(pipe(**self.dummy_inputs())[0]))).any()

    def test_to_dtype(self, components) -> None:
        """upstream `test_to_dtype`: `pipe.to(dtype=torch.float16)` converts every model."""
        pipe = self.make(components)
        assert all(part.dtype == torch.float32 for part in components.values() if getattr(part, "dtype", None))
        pipe.to(dtype=torch.float16)
        assert all(part.dtype == torch.float16 for part in components.values() if getattr(part, "dtype", None))

    def test_attention_slicing_forward_pass(self, components, reference_images) -> None:
        """upstream `test_attention_slicing_forward_pass` (`expected_max_diff` per class): slices
        of 1 and 2 heads give the unsliced images, and a mean pixel difference under 10."""
        pipe = default_attention(self.make(components))
        for slice_size in (1, 2):
            pipe.enable_attention_slicing(slice_size=slice_size)
            sliced = pipe(**self.dummy_inputs())[0]
            assert max_diff(sliced, reference_images) < self.attention_slicing_max_diff
            assert _mean_pixel_difference(sliced[0], reference_images[0]) < 10

    @cuda
    def test_model_cpu_offload_forward_pass(self, components) -> None:
        """upstream `test_model_cpu_offload_forward_pass` and `test_cpu_offload_forward_pass_twice`
        (accelerator tests): model offload gives the same images (< 2e-4), twice, and leaves every
        offloaded model on the CPU with its hook."""
        import accelerate

        pipe = default_attention(self.make(components)).to("cuda")
        reference = pipe(**self.dummy_inputs())[0]
        for _ in range(2):
            pipe.enable_model_cpu_offload()
            assert max_diff(pipe(**self.dummy_inputs())[0], reference) < 2e-4
        offloaded = {
            name: part
            for name, part in pipe.components.items()
            if isinstance(part, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload
        }
        assert all(part.device.type == "cpu" for part in offloaded.values())
        assert all(
            isinstance(getattr(part, "_hf_hook", None), accelerate.hooks.CpuOffload) for part in offloaded.values()
        )

    @cuda
    def test_sequential_cpu_offload_forward_pass(self, components) -> None:
        """upstream `test_sequential_cpu_offload_forward_pass` and
        `test_sequential_offload_forward_pass_twice` (accelerator tests): sequential offload
        gives the same images (< 1e-4), twice, with every offloaded model on the meta device."""
        pipe = default_attention(self.make(components)).to("cuda")
        reference = pipe(**self.dummy_inputs())[0]
        for _ in range(2):
            pipe.enable_sequential_cpu_offload(device="cuda")
            assert max_diff(pipe(**self.dummy_inputs())[0], reference) < 1e-4
        offloaded = [
            part
            for name, part in pipe.components.items()
            if isinstance(part, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload
        ]
        assert all(part.device.type == "meta" and hasattr(part, "_hf_hook") for part in offloaded)

    @cuda
    def test_xformers_attention_forward_pass(self, components) -> None:
        """upstream `test_xformers_attention_forwardGenerator_pass` (skipped upstream without CUDA
        and xformers): xformers attention gives the same images (< 1e-4, mean pixel difference < 10)."""
        pytest.importorskip("xformers")
        pipe = default_attention(self.make(components)).to("cuda")
        plain = pipe(**{**self.dummy_inputs(), "output_type": "np"})[0]
        pipe.enable_xformers_memory_efficient_attention()
        memory_efficient = pipe(**{**self.dummy_inputs(), "output_type": "np"})[0]
        assert max_diff(memory_efficient, plain) < 1e-4
        assert _mean_pixel_difference(memory_efficient[0], plain[0]) < 10

    def test_num_images_per_prompt(self, components) -> None:
        """upstream `test_num_images_per_prompt`: batch size x images per prompt images, for 1
        and 2 of each (every batch argument repeated)."""
        pipe = self.make(components)
        for batch_size in (1, 2):
            for per_prompt in (1, 2):
                inputs = self.dummy_inputs()
                for name in self.batch_params & inputs.keys():
                    inputs[name] = batch_size * [inputs[name]]
                images = pipe(**inputs, num_images_per_prompt=per_prompt)[0]
                assert images.shape[0] == batch_size * per_prompt

    def test_cfg(self, components) -> None:
        """upstream `test_cfg`: with and without classifier-free guidance, images of the same shape."""
        pipe = self.make(components)
        without = pipe(**{**self.dummy_inputs(), "guidance_scale": 1.0})[0]
        with_guidance = pipe(**{**self.dummy_inputs(), "guidance_scale": 7.5})[0]
        assert without.shape == with_guidance.shape

    def test_callback_inputs(self, components) -> None:
        """upstream `test_callback_inputs`: the callback gets exactly the tensors asked for (a
        subset, or all of `_callback_tensor_inputs`), and latents it returns replace the pipeline's."""
        pipe = self.make(components)

        def subset(pipe, step, timestep, tensors):
            assert set(tensors) <= set(pipe._callback_tensor_inputs)
            return tensors

        def everything(pipe, step, timestep, tensors):
            assert set(tensors) == set(pipe._callback_tensor_inputs)
            return tensors

        def zero_last_latents(pipe, step, timestep, tensors):
            if step == pipe.num_timesteps - 1:
                tensors["latents"] = torch.zeros_like(tensors["latents"])
            return tensors

        inputs = {**self.dummy_inputs(), "output_type": "latent"}
        pipe(**inputs, callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["latents"])
        everyone = pipe._callback_tensor_inputs
        pipe(**inputs, callback_on_step_end=everything, callback_on_step_end_tensor_inputs=everyone)
        output = pipe(**inputs, callback_on_step_end=zero_last_latents, callback_on_step_end_tensor_inputs=everyone)[0]
        assert output.abs().sum() == 0

    def test_callback_cfg(self, components) -> None:
        """upstream `test_callback_cfg`: a callback that raises `pipe._guidance_scale` by 1 each
        step, given every callback tensor, leaves it at the start value plus the number of
        timesteps (those left after `strength` in img2img and inpainting)."""
        pipe = self.make(components)

        def raise_guidance(pipe, step, timestep, tensors):
            pipe._guidance_scale += 1.0
            return tensors

        pipe(
            **{**self.dummy_inputs(), "guidance_scale": 2.0},
            callback_on_step_end=raise_guidance,
            callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
        )
        assert pipe.guidance_scale == 2.0 + pipe.num_timesteps

    def test_serialization_with_variants(self, components, tmp_path) -> None:
        """upstream `test_serialization_with_variants`: `save_pretrained(variant="fp16")` writes
        every model's weights under the variant's name, in the folder model_index.json names."""
        pipe = self.make(components)
        pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
        index = json.loads((tmp_path / "model_index.json").read_text())
        for name in _model_names(pipe):
            folder = tmp_path / name
            assert folder.is_dir() and name in index
            assert any(file.name.split(".")[1].startswith("fp16") for file in folder.iterdir())

    def test_loading_with_variants(self, components, tmp_path) -> None:
        """upstream `test_loading_with_variants`: a variant loads back with every parameter equal."""
        pipe = self.make(components)
        pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
        loaded = self.pipeline_class.from_pretrained(tmp_path, variant="fp16")
        for name in _model_names(pipe):
            saved = dict(getattr(pipe, name).named_parameters())
            back = dict(getattr(loaded, name).named_parameters())
            for key, parameter in saved.items():
                if key in back:  # tied weights are not saved twice
                    assert torch.equal(parameter, back[key]), f"{name}.{key}"

    def test_loading_with_incorrect_variants_raises_error(self, components, tmp_path) -> None:
        """upstream `test_loading_with_incorrect_variants_raises_error`: asking for a variant that
        was not saved is a ValueError naming it."""
        self.make(components).save_pretrained(tmp_path, safe_serialization=False)
        with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
            self.pipeline_class.from_pretrained(tmp_path, variant="fp16")

    def test_encode_prompt_works_in_isolation(self, components, reference_images) -> None:
        """upstream `test_encode_prompt_works_in_isolation` (`atol` per class): a pipeline of the
        text components alone encodes the prompt; the names of `encode_prompt`'s return values,
        read from its source, are `__call__` arguments; a pipeline without text components given
        them makes the full pipeline's images."""
        text_only = self.make(
            {name: (part if "text" in name or "tokenizer" in name else None) for name, part in components.items()}
        )
        inputs = self.dummy_inputs()
        parameters = inspect.signature(text_only.encode_prompt).parameters
        call_defaults = inspect.signature(text_only.__call__).parameters
        encode_inputs = {name: inputs.pop(name) for name in list(inputs) if name in parameters}
        extra = {"device": "cpu", "do_classifier_free_guidance": self.dummy_inputs()["guidance_scale"] > 1.0}
        for name, parameter in parameters.items():
            if parameter.default is inspect.Parameter.empty and name not in encode_inputs:
                default = call_defaults.get(name)
                has_default = default is not None and default.default is not inspect.Parameter.empty
                encode_inputs[name] = default.default if has_default else extra[name]
        with torch.no_grad():
            encoded = text_only.encode_prompt(**encode_inputs)
        names = return_names(self.pipeline_class.encode_prompt, len(encoded))
        assert names[:2] == ["prompt_embeds", "negative_prompt_embeds"]
        as_arguments = {name: value for name, value in zip(names, encoded) if name in call_defaults}
        without_text = default_attention(
            self.make(
                {name: (None if "text" in name or "tokenizer" in name else part) for name, part in components.items()}
            )
        )
        images = without_text(**inputs, **as_arguments)[0]
        tolerance = self.encode_prompt_tolerance
        assert np.allclose(np.asarray(images), np.asarray(reference_images), atol=tolerance, rtol=tolerance)

    def test_stable_diffusion_mixin_component(self, components) -> None:
        """upstream `test_StableDiffusionMixin_component`: a StableDiffusionMixin pipeline has a
        VAE and a UNet of the kinds the mixin's switches work on."""
        from diffusers.pipelines.pipeline_utils import StableDiffusionMixin

        pipe = self.make(components)
        assert isinstance(pipe, StableDiffusionMixin)
        assert isinstance(pipe.vae, (AutoencoderKL, AutoencoderTiny))
        assert isinstance(pipe.unet, UNet2DConditionModel)

    def test_layerwise_casting_inference(self, components, reference_images) -> None:
        """upstream `test_layerwise_casting_inference` (SD and SDXL set `test_layerwise_casting`;
        run here for every pipeline): a bfloat16 pipeline whose UNet stores float8 weights runs,
        images of the float32 pipeline's shape."""
        pipe = self.make(components).to("cpu", dtype=torch.bfloat16)
        pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        assert pipe(**self.dummy_inputs())[0].shape == reference_images.shape

    def test_dtype_dict(self, components, tmp_path) -> None:
        """upstream `test_dtype_dict`: `from_pretrained(dtype={name: ..., "default": ...})` gives
        the named component its dtype and every other model the default."""
        self.make(components).save_pretrained(tmp_path, safe_serialization=False)
        first = next(iter(components))
        dtypes = {first: torch.bfloat16, "default": torch.float16}
        loaded = self.pipeline_class.from_pretrained(tmp_path, dtype=dtypes)
        for name, part in loaded.components.items():
            if isinstance(part, torch.nn.Module) and hasattr(part, "dtype"):
                assert part.dtype == dtypes.get(name, dtypes["default"]), name

    def test_dtype_alias(self, components, tmp_path) -> None:
        """upstream `test_dtype_alias`: `from_pretrained(dtype=torch.float16)` loads every model in float16."""
        self.make(components).save_pretrained(tmp_path, safe_serialization=False)
        loaded = self.pipeline_class.from_pretrained(tmp_path, dtype=torch.float16)
        assert all(
            part.dtype == torch.float16
            for part in loaded.components.values()
            if isinstance(part, torch.nn.Module) and hasattr(part, "dtype")
        )

    def test_pipeline_with_device_map(self, components, reference_images, tmp_path) -> None:
        """upstream `test_pipeline_with_accelerator_device_map` (on the CPU where there is no
        accelerator, as upstream's `torch_device`): loaded with `device_map`, the images stay (< 1e-4)."""
        self.make(components).save_pretrained(tmp_path)
        loaded = default_attention(self.pipeline_class.from_pretrained(tmp_path, device_map="cpu"))
        loaded.set_progress_bar_config(disable=True)
        assert max_diff(loaded(**self.dummy_inputs())[0], reference_images) < 1e-4

    @cuda
    def test_group_offloading_inference(self, components) -> None:
        """upstream `test_group_offloading_inference` and `test_pipeline_level_group_offloading_inference`:
        block-level and leaf-level group offloading of the text encoders and UNet, and
        pipeline-level leaf offloading, give the same images (< 1e-4)."""
        from diffusers.hooks import apply_group_offloading

        reference = self.make(copy.deepcopy(components)).to("cuda")(**self.dummy_inputs())[0]
        for settings in (dict(offload_type="block_level", num_blocks_per_group=1), dict(offload_type="leaf_level")):
            pipe = self.make(copy.deepcopy(components))
            pipe.unet.enable_group_offload(torch.device("cuda"), **settings)
            for name in ("text_encoder", "text_encoder_2"):
                if getattr(pipe, name, None) is not None:
                    apply_group_offloading(getattr(pipe, name), onload_device=torch.device("cuda"), **settings)
            pipe.vae.to("cuda")
            assert max_diff(pipe(**self.dummy_inputs())[0], reference) < 1e-4
        pipe = self.make(copy.deepcopy(components))
        pipe.enable_group_offload(onload_device="cuda", offload_device="cpu", offload_type="leaf_level")
        assert max_diff(pipe(**self.dummy_inputs())[0], reference) < 1e-4

    def test_pipeline_interrupt(self, components) -> None:
        """upstream `test_pipeline_interrupt` (in each of its SD, SDXL, img2img and inpaint
        classes): a callback that sets `pipe._interrupt` at step 1 returns the latents a full
        run had after step 1."""
        pipe = self.make(components)
        seen = []

        def record(pipe, step, timestep, tensors):
            seen.append(tensors["latents"])
            return tensors

        def interrupt(pipe, step, timestep, tensors):
            if step == 1:
                pipe._interrupt = True
            return tensors

        inputs = {**self.dummy_inputs(), "prompt": "hey", "num_inference_steps": 3}
        del inputs["generator"], inputs["output_type"], inputs["guidance_scale"]
        pipe(**inputs, output_type="np", generator=torch.Generator().manual_seed(0), callback_on_step_end=record)
        stopped = pipe(
            **inputs, output_type="latent", generator=torch.Generator().manual_seed(0), callback_on_step_end=interrupt
        )
        assert torch.allclose(seen[1], stopped.images, atol=1e-4)


# ---------------------------------------------------------------- PipelineLatentTesterMixin


class LatentChecks(PipelineUnderTest):
    """upstream `PipelineLatentTesterMixin`. `image_params`: the image arguments converted
    between types (`image_latents_params`: those also given as latents)."""

    image_params: frozenset[str] = frozenset()
    image_latents_params: frozenset[str] = frozenset()

    def inputs_by_type(self, input_image_type: str = "pt", output_type: str = "np") -> dict:
        """upstream `get_dummy_inputs_by_type`: the image arguments as a (n, 3, H, W) tensor, a
        (n, H, W, 3) array or PIL images."""
        inputs = self.dummy_inputs()
        for name in self.image_params & inputs.keys():
            image = inputs[name]
            if not isinstance(image, torch.Tensor):
                image = VaeImageProcessor.numpy_to_pt(
                    image if isinstance(image, np.ndarray) else VaeImageProcessor.pil_to_numpy(image)
                )
            if input_image_type == "np":
                image = VaeImageProcessor.pt_to_numpy(image)
            elif input_image_type == "pil":
                image = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(image))
            inputs[name] = image
        inputs["output_type"] = output_type
        return inputs

    def test_pt_np_pil_outputs_equivalent(self, components) -> None:
        """upstream `test_pt_np_pil_outputs_equivalent`: "pt" is "np" transposed (< 1e-4), "pil"
        is "np" in 0-255 within 2."""
        pipe = self.make(components)
        outputs = {kind: pipe(**self.inputs_by_type(output_type=kind))[0] for kind in ("pt", "np", "pil")}
        assert max_diff(outputs["pt"].numpy().transpose(0, 2, 3, 1), outputs["np"]) < 1e-4
        assert max_diff(np.array(outputs["pil"][0]), (outputs["np"][0] * 255).round()) < 2.0

    def test_pt_np_pil_inputs_equivalent(self, components) -> None:
        """upstream `test_pt_np_pil_inputs_equivalent`: the image arguments as a tensor, an
        array or PIL give the same images (< 1e-4; PIL's 8 bits < 1e-2)."""
        if not self.image_params:
            pytest.skip("upstream returns at once for a pipeline without image arguments (`image_params` empty)")
        pipe = self.make(components)
        by_type = {kind: pipe(**self.inputs_by_type(input_image_type=kind))[0] for kind in ("pt", "np", "pil")}
        assert max_diff(by_type["pt"], by_type["np"]) < 1e-4
        assert max_diff(by_type["pil"], by_type["np"]) < 1e-2

    def test_latents_input(self, components) -> None:
        """upstream `test_latents_input`: with the image processor neither resizing nor
        normalising, an image given as the VAE's latents (drawn with the call's generator) gives
        the images of the image itself (< 1e-4)."""
        if not self.image_latents_params:
            pytest.skip("upstream returns at once for a pipeline without latent image arguments")
        pipe = self.make(components)
        pipe.image_processor = VaeImageProcessor(do_resize=False, do_normalize=False)
        from_pixels = pipe(**self.inputs_by_type())[0]
        inputs = self.inputs_by_type()
        vae = pipe.vae
        for name in self.image_latents_params & inputs.keys():
            sample = vae.encode(inputs[name]).latent_dist.sample(inputs["generator"])
            inputs[name] = sample * vae.config.scaling_factor
        assert max_diff(pipe(**inputs)[0], from_pixels) < 1e-4

    @pytest.mark.slow  # a ConsistencyDecoderVAE decodes with a UNet of its own: about 25 s on 2 cores
    def test_multi_vae(self, components) -> None:
        """upstream `test_multi_vae`: the pipeline runs with an AutoencoderKL, an
        AsymmetricAutoencoderKL, a ConsistencyDecoderVAE or an AutoencoderTiny, images of the
        same shape."""
        pipe = self.make(components)
        expected = pipe(**self.inputs_by_type(input_image_type="np"))[0].shape
        for vae_class, config in vae_configs(pipe.vae.config.block_out_channels, pipe.vae.config.norm_num_groups):
            components["vae"] = vae_class(**config)
            assert self.make(components)(**self.inputs_by_type(input_image_type="np"))[0].shape == expected, vae_class


# ---------------------------------------------------------------- PipelineKarrasSchedulerTesterMixin


class KarrasSchedulerChecks(PipelineUnderTest):
    """upstream `PipelineKarrasSchedulerTesterMixin`."""

    @pytest.mark.slow  # 15 schedulers: about 100 s on a loaded 2-core machine
    def test_karras_schedulers_shape(self, components) -> None:
        """upstream `test_karras_schedulers_shape`: every Karras scheduler of diffusers runs the
        pipeline (KDPM2 with 5 steps), images of one shape."""
        import diffusers
        from diffusers.schedulers import KarrasDiffusionSchedulers
        from diffusers.utils import is_torchsde_available

        pipe = self.make(components)
        pipe.scheduler.register_to_config(skip_prk_steps=True)  # PNDM without warm-up
        shapes = set()
        for kind in KarrasDiffusionSchedulers:
            if kind.name == "DPMSolverSDEScheduler" and not is_torchsde_available():
                continue  # it needs the optional torchsde package, which upstream's test environment has
            pipe.scheduler = getattr(diffusers, kind.name).from_config(pipe.scheduler.config)
            steps = 5 if "KDPM2" in kind.name else 2
            shapes.add(pipe(**{**self.dummy_inputs(), "num_inference_steps": steps})[0].shape)
        assert len(shapes) == 1


# ---------------------------------------------------------------- IPAdapterTesterMixin


class IPAdapterChecks(PipelineUnderTest):
    """upstream `IPAdapterTesterMixin`, with `tiny_ip_adapter`'s adapters."""

    def ip_inputs(self, **extra) -> dict:
        """upstream `_modify_inputs_for_ip_adapter_test`: numpy images, as a tuple; 4 steps for
        img2img and inpainting (so that some run after `strength`)."""
        inputs = {**self.dummy_inputs(), "output_type": "np", "return_dict": False}
        if self.takes_a_source_image():
            inputs["num_inference_steps"] = 4
        return {**inputs, **extra}

    def _scale_zero_and_large(self, pipe, plain, embeds, zero, large, max_zero=9e-4) -> None:
        pipe.set_ip_adapter_scale(zero)
        assert max_diff(pipe(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0], plain) < max_zero
        pipe.set_ip_adapter_scale(large)
        assert max_diff(pipe(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0], plain) > 1e-2

    def test_ip_adapter_pipeline_signature(self) -> None:
        """upstream `IPAdapterTesterMixin.test_pipeline_signature`: an `IPAdapterMixin` whose
        `__call__` takes `ip_adapter_image` and `ip_adapter_image_embeds`."""
        assert issubclass(self.pipeline_class, IPAdapterMixin)
        assert {"ip_adapter_image", "ip_adapter_image_embeds"} <= set(
            inspect.signature(self.pipeline_class.__call__).parameters
        )

    def test_ip_adapter_images_equal_the_diffusers_pipeline(self, components) -> None:
        """upstream `test_ip_adapter`'s `expected_pipe_slice` (the image without an adapter, stored
        from diffusers' pipeline), made stronger: without an adapter, and with one at scale 42
        given image embeddings, the images equal `peer_class`'s bit for bit."""
        pipe, peer = self.make(components), self.peer(components)
        plain = pipe(**self.ip_inputs())[0]
        assert np.array_equal(plain, peer(**self.ip_inputs())[0])
        pipe.unet._load_ip_adapter_weights(ip_adapter_state_dict(pipe.unet))
        pipe.set_ip_adapter_scale(42.0)
        embeds = [_image_embeds(pipe.unet.config.cross_attention_dim)]
        adapted = pipe(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0]
        assert np.array_equal(adapted, peer(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0])
        assert max_diff(adapted, plain) > 1e-2

    def test_ip_adapter(self, components) -> None:
        """upstream `test_ip_adapter` (CPU tolerance 9e-4): one adapter, then two, at scale 0
        give the images without adapter; at scale 42 they do not."""
        pipe = self.make(components)
        width = pipe.unet.config.cross_attention_dim
        plain = pipe(**self.ip_inputs())[0]
        pipe.unet._load_ip_adapter_weights(ip_adapter_state_dict(pipe.unet))
        self._scale_zero_and_large(pipe, plain, [_image_embeds(width)], 0.0, 42.0)
        pipe.unet._load_ip_adapter_weights([ip_adapter_state_dict(pipe.unet, 1), ip_adapter_state_dict(pipe.unet, 2)])
        self._scale_zero_and_large(pipe, plain, [_image_embeds(width)] * 2, [0.0, 0.0], [42.0, 42.0])

    def test_ip_adapter_cfg(self, components) -> None:
        """upstream `test_ip_adapter_cfg`: image embeddings of one row without guidance, two
        (negative, positive) with it; images of the same shape."""
        pipe = self.make(components)
        width = pipe.unet.config.cross_attention_dim
        pipe.unet._load_ip_adapter_weights(ip_adapter_state_dict(pipe.unet))
        pipe.set_ip_adapter_scale(1.0)
        without = pipe(**self.ip_inputs(ip_adapter_image_embeds=[_image_embeds(width)[0:1]], guidance_scale=1.0))[0]
        guided = pipe(**self.ip_inputs(ip_adapter_image_embeds=[_image_embeds(width)], guidance_scale=7.5))[0]
        assert without.shape == guided.shape

    def test_ip_adapter_masks(self, components) -> None:
        """upstream `test_ip_adapter_masks`: with an `ip_adapter_masks` mask of the image's left
        half, scale 0 gives the image without adapter, scale 42 does not (> 1e-3)."""
        pipe = self.make(components)
        width = pipe.unet.config.cross_attention_dim
        size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        mask = torch.zeros(1, 1, size, size)
        mask[0, :, :, : size // 2] = 1
        plain = pipe(**self.ip_inputs())[0][0, -3:, -3:, -1]
        pipe.unet._load_ip_adapter_weights(ip_adapter_state_dict(pipe.unet))
        masked = dict(
            ip_adapter_image_embeds=[_image_embeds(width)], cross_attention_kwargs={"ip_adapter_masks": [mask]}
        )
        pipe.set_ip_adapter_scale(0.0)
        assert max_diff(pipe(**self.ip_inputs(**masked))[0][0, -3:, -3:, -1], plain) < 1e-4
        pipe.set_ip_adapter_scale(42.0)
        assert max_diff(pipe(**self.ip_inputs(**masked))[0][0, -3:, -3:, -1], plain) > 1e-3

    def test_ip_adapter_faceid(self, components) -> None:
        """upstream `test_ip_adapter_faceid`: a FaceID adapter (4-D image embeddings) at scale 0
        gives the image without adapter, at scale 42 it does not."""
        pipe = self.make(components)
        width = pipe.unet.config.cross_attention_dim
        plain = pipe(**self.ip_inputs())[0][0, -3:, -3:, -1]
        pipe.unet._load_ip_adapter_weights(ip_adapter_state_dict(pipe.unet, face_id=True))
        embeds = [_image_embeds(width, face_id=True)]
        pipe.set_ip_adapter_scale(0.0)
        assert max_diff(pipe(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0][0, -3:, -3:, -1], plain) < 1e-4
        pipe.set_ip_adapter_scale(42.0)
        assert max_diff(pipe(**self.ip_inputs(ip_adapter_image_embeds=embeds))[0][0, -3:, -3:, -1], plain) > 1e-3


# ---------------------------------------------------------------- SDFunctionTesterMixin


class SDFunctionChecks(PipelineUnderTest):
    """upstream `SDFunctionTesterMixin`: the switches of `StableDiffusionMixin` (and SD's own
    `test_stable_diffusion_vae_slicing` / `_vae_tiling`, `test_freeu_enabled` / `_disabled`,
    `test_fused_qkv_projections`, which check the same with SD's settings)."""

    vae_slicing_max_diff = 1e-2

    def test_vae_slicing(self, components) -> None:
        """upstream `test_vae_slicing` (SD's `test_stable_diffusion_vae_slicing`: 3e-3): four
        images decoded one at a time equal the batch decode."""
        pipe = self.make(components)
        inputs = self.dummy_inputs()
        inputs["prompt"] = 4 * [inputs["prompt"]]
        if "image" in inputs:
            inputs["image"] = 4 * [inputs["image"]]
        whole = pipe(**inputs)[0]
        pipe.vae.enable_slicing()
        inputs["generator"] = self.dummy_inputs()["generator"]
        sliced = pipe(**inputs)[0]
        assert max_diff(sliced, whole) < self.vae_slicing_max_diff

    def test_vae_tiling(self, components, reference_images) -> None:
        """upstream `test_vae_tiling`: tiled decoding stays within 0.5 of the plain one, and
        decodes latents of odd sizes."""
        pipe = default_attention(self.make(components))
        pipe.vae.enable_tiling()
        assert max_diff(pipe(**self.dummy_inputs())[0], reference_images) < 5e-1
        with torch.no_grad():
            for shape in [(1, 4, 73, 97), (1, 4, 65, 49)]:
                pipe.vae.decode(torch.zeros(shape))

    def test_freeu(self, components, reference_images) -> None:
        """upstream `test_freeu`: FreeU changes the image; disabling it resets every up block's
        factors and gives the plain image back (< 1e-2)."""
        pipe = default_attention(self.make(components))
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        freeu = pipe(**{**self.dummy_inputs(), "output_type": "np"})[0]
        pipe.disable_freeu()
        assert all(getattr(block, key) is None for block in pipe.unet.up_blocks for key in ("s1", "s2", "b1", "b2"))
        again = pipe(**{**self.dummy_inputs(), "output_type": "np"})[0]
        plain = np.asarray(reference_images)
        if plain.shape[-1] != 3:  # "pt" reference images: (n, 3, H, W)
            plain = plain.transpose(0, 2, 3, 1)
        assert not np.allclose(plain[0, -3:, -3:, -1], freeu[0, -3:, -3:, -1])
        assert np.allclose(plain, again, atol=1e-2)

    def test_fused_qkv_projections(self, components) -> None:
        """upstream `test_fused_qkv_projections`: fusing the attention projections, and unfusing
        them, leaves the image as it was (< 1e-2)."""
        pipe = self.make(components)
        inputs = {**self.dummy_inputs(), "output_type": "np"}
        plain = pipe(**inputs)[0][0, -3:, -3:, -1]
        pipe.fuse_qkv_projections()
        fused = pipe(**{**inputs, "generator": self.dummy_inputs()["generator"]})[0][0, -3:, -3:, -1]
        pipe.unfuse_qkv_projections()
        unfused = pipe(**{**inputs, "generator": self.dummy_inputs()["generator"]})[0][0, -3:, -3:, -1]
        for a, b in ((plain, fused), (fused, unfused), (plain, unfused)):
            assert np.allclose(a, b, atol=1e-2, rtol=1e-2)


# What the siblings of `CLIPConditionedPipeline` (SDXL components, img2img, inpainting) share with
# it, checked by default in tests/test_diffusers_fast_sd.py: its constructor and saving, dtype
# handling, the IP-Adapter mechanism at scale 0 and 42 (their own IP-Adapter images are compared
# with diffusers' by default), the UNet's and VAE's switches, the output conversion. A sibling's
# class runs them with `-m slow`, which keeps the default run short.
SHARED_WITH_TEXT_TO_IMAGE = frozenset(
    {
        "test_save_load_local",
        "test_save_load_optional_components",
        "test_serialization_with_variants",
        "test_loading_with_variants",
        "test_loading_with_incorrect_variants_raises_error",
        "test_dtype_dict",
        "test_dtype_alias",
        "test_pipeline_with_device_map",
        "test_to_dtype",
        "test_layerwise_casting_inference",
        "test_attention_slicing_forward_pass",
        "test_cfg",
        "test_pt_np_pil_outputs_equivalent",
        "test_ip_adapter",
        "test_ip_adapter_cfg",
        "test_ip_adapter_masks",
        "test_ip_adapter_faceid",
        "test_vae_slicing",
        "test_vae_tiling",
        "test_freeu",
        "test_fused_qkv_projections",
    }
)


__all__ = [
    "SHARED_WITH_TEXT_TO_IMAGE",
    "IPAdapterChecks",
    "KarrasSchedulerChecks",
    "LatentChecks",
    "PipelineChecks",
    "PipelineUnderTest",
    "SDFunctionChecks",
    "cuda",
    "default_attention",
    "diffusers_pipeline",
    "max_diff",
    "with_guidance_embedding",
]
