"""Contrastive losses against transformers' CLIPModel / SiglipModel losses, direct formulas, and,
over two gloo processes launched by accelerate, against the single-process loss on the global batch."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipcond.losses import (
    MAX_LOGIT_SCALE,
    SIGLIP_INIT_LOGIT_BIAS,
    SIGLIP_INIT_LOGIT_SCALE,
    clamp_logit_scale,
    clip_loss,
    gather_features,
    siglip_loss,
)


def _unit_rows(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _features(batch: int = 5, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return _unit_rows(g, batch, dim), _unit_rows(g, batch, dim), _unit_rows(g, batch, dim)


# --- formulas, written pair by pair -------------------------------------------------------------


def _clip_formula(images, texts, log_scale: float, negatives=None) -> float:
    """Mean over images of -log softmax over captions (+ negatives), and over captions of -log
    softmax over images; the two directions averaged."""
    scale = math.exp(min(max(log_scale, 0.0), math.log(100)))
    n = len(images)
    columns = list(texts) + (list(negatives) if negatives is not None else [])
    image_side = text_side = 0.0
    for i in range(n):
        pair = scale * float(images[i] @ texts[i])
        image_side -= pair - math.log(sum(math.exp(scale * float(images[i] @ c)) for c in columns))
        text_side -= pair - math.log(sum(math.exp(scale * float(texts[i] @ images[j])) for j in range(n)))
    return (image_side / n + text_side / n) / 2


def _siglip_formula(images, texts, log_scale: float, bias: float, negatives=None) -> float:
    scale = math.exp(log_scale)
    n = len(images)
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            logit = scale * float(images[i] @ texts[j]) + bias
            total -= math.log(1 / (1 + math.exp(-label * logit)))
        for negative in negatives if negatives is not None else []:
            logit = scale * float(images[i] @ negative) + bias
            total -= math.log(1 / (1 + math.exp(logit)))
    return total / n


# --- peers: transformers' own losses -------------------------------------------------------------


def _token_ids(generator: torch.Generator, batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # Random tokens below the eos id, eos last: CLIP (eos_token_id != 2) pools at the first eos.
    ids = torch.randint(1, vocab_size - 2, (batch, length), generator=generator)
    ids[:, -1] = vocab_size - 1
    return ids


def _tiny_tower_settings(vocab_size: int, max_positions: int) -> tuple[dict, dict]:
    """Text and vision settings of a tiny two-tower peer model (CLIP or SigLIP); eos is the last id."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0,
    )
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2
    )
    return text, vision


