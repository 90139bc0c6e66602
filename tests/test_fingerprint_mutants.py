"""Weights fingerprints on their own, with tiny modules (no encoder): what `weights_hash` reads
(names, module order, dtypes, shapes, bytes, adapter settings), when `WeightsWatch.state()`
changes (in-place writes, replaced tensors, accelerate-placed weights, adapter settings) and how
often `content_hash` reads the bytes. Written against the mutation run of issue 24
(benchmarks/results/mutation.md)."""

from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing._internal.two_tensor import TwoTensor

import clipcond.fingerprint as fingerprint
from clipcond.fingerprint import WeightsWatch, weights_hash


class Holder(nn.Module):
    """Parameters by name, nothing else."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_parameter(name, nn.Parameter(tensor.clone(), requires_grad=False))


class AdapterLayer(nn.Module):
    """The attributes of a peft LoRA layer that `weights_hash` reads (peft's `LoraLayer` has
    them): scaling per adapter, the active and merged adapters, whether adapters are off."""

    def __init__(self, scaling: dict, active=("default",), **extra) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 2), requires_grad=False)
        self.scaling = dict(scaling)
        self.active_adapters = list(active)
        for name, value in extra.items():
            setattr(self, name, value)


class Hooked(nn.Module):
    """A module whose weights an accelerate hook places (`enable_model_cpu_offload`)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)
        self.inner._hf_hook = object()


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def test_the_hash_is_64_hex_digits_and_the_same_for_equal_weights():
    digest = weights_hash([_linear()])
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert weights_hash([copy.deepcopy(_linear())]) == digest


def test_the_hash_reads_every_byte_name_dtype_and_shape():
    values = torch.arange(6.0)
    base = weights_hash([Holder(w=values)])
    changed = values.clone()
    changed[5] = 5.5
    others = [
        Holder(w=changed),  # one value
        Holder(v=values),  # the name
        Holder(w=values.reshape(2, 3)),  # the shape, same bytes
        Holder(w=values.view(torch.int32)),  # the dtype, same bytes
    ]
    hashes = {weights_hash([other]) for other in others}
    assert len(hashes) == len(others) and base not in hashes


def test_the_hash_knows_which_module_holds_a_tensor():
    a, b = torch.ones(2), torch.zeros(2)
    together = weights_hash([Holder(a=a, b=b), Holder()])
    apart = weights_hash([Holder(a=a), Holder(b=b)])
    assert together != apart


def test_the_hash_reads_strided_tensors_in_their_logical_order():
    values = torch.arange(6.0).reshape(2, 3)
    assert weights_hash([Holder(w=values.t())]) == weights_hash([Holder(w=values.t().contiguous())])


def test_weights_on_the_meta_device_are_refused_by_name():
    with torch.device("meta"):
        module = nn.Linear(2, 2)
    with pytest.raises(
        ValueError,
        match=r"^cannot fingerprint weights on the meta device \(0\.weight\): they have no values, and no "
        r"accelerate offload hook holds any for them .*; load its weights, or dispatch it with accelerate, first$",
    ):
        weights_hash([module])


def _with_adapter(**settings) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), AdapterLayer(**settings))


def test_each_adapter_setting_changes_the_hash_and_the_state():
    base = dict(scaling={"a": 1.0, "b": 2.0}, active=("a",), merged_adapters=[], disable_adapters=False)
    variants = [
        {**base, "scaling": {"a": 1.0, "b": 3.0}},
        {**base, "active": ("b",)},
        {**base, "merged_adapters": ["a"]},
        {**base, "disable_adapters": True},
    ]
    torch.manual_seed(0)
    reference = _with_adapter(**base)
    hashes = set()
    for settings in variants:
        torch.manual_seed(0)
        module = _with_adapter(**settings)
        hashes.add(weights_hash([module]))
        assert WeightsWatch([module]).state()[2] != WeightsWatch([reference]).state()[2]
    assert len(hashes) == len(variants) and weights_hash([reference]) not in hashes


def test_adapter_settings_are_read_whatever_their_order_and_with_peft_defaults():
    torch.manual_seed(0)
    explicit = _with_adapter(scaling={"a": 1.0, "b": 2.0}, merged_adapters=(), disable_adapters=False)
    torch.manual_seed(0)
    defaults = _with_adapter(scaling={"b": 2.0, "a": 1.0})
    assert weights_hash([explicit]) == weights_hash([defaults])


def test_modules_that_only_look_like_adapters_are_ignored():
    """An attention layer's float `scaling`, or a dict `scaling` on a module without adapters, is
    no adapter setting."""
    attention = nn.Linear(2, 2)
    attention.scaling = 0.125
    attention.active_adapters = ["default"]
    table = nn.Linear(2, 2)
    table.scaling = {"a": 1.0}
    for module in (attention, table):
        plain = copy.deepcopy(module)
        del plain.scaling
        assert weights_hash([module]) == weights_hash([plain])
        assert WeightsWatch([module]).state()[2] == ((),)


