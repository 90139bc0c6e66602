"""Accumulation that keeps the contrastive batch whole equals one step on the full batch."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipcond.training.clip.contrastive_step import contrastive_backward

REPO = Path(__file__).resolve().parents[1]


def _loss(scale):
    def loss_fn(images, texts):
        images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        logits = scale.exp() * images @ texts.T
        labels = torch.arange(len(images))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return loss_fn


def _towers(sizes=(4, 4, 4)):
    """Two toy towers, the temperature, and 12 rows cut in micro-batches of `sizes` rows."""
    torch.manual_seed(0)
    image_tower, text_tower = nn.Linear(6, 4), nn.Embedding(20, 4)
    scale = nn.Parameter(torch.tensor(2.0))
    pixels, tokens = torch.randn(12, 6), torch.randint(0, 20, (12,))

    def encode(batch):
        return image_tower(batch["pixels"]), text_tower(batch["tokens"])

    starts = [sum(sizes[:index]) for index in range(len(sizes) + 1)]
    micro = [{"pixels": pixels[a:b], "tokens": tokens[a:b]} for a, b in zip(starts, starts[1:])]
    return encode, [*image_tower.parameters(), *text_tower.parameters(), scale], scale, micro


@pytest.mark.parametrize("sizes", [(4, 4, 4), (6, 6), (5, 5, 2), (1, 11)], ids=["3x4", "2x6", "5-5-2", "1-11"])
def test_accumulated_gradients_equal_the_full_batch(sizes):
    encode, parameters, scale, micro = _towers(sizes)
    whole = {key: torch.cat([m[key] for m in micro]) for key in micro[0]}
    loss_fn = _loss(scale)
    full = contrastive_backward(encode, loss_fn, [whole], loss_parameters=[scale])
    expected = [p.grad.clone() for p in parameters]
    for p in parameters:
        p.grad = None
    accumulated = contrastive_backward(encode, loss_fn, micro, loss_parameters=[scale])
    torch.testing.assert_close(accumulated, full, rtol=0, atol=1e-6)
    for a, b in zip([p.grad for p in parameters], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The per-micro-batch loss (naive accumulation) is a different, smaller-batch objective.
    naive = sum(loss_fn(*encode(m)) for m in micro) / len(micro)
    assert abs(naive.item() - full.item()) > 1e-3


def _changed(before, after) -> bool:
    if before is None:
        return after is not None
    return not torch.equal(before, after)


def test_every_gradient_arrives_in_the_last_synchronised_backward():
    """DDP (find_unused_parameters=False) all-reduces only when every trained parameter's
    gradient has arrived in the backward it synchronises, the last re-encoding's: the
    temperature's must come there too, not from a backward of the loss outside DDP."""
    encode, parameters, scale, micro = _towers()
    arrived = []  # per backward call: the parameters whose gradient it wrote

    def backward(surrogate):
        before = [None if p.grad is None else p.grad.clone() for p in parameters]
        surrogate.backward()
        arrived.append([_changed(b, p.grad) for b, p in zip(before, parameters)])

    contrastive_backward(encode, _loss(scale), micro, loss_parameters=[scale], backward=backward)
    assert len(arrived) == len(micro)
    assert all(arrived[-1])  # every parameter, the temperature included
    assert [calls[-1] for calls in arrived[:-1]] == [False, False]  # the temperature once, in the last


def test_every_re_encoding_but_the_last_runs_without_gradient_sync():
    """`no_sync` (accelerate's, which holds DDP's all-reduce back) wraps the backward of each
    re-encoding but the last, so the gradients are averaged across processes once, whole."""
    encode, parameters, scale, micro = _towers((3, 3, 3, 3))
    syncing = [True]
    synced = []  # per backward call: whether gradient sync was on

    @contextmanager
    def no_sync():
        syncing[0] = False
        try:
            yield
        finally:
            syncing[0] = True

    def backward(surrogate):
        synced.append(syncing[0])
        surrogate.backward()

    contrastive_backward(encode, _loss(scale), micro, loss_parameters=[scale], no_sync=no_sync, backward=backward)
    assert synced == [False, False, False, True]


