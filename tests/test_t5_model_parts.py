"""The T5 of a pretraining run on its own: every setting reaches transformers' `T5Config`, the
teacher-forced logits and loss against hand-shifted labels and a hand-summed cross-entropy, the
held-out metrics of fixed logits worked out by hand, and the encoder half exported and saved.

The loss against `T5ForConditionalGeneration(labels=...)` and training runs are in
test_train_t5.py; the loss over several processes in test_multiprocess_training.py."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, T5EncoderModel

from clipcond.training.t5.config import T5ModelSettings
from clipcond.training.t5.model import (
    ENCODER_DIR,
    TOKENIZER_DIR,
    build_t5,
    evaluate_span_corruption,
    export_encoder,
    save_t5_encoder,
    span_logits,
    span_loss,
)
from clipcond.training.t5.tokenizer import train_t5_tokenizer

SMALL = T5ModelSettings(d_model=16, d_ff=24, d_kv=8, num_layers=1, num_heads=2)
# a value for every size and rate, none of them T5Config's default or this project's
CHANGED = {
    "d_model": 24,
    "d_ff": 40,
    "d_kv": 6,
    "num_layers": 3,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 20,
    "dropout_rate": 0.25,
}


# ------------------------------------------------------------------ build_t5


def test_every_setting_reaches_t5s_config_with_t5s_ids() -> None:
    torch.manual_seed(0)
    model = build_t5(T5ModelSettings(**CHANGED), vocab_size=77)
    config = model.config
    for name, value in CHANGED.items():
        assert getattr(config, name) == value, name
    assert (config.vocab_size, config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (77, 0, 1, 0)
    assert (len(model.encoder.block), len(model.decoder.block)) == (3, 2)
    assert model.shared.weight.shape == (77, 24)


@pytest.mark.parametrize("projection", ["gated-gelu", "relu"])  # T5Config's default is "relu"
def test_the_feed_forward_is_the_one_asked_for(projection: str) -> None:
    model = build_t5(replace(SMALL, feed_forward_proj=projection), vocab_size=30)
    assert model.config.feed_forward_proj == projection
    assert model.config.is_gated_act == (projection == "gated-gelu")


def test_a_decoder_depth_left_out_is_the_encoders() -> None:
    model = build_t5(replace(SMALL, num_layers=2), vocab_size=30)
    assert model.config.num_decoder_layers == 2 and len(model.decoder.block) == 2


def test_the_same_seed_builds_the_same_weights() -> None:
    torch.manual_seed(3)
    first = build_t5(SMALL, 30).state_dict()
    torch.manual_seed(3)
    second = build_t5(SMALL, 30).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


# ------------------------------------------------------------------ logits and loss


def _batch() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([[5, 9, 7, 1], [6, 9, 1, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([[9, 4, 5, 1], [9, 8, 1, -100]]),
    }


def test_the_decoder_reads_the_labels_shifted_behind_the_start_token() -> None:
    torch.manual_seed(0)
    model = build_t5(SMALL, vocab_size=12).eval()
    batch = _batch()
    shifted = torch.tensor([[0, 9, 4, 5], [0, 9, 8, 1]])  # -100 never reaches the decoder: it is cut off
    with torch.no_grad():
        expected = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=shifted
        )
        assert torch.equal(span_logits(model, batch), expected.logits)
        padded = dict(batch, labels=torch.tensor([[9, 4, -100, -100], [9, 8, 1, -100]]))
        # padding inside the shifted labels is read as <pad> (0)
        again = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=torch.tensor([[0, 9, 4, 0], [0, 9, 8, 1]]),
        )
        assert torch.equal(span_logits(model, padded), again.logits)


def test_a_wrapper_runs_the_forward_and_the_t5_inside_shifts_the_labels() -> None:
    torch.manual_seed(0)
    model = build_t5(SMALL, vocab_size=12).eval()
    calls = []

    class Wrapper(torch.nn.Module):  # as accelerate's DDP wrapper: the T5 is `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **inputs):
            calls.append(sorted(inputs))
            return self.module(**inputs)

    with torch.no_grad():
        assert torch.equal(span_logits(Wrapper(model), _batch()), span_logits(model, _batch()))
    assert calls == [["attention_mask", "decoder_input_ids", "input_ids"]]


def _scored() -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits (2, 4, 12) whose argmax is right at exactly two of the six real tokens (and
    at one padded position, which does not count), and their labels."""
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 12, dtype=torch.float64)
    labels = torch.tensor([[9, 4, 5, 1], [9, 8, -100, -100]])
    for b, t in [(0, 0), (0, 2), (0, 3), (1, 1)]:  # wrong: 11 scores highest, never a label
        logits[b, t, 11] = 50.0
    logits[0, 1, 4] = 50.0
    logits[1, 0, 9] = 50.0
    logits[1, 3, 0] = 50.0  # -100 is no class; a padded position's argmax is never a hit
    return logits, labels


