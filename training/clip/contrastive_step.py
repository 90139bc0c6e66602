"""One optimisation step of contrastive training, with accumulation that keeps the batch whole.

Plain gradient accumulation would compute the contrastive loss per micro-batch, which shrinks
the set of negatives. Instead (the GradCache scheme):

1. encode every micro-batch without gradients and concatenate the features;
2. compute one loss over all features (gathered across processes inside the loss) and
   backpropagate it to the features and the temperature only;
3. encode each micro-batch again with gradients and backpropagate the cached feature
   gradients through the towers (`surrogate = <features, grad>`), accumulating parameter
   gradients.

The result equals the gradient of the loss on the whole batch at once (tested), at the price
of a second forward pass when there is more than one micro-batch. With one micro-batch the
step is a plain forward + backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

Encode = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def contrastive_backward(
    encode: Encode,
    loss_fn: Loss,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    no_sync: Callable[[], object] | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Backpropagate the contrastive loss of all `micro_batches` taken together.

    Args:
        encode: micro-batch -> (image_features, text_features), each (micro, dim).
        loss_fn: (image_features, text_features) over the whole batch -> scalar loss; it may
            use parameters (the temperature), whose gradients it accumulates directly.
        micro_batches: the batch split in pieces that fit in memory.
        no_sync: context manager factory that suspends DDP gradient sync (accelerate's
            `accelerator.no_sync(model)`), used for all but the last re-encoding.
        backward: how to backpropagate a scalar (`accelerator.backward`, which scales fp16
            losses); default `tensor.backward()`.

    Returns:
        The loss value (detached).
    """
    backward = backward or (lambda tensor: tensor.backward())
    if len(micro_batches) == 1:
        images, texts = encode(micro_batches[0])
        loss = loss_fn(images, texts)
        backward(loss)
        return loss.detach()
    with torch.no_grad():
        features = [encode(batch) for batch in micro_batches]
    images = torch.cat([f[0] for f in features]).requires_grad_(True)
    texts = torch.cat([f[1] for f in features]).requires_grad_(True)
    loss = loss_fn(images, texts)
    # The loss's own scaling (fp16) is undone on the feature gradients by using plain
    # backward here; `backward` applies it to the surrogate, which carries the same scale.
    loss.backward()
    image_grads = images.grad.split([f[0].shape[0] for f in features])
    text_grads = texts.grad.split([f[1].shape[0] for f in features])
    last = len(micro_batches) - 1
    for index, batch in enumerate(micro_batches):
        context = no_sync() if (no_sync is not None and index < last) else nullcontext()
        with context:
            batch_images, batch_texts = encode(batch)
            surrogate = (batch_images * image_grads[index]).sum() + (batch_texts * text_grads[index]).sum()
            backward(surrogate)
    return loss.detach()


def split_batch(batch: dict[str, torch.Tensor], micro_batch_size: int | None) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into micro-batches of at most `micro_batch_size` rows (None: one piece)."""
    if micro_batch_size is None:
        return [batch]
    total = batch["input_ids"].shape[0]
    return [
        {key: value[start : start + micro_batch_size] for key, value in batch.items()}
        for start in range(0, total, micro_batch_size)
    ]