def test_the_state_changes_with_in_place_writes_and_replaced_tensors():
    module = _linear()
    watch = WeightsWatch([module])
    first = watch.state()
    assert watch.state() == first
    with torch.no_grad():
        module.weight.add_(0.0)  # same values, a write all the same
    written = watch.state()
    assert written != first
    module.bias = nn.Parameter(module.bias.detach().clone())  # the same values in a new tensor
    replaced = watch.state()
    assert replaced != written and replaced[0] == written[0] + 1
    assert watch.state() == replaced


def test_weights_placed_by_a_hook_may_move_but_not_change_dtype():
    module = Hooked()
    watch = WeightsWatch([module])
    first = watch.state()
    module.inner.weight.data = module.inner.weight.data.clone()  # a new storage, as offload does
    assert watch.state() == first
    module.inner.weight.data = module.inner.weight.data.double()
    assert watch.state() != first

    plain = nn.Linear(2, 2)
    plain_watch = WeightsWatch([plain])
    before = plain_watch.state()
    plain.weight.data = plain.weight.data.clone()
    assert plain_watch.state() != before


def test_content_hash_reads_the_bytes_once_per_state(monkeypatch):
    calls = []
    real_digest = fingerprint._tensor_digest

    def counting_digest(modules):
        calls.append(1)
        return real_digest(modules)

    monkeypatch.setattr(fingerprint, "_tensor_digest", counting_digest)
    module = _linear()
    watch = WeightsWatch([module])
    first = watch.content_hash()
    assert watch.content_hash() == first and len(calls) == 1
    with torch.no_grad():
        module.weight.mul_(2.0)
    second = watch.content_hash()
    assert second != first and len(calls) == 2
    assert watch.content_hash() == second and len(calls) == 2
    assert second == weights_hash([module])


def test_the_hash_is_put_together_once_per_state(monkeypatch):
    """Between two states nothing is computed again, the adapter settings' part included."""
    calls = []
    real = fingerprint._with_adapter_settings
    monkeypatch.setattr(fingerprint, "_with_adapter_settings", lambda *args: calls.append(1) or real(*args))
    module = _linear()
    watch = WeightsWatch([module])
    first = watch.content_hash()
    assert watch.content_hash() == first and watch.content_hash() == first and len(calls) == 1
    watch.mark_written()
    assert watch.content_hash() == first and len(calls) == 2


def test_new_tensors_after_a_noted_write_never_bring_back_an_earlier_state():
    """Under a placing hook a weight's mark is its version, dtype and device: a new tensor of
    version 0 after `mark_written` marks as the first did, so only the generation, which only
    grows, tells the two apart."""
    module = Hooked()
    module.inner.weight = nn.Parameter(torch.ones(2, 2))
    module.inner.bias = nn.Parameter(torch.ones(2))
    watch = WeightsWatch([module])
    first = watch.state()
    watch.mark_written()
    noted = watch.state()
    module.inner.weight = nn.Parameter(torch.ones(2, 2))
    replaced = watch.state()
    assert len({first, noted, replaced}) == 3
    assert first[1] == replaced[1]  # the marks alone cannot tell


def test_a_changed_adapter_scale_changes_the_hash_without_reading_the_bytes_again(monkeypatch):
    """A call's LoRA scale is set and undone around every encode: the hash follows it (equal to
    `weights_hash` read afresh) from the bytes read once; a merge reads them again (peft writes
    the merged weights through `.data`, which no version counter sees)."""
    calls = []
    real_digest = fingerprint._tensor_digest
    monkeypatch.setattr(fingerprint, "_tensor_digest", lambda modules: calls.append(1) or real_digest(modules))
    torch.manual_seed(0)
    module = _with_adapter(scaling={"a": 1.0}, active=("a",), merged_adapters=[], disable_adapters=False)
    layer = module[1]
    watch = WeightsWatch([module])
    plain = watch.content_hash()
    layer.scaling["a"] = 0.5
    half = watch.content_hash()
    layer.scaling["a"] = 1.0
    assert watch.content_hash() == plain and half != plain and len(calls) == 1
    layer.scaling["a"] = 0.5
    assert watch.content_hash() == half and len(calls) == 1
    assert half == fingerprint._with_adapter_settings(real_digest([module]), [module])  # read afresh
    layer.merged_adapters = ["a"]
    layer.weight.data += 1.0  # as peft merges: through .data
    merged = watch.content_hash()
    assert len(calls) == 2 and merged not in (plain, half)
    assert merged == fingerprint._with_adapter_settings(real_digest([module]), [module])


