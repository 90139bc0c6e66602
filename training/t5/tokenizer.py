"""A T5-style tokenizer trained on captions: SentencePiece unigram (the `tokenizers` library)
with T5's special tokens and sentinels.

Ids follow T5: ``<pad>`` = 0 (also the decoder's start token), ``</s>`` = 1 (ends every
sequence), ``<unk>`` = 2, then the learned pieces, then the sentinels that span corruption puts
in place of dropped spans, numbered down from the last id as in T5's tokenizers
(``<extra_id_0>`` is the last id, ``<extra_id_1>`` the one before), so that T5 tools such as
transformers' span-corruption collator read them right. The result is a
transformers `PreTrainedTokenizerFast`, saved with `save_pretrained` and loaded back with
`AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # ids 0, 1, 2 in this order


def sentinel_token(index: int) -> str:
    """The text of sentinel `index`: ``<extra_id_{index}>``."""
    return f"<extra_id_{index}>"


def train_t5_tokenizer(captions: Sequence[str], vocab_size: int, sentinels: int, model_max_length: int) -> Any:
    """Train a SentencePiece-unigram tokenizer on `captions` and add T5's sentinels.

    Args:
        captions: the training text, one caption per item.
        vocab_size: at most this many pieces, ``<pad>``, ``</s>`` and ``<unk>`` included; a
            corpus of few distinct words yields fewer (the tokenizer's `len` tells).
        sentinels: how many ``<extra_id_k>`` tokens to add after the pieces (``<extra_id_0>``
            last).
        model_max_length: the tokenizer's `model_max_length` (tokens, ``</s>`` included).

    Returns:
        A `PreTrainedTokenizerFast` whose encodings end with ``</s>``.
    """
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if not captions:
        raise ValueError("no captions to train the tokenizer on")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    # The unigram trainer (like SentencePiece's) seeds its pieces with substrings that repeat
    # across *distinct* words; a word seen in only one spelling is never a seed, so a corpus
    # of few distinct words (the shapes world has 34) would be split into letters. Adding each
    # distinct word once, doubled ("blueblue"), makes every word a repeat, and with a count
    # of one it barely moves the piece probabilities.
    words = sorted({word for caption in captions for word in caption.split()})
    corpus = [*captions, *(word + word for word in words)]
    trained = SentencePieceUnigramTokenizer()
    trained.train_from_iterator(
        corpus, vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token=UNK, show_progress=False
    )
    backend = _canonical_piece_order(trained._tokenizer)  # the `tokenizers.Tokenizer` inside the wrapper
    eos_id = backend.token_to_id(EOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        # T5's order: <extra_id_0> is the last id, <extra_id_1> the one before, ...
        additional_special_tokens=[sentinel_token(k) for k in reversed(range(sentinels))],
        model_max_length=model_max_length,
    )
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    if ids != [0, 1, 2]:
        raise RuntimeError(f"expected <pad>, </s>, <unk> at ids 0, 1, 2, got {ids}")
    return tokenizer


def _canonical_piece_order(backend: Any) -> Any:
    """The same tokenizer with its pieces in an order that does not change between calls.

    The unigram trainer appends the characters that no piece covers with made-up scores
    (each a little below the last) in the order of a Rust hash map, which differs from call
    to call; the ids, and with them a T5 trained on them, would differ between two runs of one
    recipe. Here those characters take the same made-up scores in alphabetical order, and the
    pieces are numbered by score, ties by spelling. The special tokens keep ids 0-2.
    """
    from tokenizers import Tokenizer

    state = json.loads(backend.to_str())
    pieces = state["model"]["vocab"]
    head = [piece for piece, _ in pieces[: len(SPECIAL_TOKENS)]]
    if head != list(SPECIAL_TOKENS):
        raise RuntimeError(f"expected the unigram vocabulary to start with {list(SPECIAL_TOKENS)}, got {head}")
    rest = pieces[len(SPECIAL_TOKENS) :]
    # the appended letters sit at the bottom of the vocabulary, their scores 1e-4 apart
    letters = [(piece, score) for piece, score in rest if len(piece) == 1]
    lowest = min((score for _, score in rest), default=0.0)
    appended = [(piece, score) for piece, score in letters if score <= lowest + 1e-4 * (len(letters) + 1)]
    renamed = dict(zip(sorted(piece for piece, _ in appended), sorted((score for _, score in appended), reverse=True)))
    rest = sorted(([piece, renamed.get(piece, score)] for piece, score in rest), key=lambda item: (-item[1], item[0]))
    state["model"]["vocab"] = pieces[: len(SPECIAL_TOKENS)] + rest
    state["model"]["unk_id"] = SPECIAL_TOKENS.index(UNK)
    return Tokenizer.from_str(json.dumps(state))


def sentinel_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... as far as the tokenizer has them, in order."""
    vocab = tokenizer.get_vocab()
    ids = []
    while sentinel_token(len(ids)) in vocab:
        ids.append(vocab[sentinel_token(len(ids))])
    return tuple(ids)
