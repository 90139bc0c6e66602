"""train-t5 on several processes (accelerate's `debug_launcher`: two forked CPU processes, gloo):
two processes of `batch_size` end with the weights and losses of one process of `2 * batch_size`.

The span-corruption loss is a mean over target tokens, and the ranks' batches hold different
numbers of them; `span_loss` divides each rank's sum by the count of all ranks (see its
docstring), which is checked here on its own against the whole batch's cross-entropy, and end
to end through `train_t5`. Tolerances as in test_multiprocess_training.py (lr 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rank_audit
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_multiprocess_training import (
    WORLD,
    assert_only_rank_zero_wrote,
    fresh_forked_process,
    losses,
    max_difference,
)
from test_train_t5 import tiny_config

from clipcond.training.t5.loop import train_t5
from clipcond.training.t5.model import span_loss
from clipcond.training.t5.span_corruption import IGNORE_INDEX

VOCAB, WIDTH = 11, 5


def _token_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (4, 6, WIDTH), weight (WIDTH, VOCAB), labels (4, 6)): rows 0-1 hold 9 target
    tokens, rows 2-3 hold 3, so the two halves' means differ from the whole batch's."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4, 6, WIDTH, generator=generator)
    weight = torch.randn(WIDTH, VOCAB, generator=generator)
    labels = torch.randint(0, VOCAB, (4, 6), generator=generator)
    labels[0, 5:] = labels[1, 4:] = IGNORE_INDEX  # 5 + 4 targets
    labels[2, 2:] = labels[3, 1:] = IGNORE_INDEX  # 2 + 1 targets
    return features, weight, labels


def _span_loss_rank(out: str) -> None:
    """One rank: the loss of its half of `_token_batch` and the gradient DDP would apply (the
    ranks' mean), written to `out` by rank 0."""
    import torch.distributed as dist

    fresh_forked_process()
    rank = dist.get_rank()
    features, weight, labels = _token_batch()
    weight.requires_grad_(True)
    part = slice(2 * rank, 2 * rank + 2)
    loss, _ = span_loss(features[part] @ weight, labels[part])
    loss.backward()
    grad, mean_loss = weight.grad.clone(), loss.detach().clone()
    for value in (grad, mean_loss):  # DDP's average of gradients, the loop's average of losses
        dist.all_reduce(value)
        value /= dist.get_world_size()
    if rank == 0:
        torch.save({"loss": mean_loss, "grad": grad}, out)


def test_span_loss_of_two_ranks_is_the_whole_batch_loss(tmp_path: Path) -> None:
    from accelerate import debug_launcher

    debug_launcher(_span_loss_rank, args=(str(tmp_path / "ranks.pt"),), num_processes=WORLD)
    ranks = torch.load(tmp_path / "ranks.pt")

    features, weight, labels = _token_batch()
    weight.requires_grad_(True)
    # the reference: one cross-entropy mean over the 12 target tokens of the whole batch
    whole = F.cross_entropy((features @ weight).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    whole.backward()
    assert ranks["loss"].item() == pytest.approx(whole.item(), abs=1e-6)
    torch.testing.assert_close(ranks["grad"], weight.grad, atol=1e-6, rtol=0)


def _forked_t5_rank(config, log_prefix: str) -> None:
    """One rank of `train_t5` under accelerate's debug_launcher; writes its result's loss and
    evaluation to ``<log_prefix>.result<r>.json``."""
    fresh_forked_process()
    rank = torch.distributed.get_rank()
    rank_audit.mark_rank(rank, config.output_dir, log_prefix)
    result = train_t5(config, show_progress=False)
    Path(f"{log_prefix}.result{rank}.json").write_text(
        json.dumps({"loss": result.loss, "evaluation": result.evaluation})
    )


def _encoder_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "text_encoder" / "model.safetensors"))


def _token_accuracies(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["token_accuracy"] for record in records if "token_accuracy" in record]


def test_two_forked_t5_processes_end_with_the_weights_of_one(tmp_path: Path) -> None:
    """train-t5 on two processes of 4 captions equals one process of 8 (no dropout: see the
    README on dropout under several processes)."""
    from accelerate import debug_launcher

    settings = dict(steps=3, lr=1e-4, eval_captions=4)
    train_t5(tiny_config(tmp_path / "one", batch_size=8, **settings), show_progress=False)
    two = tiny_config(tmp_path / "two", batch_size=4, **settings)
    debug_launcher(_forked_t5_rank, args=(two, str(tmp_path / "audit")), num_processes=WORLD)

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)
    assert _token_accuracies(tmp_path / "two") == _token_accuracies(tmp_path / "one")  # of the global batch
    difference = max_difference(_encoder_weights(tmp_path / "one"), _encoder_weights(tmp_path / "two"))
    assert difference <= 1e-5, difference
    assert_only_rank_zero_wrote(tmp_path / "two", tmp_path / "audit")
    # the held-out evaluation at the end, made by the main process, is every rank's result
    ranks = [json.loads((tmp_path / f"audit.result{rank}.json").read_text()) for rank in range(WORLD)]
    assert ranks[0]["evaluation"] and ranks[1]["evaluation"] == ranks[0]["evaluation"]
    assert ranks[1]["loss"] == ranks[0]["loss"]