def _cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return sum(
        -torch.log_softmax(logits[b, t], -1)[labels[b, t]].item()
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if labels[b, t] != -100
    )


def test_the_loss_is_the_mean_cross_entropy_of_the_real_tokens_and_the_hits_are_counted() -> None:
    logits, labels = _scored()
    loss, correct = span_loss(logits, labels)
    assert loss.dtype == torch.float32  # float32 whatever the logits' dtype
    assert math.isclose(loss.item(), _cross_entropy_sum(logits, labels) / 6, rel_tol=1e-6)
    assert int(correct) == 2
    half, _ = span_loss(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32


class TwoProcesses:
    """`torch.distributed` as seen from process 0 of 2 whose partner holds `other_tokens` targets."""

    def __init__(self, other_tokens: int) -> None:
        self.other_tokens = other_tokens
        self.reduced: list[torch.Tensor] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.reduced.append(tensor.clone())
        tensor.add_(self.other_tokens)


@pytest.mark.parametrize("other_tokens", [6, 10, 0])
def test_on_two_processes_the_loss_is_the_sum_over_the_targets_of_both_times_two(monkeypatch, other_tokens) -> None:
    import clipcond.training.t5.model as t5_model

    logits, labels = _scored()
    fake = TwoProcesses(other_tokens)
    monkeypatch.setattr(t5_model, "dist", fake)
    loss, correct = span_loss(logits, labels)
    # the mean over both processes' losses is the sum of their cross-entropies over all targets
    expected = _cross_entropy_sum(logits, labels) * 2 / (6 + other_tokens)
    assert loss.dtype == torch.float32 and math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert int(correct) == 2
    assert len(fake.reduced) == 1 and fake.reduced[0].dtype == torch.float32 and fake.reduced[0].item() == 6.0


def test_on_two_processes_one_target_in_all_is_not_divided_further_and_none_gives_zero(monkeypatch) -> None:
    import clipcond.training.t5.model as t5_model

    monkeypatch.setattr(t5_model, "dist", TwoProcesses(0))
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    one = torch.tensor([[2, -100]])
    loss, correct = span_loss(logits, one)
    by_hand = math.log(math.exp(2.0) + 1 + math.e) - 1.0
    assert math.isclose(loss.item(), 2 * by_hand, rel_tol=1e-6) and int(correct) == 0
    loss, correct = span_loss(logits, torch.full((1, 2), -100))
    assert loss.item() == 0.0 and int(correct) == 0


# ------------------------------------------------------------------ held-out evaluation


class FixedLogits(torch.nn.Module):
    """A stand-in T5 whose logits score 3 for a given guess at each position, 0 elsewhere."""

    def __init__(self, guesses: list[list[list[int]]], vocab: int) -> None:
        super().__init__()
        self.guesses = guesses
        self.vocab = vocab
        self.seen_modes: list[bool] = []

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.clamp(min=0)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        self.seen_modes.append(self.training)
        guess = torch.tensor(self.guesses[len(self.seen_modes) - 1])
        logits = torch.zeros(*guess.shape, self.vocab)
        logits.scatter_(-1, guess.unsqueeze(-1), 3.0)
        return SimpleNamespace(logits=logits)


def _held_out():
    # sentinels 9 and 8, </s> 1: markers. The dropped tokens are 4, 5 (first caption), 4, 6 (second)
    labels = [torch.tensor([[9, 4, 5, 1, -100]]), torch.tensor([[9, 4, 8, 6, 1]])]
    guesses = [[[9, 4, 6, 1, 7]], [[9, 5, 8, 6, 0]]]
    batches = [
        {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3), "labels": y}
        for y in labels
    ]
    return batches, guesses


