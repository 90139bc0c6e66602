"""The adapter names and components the LoRA methods take (pipelines/lora_loading.py), checked
before anything changes. diffusers' methods, on the same arguments: `delete_adapters` deleted
the names before an unknown one and skipped it without a word, `fuse_lora(adapter_names=...)`
and `set_lora_device` skipped unknown names (nothing fused, no error), `set_adapters([])`
failed with a bare `KeyError: 'unet'`, and `fuse_lora(components="unet")` read the string's
letters as names ("u is not found")."""

from __future__ import annotations

import numpy as np
import pytest
from test_lora_pipeline import pair, run, saved_lora


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return saved_lora(folder / "a", seed=1), saved_lora(folder / "b", seed=2)


def _loaded(loras):
    """(diffusers' SD pipeline, ours), each with adapters "a" and "b" ("b" active, as loaded last)."""
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(loras[0], adapter_name="a")
        pipe.load_lora_weights(loras[1], adapter_name="b")
    return peer, ours


REFUSED = [
    ("set_adapters", dict(adapter_names=[]), ValueError, r"^`adapter_names` must name at least one adapter \("),
    ("set_adapters", dict(adapter_names=3), TypeError, r"^`adapter_names` must be an adapter's name or a list"),
    (
        "set_adapters",
        dict(adapter_names=["a", "typo"]),
        ValueError,
        r"no component holds: \['typo'\]; loaded: \['a', 'b'\]$",
    ),
    ("delete_adapters", dict(adapter_names=["a", "typo"]), ValueError, r"^`adapter_names` names adapters no component"),
    ("delete_adapters", dict(adapter_names=[]), ValueError, r"^`adapter_names` must name at least one adapter"),
    ("fuse_lora", dict(adapter_names=["typo"]), ValueError, r"^`adapter_names` names adapters no component holds"),
    ("fuse_lora", dict(components="unet"), TypeError, r"^`components` must be a list of component names \(of \["),
    ("unfuse_lora", dict(components="unet"), TypeError, r"^`components` must be a list of component names"),
    (
        "set_lora_device",
        dict(adapter_names=["typo"], device="cpu"),
        ValueError,
        r"^`adapter_names` names adapters no component holds",
    ),
]


@pytest.mark.parametrize("method, arguments, error, message", REFUSED, ids=lambda value: str(value)[:30])
def test_a_name_or_component_list_that_does_not_fit_is_refused_before_any_change(
    loras, method, arguments, error, message
) -> None:
    _, ours = _loaded(loras)
    ours.set_adapters(["a", "b"], [0.7, 0.4])
    image, adapters = run(ours), ours.get_list_adapters()
    with pytest.raises(error, match=message):
        getattr(ours, method)(**arguments)
    assert ours.get_list_adapters() == adapters
    assert ours.get_active_adapters() == ["a", "b"]
    assert np.array_equal(run(ours), image)


def test_diffusers_deleted_the_names_before_an_unknown_one(loras) -> None:
    """Why `delete_adapters` checks every name first."""
    peer, _ = _loaded(loras)
    peer.delete_adapters(["a", "typo"])
    assert peer.get_list_adapters() == {"unet": ["b"], "text_encoder": ["b"]}


@pytest.mark.parametrize(
    "calls",
    [
        [("set_adapters", dict(adapter_names="a"))],
        [("set_adapters", dict(adapter_names=("b",), adapter_weights=[0.5]))],
        [("delete_adapters", dict(adapter_names="a"))],
        [("fuse_lora", dict(adapter_names=["a"]))],
        [("fuse_lora", dict(components=("unet",))), ("unfuse_lora", dict(components=["unet"]))],
        [("set_lora_device", dict(adapter_names=["a", "b"], device="cpu"))],
    ],
    ids=["one_name", "a_tuple", "delete_one", "fuse_one", "fuse_a_tuple_of_components", "device"],
)
def test_the_names_and_components_diffusers_takes_give_its_images(loras, calls) -> None:
    peer, ours = _loaded(loras)
    for method, arguments in calls:
        for pipe in (peer, ours):
            getattr(pipe, method)(**arguments)
    assert ours.get_list_adapters() == peer.get_list_adapters()
    assert np.array_equal(run(ours), run(peer))


def test_unfuse_loras_keywords_reach_diffusers_which_warns_of_them() -> None:
    """diffusers' `unfuse_lora` takes the old `unfuse_unet` / `unfuse_text_encoder` keywords
    only to warn that they are ignored: ours passes them on, and warns as it does."""
    peer, ours = pair()
    for pipe in (peer, ours):
        with pytest.warns(FutureWarning, match="`unfuse_text_encoder` to `unfuse_lora\\(\\)` is deprecated"):
            pipe.unfuse_lora(unfuse_text_encoder=False)


def test_fuse_lora_and_set_lora_device_pass_their_arguments_to_diffusers(loras, monkeypatch) -> None:
    """What reaches diffusers' methods once the names are checked: `safe_fusing` (False unless
    given, as there), the keywords, the device."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    _, ours = _loaded(loras)
    received = []
    monkeypatch.setattr(
        StableDiffusionXLLoraLoaderMixin, "fuse_lora", lambda self, *args, **kwargs: received.append((args, kwargs))
    )
    monkeypatch.setattr(
        StableDiffusionXLLoraLoaderMixin, "set_lora_device", lambda self, *args: received.append((args, {}))
    )
    ours.fuse_lora()
    ours.fuse_lora(safe_fusing=True, fuse_unet=True)
    ours.set_lora_device(["a"], "meta")
    components = ["unet", "text_encoder"]
    assert received == [
        ((components, 1.0, False, None), {}),
        ((components, 1.0, True, None), {"fuse_unet": True}),
        ((["a"], "meta"), {}),
    ]