@pytest.mark.parametrize("sizes", [(12,), (4, 4, 4)], ids=["whole", "3x4"])
def test_a_listed_parameter_the_loss_never_reads_keeps_no_gradient(sizes):
    """A parameter in `loss_parameters` that the loss does not read (a bias the loss leaves
    out) gets no gradient with or without micro-batches, as after one backward of the whole
    batch: a zero gradient would let AdamW decay it and move it by its momentum."""
    encode, parameters, scale, micro = _towers(sizes)
    unread = nn.Parameter(torch.tensor(-1.0))
    contrastive_backward(encode, _loss(scale), micro, loss_parameters=[scale, unread])
    assert unread.grad is None
    assert scale.grad is not None and scale.grad.item() != 0


def test_micro_batches_update_batch_norm_statistics_once_each():
    """ResNet tower: after a step in micro-batches of 3 (8 samples: 3, 3, 2) every BatchNorm
    layer's running statistics are those of a plain train-mode forward of each micro-batch in
    turn; the no-grad encoding of the micro-batches leaves them alone."""
    from accelerate import Accelerator

    from clipcond.tokenization import clip_tokenizer
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.clip.contrastive_step import split_batch
    from clipcond.training.clip.loop import ContrastiveStep, make_optimizer
    from clipcond.training.clip.model_setup import build_contrastive_model
    from clipcond.training.data import CaptionTokenizer, DataConfig, ImageCaptionBatches

    config = TrainClipConfig(
        model=str(REPO / "configs" / "models" / "clip-tiny.yaml"),
        batch_size=8,
        micro_batch_size=3,
        steps=3,
        output_dir="unused",
        data=DataConfig(max_objects=2),
    )
    batch = next(ImageCaptionBatches(config.data, CaptionTokenizer(clip_tokenizer(), 77), 32, 8, seed=0))
    torch.manual_seed(0)
    model = build_contrastive_model(config)
    model.train()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for micro in split_batch(batch, 3):
            reference(**micro)
    optimizer, scheduler = make_optimizer(model, config)
    ContrastiveStep(Accelerator(cpu=True), model, optimizer, scheduler, micro_batch_size=3).backward(batch)

    expected = dict(reference.named_buffers())
    statistics = {name: buffer for name, buffer in model.named_buffers() if "running_" in name or "batches" in name}
    assert len(statistics) > 10
    assert all(expected[name].item() == 3 for name in statistics if name.endswith("num_batches_tracked"))
    for name, buffer in statistics.items():
        assert torch.equal(buffer, expected[name]), name


def test_dropout_draws_the_same_masks_in_both_encodings_of_a_micro_batch():
    """With dropout in a tower (LoRA dropout), the step is the gradient of the loss with the
    masks of the no-grad pass: that of encoding the micro-batches one after the other with
    gradients, from the same generator state. The generators end where that pass leaves them."""
    encode, parameters, scale, micro = _towers()
    dropout = nn.Dropout(0.5)

    def encode_with_dropout(batch):
        images, texts = encode(batch)
        return dropout(images), dropout(texts)

    loss_fn = _loss(scale)
    torch.manual_seed(1)
    features = [encode_with_dropout(m) for m in micro]
    reference = loss_fn(torch.cat([f[0] for f in features]), torch.cat([f[1] for f in features]))
    reference.backward()
    expected = [p.grad.clone() for p in parameters]
    state_after = torch.get_rng_state()
    for p in parameters:
        p.grad = None
    torch.manual_seed(1)
    loss = contrastive_backward(encode_with_dropout, loss_fn, micro, loss_parameters=[scale])
    torch.testing.assert_close(loss, reference.detach(), rtol=0, atol=1e-6)
    for a, b in zip([p.grad for p in parameters], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), state_after)


class _CudaTensor:
    """Stands for a tensor on CUDA device `index` (this CPU build has no CUDA)."""

    is_cuda = True

    def __init__(self, index):
        self.device = torch.device("cuda", index)


def test_random_state_keeps_each_cuda_device_generator_apart(monkeypatch):
    """`RandomState` records the generator of every CUDA device its tensors are on, once each,
    and puts each state back on its own device (torch.cuda's get/set_rng_state, faked here)."""
    from clipcond.training.clip.contrastive_step import RandomState

    generators = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: generators[device].clone())

    def set_rng_state(state, device):
        generators[device] = state

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    recorded = RandomState([_CudaTensor(1), torch.zeros(2), _CudaTensor(0), _CudaTensor(1)])
    assert recorded.cuda_devices == [0, 1]
    generators[0], generators[1] = torch.tensor([7], dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)
    recorded.restore()
    assert generators[0].tolist() == [0] and generators[1].tolist() == [1]