# ------------------------------------------------------------------ the hash as a formula


def _reference_hash(parts: list[tuple[str, torch.Tensor | None]], modules: int) -> str:
    """blake2b (32 bytes) of each header and the bytes of its tensor (None: a header alone),
    then each module's adapter settings (none here): the format `weights_hash` documents,
    rebuilt in the test so that the on-disk cache keys of plain weights stay what they were."""
    digest = hashlib.blake2b(digest_size=32)
    for header, tensor in parts:
        digest.update(header.encode())
        if tensor is not None:
            digest.update(tensor.contiguous().numpy().tobytes())
    for index in range(modules):
        digest.update(f"{index}|adapters|()".encode())
    return digest.hexdigest()


def test_plain_weights_hash_to_their_names_dtypes_shapes_and_bytes_only():
    weight = torch.arange(6.0).reshape(2, 3)
    counts = torch.tensor([3, 1], dtype=torch.int64)
    modules = [Holder(w=weight), Holder(n=counts)]
    expected = _reference_hash([("0.w|torch.float32|(2, 3)", weight), ("1.n|torch.int64|(2,)", counts)], 2)
    assert weights_hash(modules) == expected


def test_a_tensor_subclass_hashes_its_type_context_and_inner_tensors():
    """A traceable wrapper subclass (torchao's quantized tensors are; torch's test `TwoTensor`
    stands in): its header names its type and flatten context, then each inner tensor follows
    with its own header and bytes."""
    inner_a, inner_b = torch.arange(6.0).reshape(2, 3), torch.full((2, 3), 0.5)
    module = nn.Module()
    module.register_buffer("t", TwoTensor(inner_a, inner_b))
    expected = _reference_hash(
        [
            ("0.t|torch.float32|(2, 3)|TwoTensorNone", None),
            ("0.t.a|torch.float32|(2, 3)", inner_a),
            ("0.t.b|torch.float32|(2, 3)", inner_b),
        ],
        1,
    )
    assert weights_hash([module]) == expected


# ------------------------------------------------------------------ bitsandbytes' scales


def _four_bit_layer() -> nn.Linear:
    """A layer whose weight carries a bitsandbytes 4-bit `quant_state` (its block scales
    `absmax`, and the nested `state2.absmax`) as a Python attribute, as `Params4bit` does."""
    layer = nn.Linear(2, 2)
    layer.weight.quant_state = SimpleNamespace(absmax=torch.ones(2), state2=SimpleNamespace(absmax=torch.ones(1)))
    return layer


@pytest.mark.parametrize("path", [("absmax",), ("state2", "absmax")])
def test_the_scales_of_a_four_bit_weight_are_hashed_and_watched(path):
    layer = _four_bit_layer()
    watch = WeightsWatch([layer])
    before_hash, before_state = weights_hash([layer]), watch.state()
    holder = layer.weight.quant_state
    for attribute in path[:-1]:
        holder = getattr(holder, attribute)
    with torch.no_grad():
        getattr(holder, path[-1]).mul_(2.0)  # a scale written in place, the packed weight untouched
    assert weights_hash([layer]) != before_hash
    assert watch.state() != before_state


def test_the_tensors_behind_a_weight_are_named_by_its_path():
    """A 4-bit weight's scales by where they hang (their names enter the hash); each watched
    tensor by the path of its weight from the module given, an 8-bit scale as `<layer>.SCB`."""
    layer = _four_bit_layer()
    assert [name for name, _ in fingerprint.stored_tensors("weight", layer.weight)] == [
        "weight",
        "weight.quant_state.absmax",
        "weight.quant_state.state2.absmax",
    ]
    layer = nn.Linear(2, 2)
    layer.weight.SCB = torch.ones(2)
    assert [path for path, _ in fingerprint._watched_tensors(list(layer.named_modules()))] == ["weight", "bias", "SCB"]
    wrapped = nn.Sequential(layer)
    watched = fingerprint._watched_tensors(list(wrapped.named_modules()))
    assert [path for path, _ in watched] == ["0.weight", "0.bias", "0.SCB"]
    assert watched[2][1] is layer.weight.SCB


@pytest.mark.parametrize("on", ["weight", "layer"])
def test_an_eight_bit_scale_is_watched_on_the_weight_and_on_the_layer(on):
    """bitsandbytes' 8-bit `SCB` sits on the weight until the first forward, then on the
    layer's `state`: a write to it is a change wherever it is."""
    layer = nn.Linear(2, 2)
    scale = torch.ones(2)
    if on == "weight":
        layer.weight.SCB = scale
    else:
        layer.state = SimpleNamespace(SCB=scale)
    watch = WeightsWatch([layer])
    before = watch.state()
    with torch.no_grad():
        scale.mul_(2.0)
    assert watch.state() != before