def test_clip_loss_equals_transformers_clip_model_loss_and_gradients():
    from transformers import CLIPConfig, CLIPModel

    vocab_size = 99
    text, vision = _tiny_tower_settings(vocab_size, max_positions=16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    g = torch.Generator().manual_seed(1)
    input_ids = _token_ids(g, 6, 10, vocab_size)
    pixel_values = torch.randn(6, 3, 32, 32, generator=g)

    outputs = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    ours = clip_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale)
    torch.testing.assert_close(ours, outputs.loss, rtol=0, atol=1e-6)

    # Gradients with respect to the loss's own inputs: the rest of backward is the same chain rule.
    inputs = [outputs.image_embeds, outputs.text_embeds, model.logit_scale]
    expected = torch.autograd.grad(outputs.loss, inputs, retain_graph=True)
    got = torch.autograd.grad(ours, inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert got[2].abs() > 1e-3  # the scale's gradient is compared, and it is not trivially 0


def test_siglip_loss_equals_transformers_siglip_model_loss():
    from transformers import SiglipConfig, SiglipModel

    vocab_size = 99
    text, vision = _tiny_tower_settings(vocab_size, max_positions=10)
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # the paper's starting point, shaped (1,) as transformers stores them
        model.logit_scale.fill_(SIGLIP_INIT_LOGIT_SCALE)
        model.logit_bias.fill_(SIGLIP_INIT_LOGIT_BIAS)
    g = torch.Generator().manual_seed(1)
    input_ids = _token_ids(g, 6, 10, vocab_size)
    pixel_values = torch.randn(6, 3, 32, 32, generator=g)

    outputs = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    ours = siglip_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale, model.logit_bias)
    torch.testing.assert_close(ours, outputs.loss, rtol=0, atol=1e-6)
    inputs = [outputs.image_embeds, outputs.text_embeds, model.logit_scale, model.logit_bias]
    expected = torch.autograd.grad(outputs.loss, inputs, retain_graph=True)
    got = torch.autograd.grad(ours, inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert got[2].abs() > 1e-3 and got[3].abs() > 1e-3


# --- formulas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_negatives", [False, True])
def test_siglip_loss_equals_the_pairwise_formula(with_negatives):
    images, texts, negatives = _features()
    negatives = negatives if with_negatives else None
    log_scale, bias = 1.7, -3.0
    ours = siglip_loss(
        images,
        texts,
        torch.tensor(log_scale, dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64),
        negative_text_features=negatives,
    )
    assert ours.item() == pytest.approx(_siglip_formula(images, texts, log_scale, bias, negatives), abs=1e-10)


def test_hard_negatives_equal_the_formula_and_only_raise_the_loss():
    images, texts, negatives = _features()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    without = clip_loss(images, texts, log_scale)
    with_negatives = clip_loss(images, texts, log_scale, negative_text_features=negatives)
    assert without.item() == pytest.approx(_clip_formula(images, texts, log_scale.item()), abs=1e-10)
    assert with_negatives.item() == pytest.approx(_clip_formula(images, texts, log_scale.item(), negatives), abs=1e-10)
    assert with_negatives > without  # more competitors in the image -> text softmax

    # The text -> image direction ignores the negatives: only the image side of the loss moves.
    scale = log_scale.exp()
    labels = torch.arange(len(images))
    text_side = F.cross_entropy(scale * texts @ images.T, labels)
    image_side = F.cross_entropy(scale * images @ torch.cat([texts, negatives]).T, labels)
    torch.testing.assert_close(with_negatives, (image_side + text_side) / 2, rtol=0, atol=1e-12)

    bias = torch.tensor(SIGLIP_INIT_LOGIT_BIAS, dtype=torch.float64)
    siglip_scale = torch.tensor(SIGLIP_INIT_LOGIT_SCALE, dtype=torch.float64)
    assert siglip_loss(images, texts, siglip_scale, bias, negative_text_features=negatives) > siglip_loss(
        images, texts, siglip_scale, bias
    )


# --- the temperature clamp ------------------------------------------------------------------------


def test_clip_logit_scale_is_clamped_to_100_with_zero_gradient_beyond():
    images, texts, _ = _features()
    too_big = torch.tensor(math.log(1000), dtype=torch.float64, requires_grad=True)
    at_max = torch.tensor(math.log(100), dtype=torch.float64)
    loss = clip_loss(images, texts, too_big)
    torch.testing.assert_close(loss, clip_loss(images, texts, at_max), rtol=0, atol=0)
    assert loss.item() == pytest.approx(_clip_formula(images, texts, math.log(100)), abs=1e-10)
    loss.backward()
    assert too_big.grad == 0

    too_small = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    clip_loss(images, texts, too_small).backward()
    assert too_small.grad == 0
    assert clamp_logit_scale(too_small).exp().item() == 1.0

    inside = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    clamped = clamp_logit_scale(inside)
    assert clamped.item() == 2.0
    clamped.backward()
    assert inside.grad == 1.0
    assert MAX_LOGIT_SCALE == math.log(100)


def test_siglip_scale_is_not_clamped():
    # Trained SigLIP models sit above exp(t') = 100; the sigmoid loss keeps the paper's free scale.
    images, texts, _ = _features()
    log_scale, bias = math.log(120), -12.0
    ours = siglip_loss(images, texts, torch.tensor(log_scale, dtype=torch.float64), torch.tensor(bias))
    assert ours.item() == pytest.approx(_siglip_formula(images, texts, log_scale, bias), abs=1e-10)
    capped = siglip_loss(images, texts, torch.tensor(MAX_LOGIT_SCALE, dtype=torch.float64), torch.tensor(bias))
    assert abs(ours.item() - capped.item()) > 1e-3


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((4, 8), (5, 8), None), r"text_features .*\(4, 8\).*got \(5, 8\)"),
        (((4, 8), (4, 6), None), r"text_features .*\(4, 8\).*got \(4, 6\)"),
        (((4, 8), (4, 8), (3, 8)), r"negative_text_features .*\(4, 8\).*got \(3, 8\)"),
        (((8,), (8,), None), r"image_features must be \(batch, dim\).*got shape \(8,\)"),
        (((0, 8), (0, 8), None), r"image_features must be \(batch, dim\) with batch >= 1"),
    ],
)
def test_mismatched_shapes_are_rejected_by_name(loss_name, shapes, message):
    image_shape, text_shape, negative_shape = shapes
    args = [torch.zeros(image_shape), torch.zeros(text_shape), torch.tensor(1.0)]
    if loss_name == "siglip":
        args.append(torch.tensor(-10.0))
    loss = clip_loss if loss_name == "clip" else siglip_loss
    negatives = torch.zeros(negative_shape) if negative_shape is not None else None
    with pytest.raises(ValueError, match=message):
        loss(*args, negative_text_features=negatives)