@pytest.mark.parametrize("training", [True, False])
def test_held_out_metrics_of_fixed_logits_worked_out_by_hand(training: bool) -> None:
    batches, guesses = _held_out()
    model = FixedLogits(guesses, vocab=10).train(training)
    entered = []

    def autocast():
        entered.append(True)
        return torch.autocast("cpu", enabled=False)

    metrics = evaluate_span_corruption(model, batches, markers={1, 8, 9}, autocast=autocast)
    # 9 real targets: hits 9, 4, 1 of the first and 9, 8, 6 of the second
    log_sum = math.log(math.exp(3.0) + 9)  # each position: one logit of 3, nine of 0
    assert math.isclose(metrics["loss"], (9 * log_sum - 6 * 3.0) / 9, rel_tol=1e-6)
    assert metrics["token_accuracy"] == 6 / 9
    assert metrics["span_token_accuracy"] == 2 / 4  # 4 right, 5 wrong; 4 wrong, 6 right
    assert metrics["majority_span_accuracy"] == 2 / 4  # 4 is dropped twice of four
    assert model.seen_modes == [False, False] and model.training is training
    assert entered == [True, True]


def test_held_out_metrics_without_autocast_and_without_batches() -> None:
    batches, guesses = _held_out()
    assert evaluate_span_corruption(FixedLogits(guesses, 10), batches, {1, 8, 9})["token_accuracy"] == 6 / 9
    empty = evaluate_span_corruption(FixedLogits([], 10), [], {1})
    assert empty == {"loss": 0.0, "token_accuracy": 0.0, "span_token_accuracy": 0.0, "majority_span_accuracy": 0.0}


# ------------------------------------------------------------------ the encoder half


def test_the_exported_encoder_is_a_copy_that_encodes_as_the_t5s_encoder() -> None:
    torch.manual_seed(0)
    model = build_t5(SMALL, vocab_size=12).train()
    encoder = export_encoder(model)
    assert isinstance(encoder, T5EncoderModel) and not encoder.training
    ids = torch.tensor([[5, 9, 7, 1]])
    model.eval()
    with torch.no_grad():
        assert torch.equal(encoder(input_ids=ids).last_hidden_state, model.encoder(input_ids=ids).last_hidden_state)
        encoder.shared.weight.add_(1.0)
    assert not torch.equal(encoder.shared.weight, model.shared.weight)


def test_the_saved_encoder_and_tokenizer_load_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = train_t5_tokenizer(["a red circle", "a blue square", "a red square"] * 4, 40, 4, 16)
    model = build_t5(SMALL, vocab_size=len(tokenizer)).eval()
    assert save_t5_encoder(model, tokenizer, tmp_path / "out") == tmp_path / "out"
    assert (ENCODER_DIR, TOKENIZER_DIR) == ("text_encoder", "tokenizer")
    assert (tmp_path / "out" / "text_encoder" / "model.safetensors").is_file()
    loaded = T5EncoderModel.from_pretrained(tmp_path / "out" / "text_encoder")
    reread = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    ids = torch.tensor([reread("a red square").input_ids])
    assert ids[0].tolist() == tokenizer("a red square").input_ids and ids[0, -1] == 1
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, model.encoder(input_ids=ids).last_hidden_state)
