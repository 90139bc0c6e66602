"""One optimisation step of contrastive training, with accumulation that keeps the batch whole.

Plain gradient accumulation would compute the contrastive loss per micro-batch, which shrinks
the set of negatives. Instead (the GradCache scheme):

1. encode every micro-batch without gradients and concatenate the features; this pass leaves
   the towers' state (BatchNorm running statistics) as it found it;
2. compute one loss over all features (gathered across processes inside the loss) and take
   its gradients with respect to the features and the loss's own parameters (the
   temperature, SigLIP's bias), without touching any parameter's `.grad`;
3. encode each micro-batch again with gradients and backpropagate the cached feature
   gradients through the towers (`surrogate = <features, grad>`), accumulating parameter
   gradients; the last micro-batch's surrogate also carries the loss parameters
   (`+ <logit_scale, grad>`), so that its backward, the one DDP synchronises, reaches every
   trained parameter and DDP averages all of them across processes, once.

Random draws in the towers (LoRA dropout) are the same in both encodings of a micro-batch:
torch's generator states (CPU, and the CUDA devices of the micro-batch) are recorded before its
no-grad encoding and put back before its re-encoding, as GradCache's `RandContext` does, so
the cached feature gradients are those of the features that are backpropagated. The result is
the gradient of the loss with the dropout masks the no-grad pass drew, and the step leaves the
generators where that one pass left them.

For towers without batch statistics (the ViTs) the result equals the gradient of the loss on
the whole batch at once, on one process or several (tested), at the price of a second forward
pass when there is more than one micro-batch. A BatchNorm tower (the ResNets) normalises each
micro-batch by that micro-batch's statistics, as open_clip's `accum_freq` does, so its result
is not the whole batch's; its running statistics are updated once per micro-batch, by the
re-encoding, as a plain train-mode forward of each micro-batch would update them. With one
micro-batch the step is a plain forward + backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

Encode = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def contrastive_backward(
    encode: Encode,
    loss_fn: Loss,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    *,
    loss_parameters: Sequence[torch.Tensor],
    no_sync: Callable[[], object] | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
    state_kept: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Backpropagate the contrastive loss of all `micro_batches` taken together.

    Args:
        encode: micro-batch -> (image_features, text_features), each (micro, dim).
        loss_fn: (image_features, text_features) over the whole batch -> scalar loss.
        micro_batches: the batch split in pieces that fit in memory.
        loss_parameters: every parameter `loss_fn` reads besides the features (the
            temperature, SigLIP's bias); with several micro-batches only these and the towers'
            parameters receive gradients (one that does not require grad is skipped; one the loss
            does not read keeps `.grad` None, as after a plain backward of the whole batch).
        no_sync: context manager factory that suspends DDP gradient sync (accelerate's
            `accelerator.no_sync(model)`), used for all but the last re-encoding.
        backward: how to backpropagate a scalar (`accelerator.backward`, which scales fp16
            losses); default `tensor.backward()`.
        state_kept: context manager factory for the no-grad encoding that restores the
            towers' state on exit (`batch_norm_statistics_kept(model)`).

    Returns:
        The loss value (detached).
    """
    backward = backward or (lambda tensor: tensor.backward())
    if len(micro_batches) == 1:
        images, texts = encode(micro_batches[0])
        loss = loss_fn(images, texts)
        backward(loss)
        return loss.detach()
    random_states = []
    features = []
    with torch.no_grad(), state_kept() if state_kept is not None else nullcontext():
        for batch in micro_batches:
            random_states.append(RandomState(batch.values()))
            features.append(encode(batch))
    after_encoding = RandomState(micro_batches[-1].values())
    images = torch.cat([f[0] for f in features]).requires_grad_(True)
    texts = torch.cat([f[1] for f in features]).requires_grad_(True)
    parameters = [parameter for parameter in loss_parameters if parameter.requires_grad]
    loss = loss_fn(images, texts)
    # Plain gradients here: the loss's own scaling (fp16) is applied by `backward` to the
    # surrogates, which carry these gradients, and undone on the parameters by the optimizer.
    image_grad, text_grad, *parameter_grads = torch.autograd.grad(loss, [images, texts, *parameters], allow_unused=True)
    image_grads = image_grad.split([f[0].shape[0] for f in features])
    text_grads = text_grad.split([f[1].shape[0] for f in features])
    last = len(micro_batches) - 1
    for index, batch in enumerate(micro_batches):
        context = no_sync() if (no_sync is not None and index < last) else nullcontext()
        with context:
            random_states[index].restore()  # the no-grad pass's dropout masks again
            batch_images, batch_texts = encode(batch)
            surrogate = (batch_images * image_grads[index]).sum() + (batch_texts * text_grads[index]).sum()
            if index == last:  # in the synchronised backward, so DDP averages them with the towers'
                for parameter, grad in zip(parameters, parameter_grads):
                    if grad is not None:  # one the loss never read keeps no gradient, as in one backward
                        surrogate = surrogate + (parameter * grad).sum()
            backward(surrogate)
    after_encoding.restore()
    return loss.detach()


class RandomState:
    """torch's generator states at creation: the CPU one and those of the CUDA devices that
    `tensors` are on; `restore()` puts them back (GradCache's `RandContext`)."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_devices = sorted({tensor.device.index for tensor in tensors if tensor.is_cuda})
        self.cuda = [torch.cuda.get_rng_state(device) for device in self.cuda_devices]

    def restore(self) -> None:
        """Set the generators back to the recorded states."""
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.cuda_devices, self.cuda):
            torch.cuda.set_rng_state(state, device)


@contextmanager
def batch_norm_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Put back, on exit, the running statistics (`running_mean`, `running_var`,
    `num_batches_tracked`) of every BatchNorm layer in `module`, in place."""
    layers = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    saved = [[buffer.clone() for buffer in layer.buffers(recurse=False)] for layer in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in zip(layers, saved):
                for buffer, value in zip(layer.buffers(recurse=False), buffers):
                    buffer.copy_(value)


def split_batch(batch: dict[str, torch.Tensor], micro_batch_size: int | None) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into micro-batches of at most `micro_batch_size` rows (None: one piece)."""
    if micro_batch_size is None:
        return [batch]
    total = batch["input_ids"].shape[0]
    return [
        {key: value[start : start + micro_batch_size] for key, value in batch.items()}
        for start in range(0, total, micro_batch_size)
    ]