def test_scale_and_bias_of_more_than_one_element_are_rejected():
    images, texts, _ = _features()
    with pytest.raises(ValueError, match=r"logit_scale must be a one-element tensor .*got \(2,\)"):
        clip_loss(images, texts, torch.ones(2))
    with pytest.raises(ValueError, match=r"logit_scale must be a one-element tensor .*got \(1, 1\)"):
        clip_loss(images, texts, torch.ones(1, 1))
    with pytest.raises(ValueError, match=r"logit_bias must be a one-element tensor .*got float"):
        siglip_loss(images, texts, torch.tensor(1.0), -10.0)
    with pytest.raises(ValueError, match=r"^logit_scale must be a one-element tensor .*got \(2,\)"):
        siglip_loss(images, texts, torch.ones(2), torch.tensor(-10.0))


def test_gather_features_is_the_identity_in_one_process():
    features = torch.randn(3, 4)
    assert gather_features(features) is features
    labels = torch.randn(3)  # (batch,): any tensor with a batch axis
    assert gather_features(labels) is labels
    with pytest.raises(ValueError, match=r"^features must have a batch axis, got shape \(\)$"):
        gather_features(torch.tensor(1.0))


def test_losses_compute_on_the_features_device():
    """The labels are made on the features' device (meta stands in for an accelerator here:
    cross-entropy refuses labels on another device)."""
    images, texts = torch.randn(4, 3, device="meta"), torch.randn(4, 3, device="meta")
    scale, bias = torch.tensor(2.0, device="meta"), torch.tensor(-1.0, device="meta")
    assert clip_loss(images, texts, scale).device.type == "meta"
    assert siglip_loss(images, texts, scale, bias).device.type == "meta"


# --- two processes (gloo, launched by accelerate's debug_launcher) ---------------------------------

_GLOBAL_BATCH, _WORLD_SIZE = 8, 2
_LOCAL_BATCH = _GLOBAL_BATCH // _WORLD_SIZE
_IMAGE_IN, _TEXT_IN, _EMBED = 12, 10, 6
_CASES = ("clip", "clip_negatives", "siglip", "siglip_negatives")


class _Towers(nn.Module):
    """Two linear towers and the temperature (and bias, for SigLIP): a two-tower model in miniature."""

    def __init__(self, sigmoid: bool):
        super().__init__()
        self.image = nn.Linear(_IMAGE_IN, _EMBED)
        self.text = nn.Linear(_TEXT_IN, _EMBED)
        init = SIGLIP_INIT_LOGIT_SCALE if sigmoid else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS)) if sigmoid else None

    def forward(self, images, texts, negatives=None):
        image_features = F.normalize(self.image(images), dim=-1)
        text_features = F.normalize(self.text(texts), dim=-1)
        negative_features = F.normalize(self.text(negatives), dim=-1) if negatives is not None else None
        return image_features, text_features, negative_features, self.logit_scale, self.logit_bias


def _towers(case: str) -> _Towers:
    torch.manual_seed(0)
    return _Towers(sigmoid=case.startswith("siglip"))


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return (
        torch.randn(_GLOBAL_BATCH, _IMAGE_IN, generator=g),
        torch.randn(_GLOBAL_BATCH, _TEXT_IN, generator=g),
        torch.randn(_GLOBAL_BATCH, _TEXT_IN, generator=g),
    )


