"""`TextProjection` on its own: the layers it holds for each source, its refusals (whole
messages, in the order the arguments come), what a forward computes (against the matrix product
written here) and a save and load through diffusers' `ModelMixin`."""

from __future__ import annotations

import pytest
import torch

from clipcond.projection import SOURCES, TextProjection


def test_the_sources_are_clip_and_t5() -> None:
    assert SOURCES == ("clip", "t5")


@pytest.mark.parametrize(
    "clip_width, t5_width, widths",
    [(12, None, {"clip": 12}), (None, 20, {"t5": 20}), (12, 20, {"clip": 12, "t5": 20}), (1, 1, {"clip": 1, "t5": 1})],
)
def test_one_linear_layer_per_source_given(clip_width, t5_width, widths) -> None:
    projection = TextProjection(projection_dim=8, clip_width=clip_width, t5_width=t5_width)
    assert projection.input_widths() == widths
    assert list(projection.layers) == list(widths)
    for source in SOURCES:
        assert (source in projection) is (source in widths)
    for source, width in widths.items():
        layer = projection[source]
        assert isinstance(layer, torch.nn.Linear) and layer.bias is not None
        assert (layer.in_features, layer.out_features) == (width, 8)
    config = projection.config
    assert (config.projection_dim, config.clip_width, config.t5_width) == (8, clip_width, t5_width)


def test_a_missing_source_is_a_key_error_naming_the_layers_there_are() -> None:
    projection = TextProjection(projection_dim=4, clip_width=6)
    with pytest.raises(KeyError) as raised:
        projection["t5"]
    assert raised.value.args == ("this TextProjection has no 't5' layer (it has ['clip'])",)
    with pytest.raises(KeyError) as raised:
        projection(torch.zeros(1, 2, 6), source="t5")
    assert raised.value.args == ("this TextProjection has no 't5' layer (it has ['clip'])",)
    assert "t5" not in projection and 3 not in projection


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(projection_dim=0, clip_width=4), "`projection_dim` must be a positive int, got 0"),
        (dict(projection_dim=-3, clip_width=4), "`projection_dim` must be a positive int, got -3"),
        (dict(projection_dim=True, clip_width=4), "`projection_dim` must be a positive int, got True"),
        (dict(projection_dim=8.0, clip_width=4), "`projection_dim` must be a positive int, got 8.0"),
        (dict(projection_dim=None, clip_width=4), "`projection_dim` must be a positive int, got None"),
        (dict(projection_dim="8", clip_width=4), "`projection_dim` must be a positive int, got '8'"),
        (dict(projection_dim=8, clip_width=0), "`clip_width` must be a positive int or None, got 0"),
        (dict(projection_dim=8, clip_width=False), "`clip_width` must be a positive int or None, got False"),
        (dict(projection_dim=8, clip_width="4"), "`clip_width` must be a positive int or None, got '4'"),
        (dict(projection_dim=8, clip_width=4, t5_width=-1), "`t5_width` must be a positive int or None, got -1"),
        (dict(projection_dim=8, t5_width=2.5), "`t5_width` must be a positive int or None, got 2.5"),
        (dict(projection_dim=8), "a TextProjection needs `clip_width` and/or `t5_width`"),
        # the first bad argument is named, and a bad width before the missing layers
        (dict(projection_dim=0, clip_width=0), "`projection_dim` must be a positive int, got 0"),
        (dict(projection_dim=0), "`projection_dim` must be a positive int, got 0"),
        (dict(projection_dim=8, clip_width=0, t5_width=0), "`clip_width` must be a positive int or None, got 0"),
    ],
)
def test_bad_widths_are_refused_whole(arguments, message) -> None:
    with pytest.raises(ValueError) as raised:
        TextProjection(**arguments)
    assert str(raised.value) == message


def test_forward_is_each_sources_own_affine_map() -> None:
    torch.manual_seed(0)
    projection = TextProjection(projection_dim=3, clip_width=5, t5_width=2)
    clip_tokens, t5_tokens = torch.randn(2, 4, 5), torch.randn(2, 7, 2)
    for source, tokens in (("clip", clip_tokens), ("t5", t5_tokens)):
        weight, bias = projection.layers[source].weight, projection.layers[source].bias
        expected = torch.einsum("bsi,oi->bso", tokens, weight) + bias
        assert torch.allclose(projection(tokens, source=source), expected, atol=1e-6)
    assert torch.equal(projection(clip_tokens), projection(clip_tokens, source="clip"))  # "clip" by default


def test_saved_and_loaded_back_through_diffusers(tmp_path) -> None:
    torch.manual_seed(1)
    projection = TextProjection(projection_dim=6, clip_width=4, t5_width=3)
    projection.save_pretrained(tmp_path / "text_projection")
    assert sorted(path.name for path in (tmp_path / "text_projection").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = TextProjection.from_pretrained(tmp_path / "text_projection")
    assert loaded.input_widths() == {"clip": 4, "t5": 3}
    assert (loaded.config.projection_dim, loaded.config.clip_width, loaded.config.t5_width) == (6, 4, 3)
    for name, tensor in projection.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