def _case_loss(case: str, model: nn.Module, images, texts, negatives) -> torch.Tensor:
    image_features, text_features, negative_features, logit_scale, logit_bias = model(
        images, texts, negatives if case.endswith("negatives") else None
    )
    if case.startswith("clip"):
        return clip_loss(image_features, text_features, logit_scale, negative_text_features=negative_features)
    return siglip_loss(image_features, text_features, logit_scale, logit_bias, negative_text_features=negative_features)


def _distributed_worker(out_dir: str) -> None:
    """One rank: DDP-wrapped towers on this rank's half of the global batch, results saved to a file."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    # debug_launcher forks. A forked child inherits the parent's accelerate singletons (start from a
    # clean state) and its OpenMP pool, which hangs if the child runs a parallel region: keep the
    # child on one thread (accelerate would otherwise set its own count, unless OMP_NUM_THREADS is set).
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    rows = slice(rank * _LOCAL_BATCH, (rank + 1) * _LOCAL_BATCH)
    images, texts, negatives = _global_batch()

    results: dict = {
        "distributed_type": str(accelerator.distributed_type),
        "multi_cpu": accelerator.distributed_type == DistributedType.MULTI_CPU,
        "world_size": accelerator.num_processes,
        "gathered": gather_features(images[rows]),
    }
    for case in _CASES:
        model = accelerator.prepare(_towers(case))
        loss = _case_loss(case, model, images[rows], texts[rows], negatives[rows])
        accelerator.backward(loss)
        results[case] = {
            "is_ddp": isinstance(model, nn.parallel.DistributedDataParallel),
            "loss": loss.detach(),
            "mean_loss": accelerator.reduce(loss.detach(), reduction="mean"),
            "grads": {name: p.grad.clone() for name, p in accelerator.unwrap_model(model).named_parameters()},
        }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    # The process group is left to die with the process: destroying it would delete debug_launcher's
    # rendezvous file, which the launcher removes itself afterwards (and fails if it is gone).
    accelerator.wait_for_everyone()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    from accelerate import debug_launcher

    out_dir = tmp_path_factory.mktemp("losses_ddp")
    debug_launcher(_distributed_worker, args=(str(out_dir),), num_processes=_WORLD_SIZE)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(_WORLD_SIZE)]


def test_two_processes_gather_in_rank_order(distributed_results):
    images, _, _ = _global_batch()
    for result in distributed_results:
        assert result["multi_cpu"], result["distributed_type"]
        assert result["world_size"] == _WORLD_SIZE
        torch.testing.assert_close(result["gathered"], images, rtol=0, atol=0)


@pytest.mark.parametrize("case", _CASES)
def test_two_processes_match_one_process_on_the_global_batch(distributed_results, case):
    model = _towers(case)
    reference = _case_loss(case, model, *_global_batch())
    reference.backward()
    expected_grads = {name: p.grad for name, p in model.named_parameters()}

    ranks = [result[case] for result in distributed_results]
    assert all(rank["is_ddp"] for rank in ranks)
    rank_mean = torch.stack([rank["loss"] for rank in ranks]).mean()
    torch.testing.assert_close(rank_mean, reference.detach(), rtol=0, atol=1e-5)
    for rank in ranks:
        torch.testing.assert_close(rank["mean_loss"], reference.detach(), rtol=0, atol=1e-5)
        assert rank["grads"].keys() == expected_grads.keys()
        for name, grad in rank["grads"].items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=0, atol=1e-5, msg=name)

    # Without the gather each rank would train on a smaller-batch objective: a different number.
    images, texts, negatives = _global_batch()
    halves = [slice(r * _LOCAL_BATCH, (r + 1) * _LOCAL_BATCH) for r in range(_WORLD_SIZE)]
    ungathered = sum(_case_loss(case, model, images[h], texts[h], negatives[h]) for h in halves) / _WORLD_SIZE
    assert abs(ungathered.item() - reference.item()) > 1e-3


def test_gather_features_is_the_identity_with_a_world_of_one(tmp_path):
    # Placed after the two-process tests: debug_launcher forks, and the child must not inherit a group.
    store = torch.distributed.FileStore(str(tmp_path / "rendezvous"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        features = torch.randn(3, 4)
        assert gather_features(features) is features
        images, texts, _ = _features()
        log_scale = torch.tensor(2.0, dtype=torch.float64)
        assert clip_loss(images, texts, log_scale).item() == pytest.approx(_clip_formula(images, texts, 2.0), abs=1e-10)
    finally:
        torch.distributed.destroy_process_group()
