"""Weighted prompt fragments -> fixed-size token windows for a text encoder.

CLIP reads at most `window_length` tokens (77: BOS + 75 + EOS). A longer prompt is cut into
windows of at most `window_length - 2` content tokens, each wrapped in BOS/EOS and padded,
so the windows can be encoded as a batch and joined on the sequence axis. A ``BREAK``
fragment closes the current window, as in A1111 even when it is empty (a prompt that starts
with ``BREAK``, or two ``BREAK`` in a row, gives an empty window of BOS, EOS and padding; a
``BREAK`` at the end adds none); when a window fills up mid-word, the partial word moves to the
next window (a word boundary is preferred within `WORD_LOOKBACK` tokens). With
``window_split="a1111"`` a full window is cut as A1111's ``tokenize_line`` cuts it instead:
everything after the last comma within `WORD_LOOKBACK` tokens moves to the next window (its
``comma_padding_backtrack``, default 20), and without such a comma the window ends at its 75th
token, mid-word if need be. With ``window_split="comfy"`` the windows are ComfyUI's
(``sd1_clip.py``): a space-separated word (punctuation attached, ``ultra,``) that does not fit
moves whole to the next window unless it has 8 tokens or more, which are split at the edge; a
multi-vector textual-inversion token counts as one such word, as ComfyUI counts an embedding;
each word's ids are ComfyUI's (its vocabulary entry ``word</w>`` when there is one: ``A`` keeps
``A</w>``, which the CLIP tokenizer would lower-case).
With ``window_split="truncate"`` a prompt has one window, its first 75 tokens, and the rest is
dropped (reported at INFO level), as diffusers' `encode_prompt` truncates; a ``BREAK`` ends the
prompt there, and a multi-vector textual-inversion token that crosses the 75th token keeps the
vectors that fit, as diffusers' truncation keeps them. Under the other rules a multi-vector
textual-inversion token (``<cat>``, ``<cat>_1``, ...) that does not fit the room left in a window
starts the next one, as A1111 places an embedding. `tests/test_chunking.py` checks the "a1111" and "comfy" rules against
transcriptions of A1111's and ComfyUI's.

T5 reads one sequence of up to `max_length` tokens ending in EOS; content past the budget is
dropped and reported, as diffusers does.

Why this module is over 400 lines: the four window rules (clipcond's, A1111's, ComfyUI's,
diffusers' truncation) fill the same window content and keep the same units whole; kept
together, each rule is read against the others, and none imports another module's internals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clipcond.prompts import Fragment
from clipcond.textual_inversion import multi_vector_tokens
from clipcond.window_splits import DEFAULT_WINDOW_SPLIT, check_window_split

logger = logging.getLogger(__name__)

# How far back (in tokens) a full window looks for the end of a word (or, A1111's way, a comma)
# before it hard-splits.
WORD_LOOKBACK = 20

# ComfyUI moves a space-separated word of fewer tokens than this whole to the next window
# (its `max_word_length`); a longer one is split at the window edge.
COMFY_WHOLE_WORD_TOKENS = 8


@dataclass
class TokenWindows:
    """One prompt tokenized for one encoder.

    Attributes:
        ids: (windows, length) int64 token ids, each window complete with special tokens and padding.
        weights: (windows, length) float32 per-token weights (1.0 for special and padding tokens).
        mask: (windows, length) int64, 1 for BOS, content and EOS tokens, 0 for padding.
        fragments: (windows, length) int64, the index (into the prompt's fragments) of the
            fragment each content token came from; -1 for special and padding tokens. None
            where nobody asked (an aligned empty window).
        dropped: number of content tokens dropped for lack of room (T5 only; CLIP never drops).
    """

    ids: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor
    fragments: torch.Tensor | None = None
    dropped: int = 0

    @property
    def num_windows(self) -> int:
        """Number of windows (chunks) this prompt occupies."""
        return self.ids.shape[0]

    @property
    def is_weighted(self) -> bool:
        """True when any token carries a weight other than 1.0."""
        return bool((self.weights != 1.0).any())


def _token_ids_per_fragment(
    tokenizer, prompts: Sequence[Sequence[Fragment]], strip: bool = False
) -> list[list[list[int]]]:
    """Token ids (no special tokens) of every non-break fragment, one tokenizer call for all.

    `strip` trims each fragment of a prompt of several fragments first: SentencePiece
    tokenizers (T5) mark a word's leading space on the word itself, so a fragment ending in a
    space would gain a lone "▁" token. A prompt of one fragment (plain text) is tokenized as it
    is, as diffusers tokenizes a prompt: whether its end spaces make tokens is the tokenizer's
    to say.
    """
    texts = []
    for fragments in prompts:
        pieces = [fragment.text for fragment in fragments if not fragment.is_break]
        texts += [piece.strip() for piece in pieces] if strip and len(pieces) > 1 else pieces
    # verbose=False: long prompts are expected here (we window them), so no length warning.
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    position = 0
    result = []
    for fragments in prompts:
        per_prompt = []
        for fragment in fragments:
            if fragment.is_break:
                per_prompt.append([])
            else:
                per_prompt.append(list(encoded[position]))
                position += 1
        result.append(per_prompt)
    return result


# A window's content: (token id, weight, fragment index) per token.
_Content = list[tuple[int, float, int]]


@dataclass(frozen=True)
class _WindowRule:
    """What cuts a prompt's windows: `capacity` content tokens a window holds, the `comma` id
    A1111's rule cuts after (None: no comma rule), and the multi-vector textual-inversion
    tokens kept whole (`groups`: first id -> all its ids)."""

    capacity: int
    comma: int | None
    groups: dict[int, tuple[int, ...]]


def _units(ids: list[int], groups: dict[int, tuple[int, ...]]) -> list[list[int]]:
    """A fragment's token ids as the units a window keeps whole: each multi-vector textual-
    inversion token's vectors (`groups`: first id -> all its ids) together, every other token
    alone."""
    units, index = [], 0
    while index < len(ids):
        group = groups.get(ids[index])
        length = len(group) if group is not None and tuple(ids[index : index + len(group)]) == group else 1
        units.append(ids[index : index + length])
        index += length
    return units


def _windows_at_word_ends(
    tokenizer, fragments: Sequence[Fragment], fragment_ids: list[list[int]], rule: _WindowRule
) -> list[_Content]:
    """One prompt's windows, a full one cut at the last word end within `WORD_LOOKBACK` tokens;
    a multi-vector textual-inversion token that does not fit the window's room starts the next
    one (its last vector ends a word)."""
    capacity, groups = rule.capacity, rule.groups
    windows: list[_Content] = []
    current: _Content = []
    current_word_ends: list[bool] = []
    for source, (fragment, ids) in enumerate(zip(fragments, fragment_ids)):
        if fragment.is_break:  # closes the window, an empty one too (A1111's next_chunk)
            windows.append(current)
            current, current_word_ends = [], []
            continue
        word_ends = iter(_word_end_flags(tokenizer, ids))
        for unit in _units(ids, groups):
            ends = [next(word_ends) for _ in unit]
            if len(unit) > 1:
                ends = [False] * (len(unit) - 1) + [True]
                if current and len(current) + len(unit) > capacity:
                    windows.append(current)
                    current, current_word_ends = [], []
            for token, word_end in zip(unit, ends):
                if len(current) == capacity:
                    split = capacity
                    for back in range(1, min(WORD_LOOKBACK, capacity) + 1):
                        if current_word_ends[capacity - back]:
                            split = capacity - back + 1
                            break
                    windows.append(current[:split])
                    current, current_word_ends = current[split:], current_word_ends[split:]
                current.append((token, fragment.weight, source))
                current_word_ends.append(word_end)
    if current or not windows:
        windows.append(current)
    return windows


def _windows_at_commas(
    tokenizer, fragments: Sequence[Fragment], fragment_ids: list[list[int]], rule: _WindowRule
) -> list[_Content]:
    """One prompt's windows as A1111's ``tokenize_line`` makes them: when a token other than a
    comma finds the window full, what follows the window's last comma moves on if that comma
    is within `WORD_LOOKBACK` tokens of the end; a window still full then closes as it is; a
    multi-vector textual-inversion token that does not fit the window's room starts the next
    one, as A1111 places an embedding."""
    capacity, comma, groups = rule.capacity, rule.comma, rule.groups
    windows: list[_Content] = []
    current: _Content = []
    last_comma = -1  # the position of the current window's last comma; -1: none
    for source, (fragment, ids) in enumerate(zip(fragments, fragment_ids)):
        if fragment.is_break:
            windows.append(current)
            current, last_comma = [], -1
            continue
        for unit in _units(ids, groups):
            if unit[0] == comma:
                last_comma = len(current)
            elif len(current) == capacity and last_comma != -1 and capacity - last_comma <= WORD_LOOKBACK:
                windows.append(current[: last_comma + 1])
                current, last_comma = current[last_comma + 1 :], -1
            if len(current) == capacity or (len(unit) > 1 and current and len(current) + len(unit) > capacity):
                windows.append(current)
                current, last_comma = [], -1
            for token in unit:
                if len(current) == capacity:  # a token of more vectors than a window holds
                    windows.append(current)
                    current = []
                current.append((token, fragment.weight, source))
    if current or not windows:
        windows.append(current)
    return windows


def _space_words(tokenizer, text: str, groups: dict[int, tuple[int, ...]]) -> list[list[int]]:
    """A fragment's token ids in ComfyUI's word groups: one per space-separated word (a line
    break counts as a space), each word read as ComfyUI reads it (`_comfy_word_ids`); the
    vectors of a multi-vector textual-inversion token (spelled ``<cat> <cat>_1 ...``, a word
    each) form one group, as ComfyUI keeps an embedding's vectors in one, and what is glued
    to it (``<cat>,``) is a group of its own, as ComfyUI reads the rest of an embedding's word."""
    words = [word for word in text.replace("\n", " ").split(" ") if word]
    ids: list[int] = []
    starts: set[int] = set()
    for word_ids in _comfy_word_ids(tokenizer, words):
        if word_ids:
            starts.add(len(ids))
            ids += word_ids
    position = 0
    for unit in _units(ids, groups):
        if len(unit) > 1:
            starts.difference_update(range(position + 1, position + len(unit)))
            starts.update(bound for bound in (position, position + len(unit)) if bound < len(ids))
        position += len(unit)
    cuts = [*sorted(starts), len(ids)]
    return [ids[start:end] for start, end in zip(cuts, cuts[1:])]


def _comfy_word_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """Each word's ids as ComfyUI's tokenizer finds them: the vocabulary entry ``word</w>``
    when there is one, taken as written (``A`` is ``A</w>``, which the CLIP tokenizer, lower-
    casing, never gives), else the tokenizer's ids for the word alone."""
    if not words:
        return []
    whole = tokenizer.convert_tokens_to_ids([f"{word}</w>" for word in words])
    unknown = getattr(tokenizer, "unk_token_id", None)
    rest = [word for word, found in zip(words, whole) if found is None or found == unknown]
    encoded = iter(tokenizer(rest, add_special_tokens=False, verbose=False)["input_ids"] if rest else [])
    return [[found] if found is not None and found != unknown else list(next(encoded)) for found in whole]


def _windows_at_spaces(
    tokenizer, fragments: Sequence[Fragment], fragment_ids: list[list[int]], rule: _WindowRule
) -> list[_Content]:
    """One prompt's windows as ComfyUI's ``SDTokenizer.tokenize_with_weights`` makes them: a
    word (`_space_words`) that does not fit the window's room closes the window and starts the
    next, unless it has `COMFY_WHOLE_WORD_TOKENS` tokens or more: then it fills the window and
    goes on in the next. `fragment_ids` is not read (each word is tokenized on its own)."""
    capacity = rule.capacity
    windows: list[_Content] = []
    current: _Content = []
    for source, fragment in enumerate(fragments):
        if fragment.is_break:  # clipcond's BREAK (ComfyUI reads it as a word)
            windows.append(current)
            current = []
            continue
        for word in _space_words(tokenizer, fragment.text, rule.groups):
            splits = len(word) >= COMFY_WHOLE_WORD_TOKENS
            while word:
                if len(current) + len(word) <= capacity:
                    current += [(token, fragment.weight, source) for token in word]
                    break
                if splits:
                    room = capacity - len(current)
                    current += [(token, fragment.weight, source) for token in word[:room]]
                    word = word[room:]
                windows.append(current)
                current = []
    if current or not windows:
        windows.append(current)
    return windows


def _vector_groups(tokenizer) -> dict[int, tuple[int, ...]]:
    """The tokenizer's multi-vector textual-inversion tokens: first id -> all their ids."""
    groups = {}
    for names in multi_vector_tokens(tokenizer).values():
        ids = tuple(tokenizer.convert_tokens_to_ids(list(names)))
        groups[ids[0]] = ids
    return groups


def _comma_id(tokenizer) -> int | None:
    """The id of the comma that ends a word (",</w>"), or None for a vocabulary without it."""
    found = tokenizer.convert_tokens_to_ids(",</w>")
    return None if found is None or found == tokenizer.unk_token_id else found


def _word_end_flags(tokenizer, ids: list[int]) -> list[bool]:
    """Whether each CLIP token closes a word (its vocabulary entry ends in "</w>")."""
    return [str(token).endswith("</w>") for token in tokenizer.convert_ids_to_tokens(ids)]


def _close_window(content: list[tuple[int, float, int]], length: int, bos: int, eos: int, pad: int):
    ids = [bos] + [token for token, _, _ in content] + [eos]
    weights = [1.0] + [weight for _, weight, _ in content] + [1.0]
    sources = [-1] + [source for _, _, source in content] + [-1]
    real = len(ids)
    ids += [pad] * (length - real)
    weights += [1.0] * (length - real)
    sources += [-1] * (length - real)
    return ids, weights, [1] * real + [0] * (length - real), sources


def clip_windows(
    tokenizer, prompts: Sequence[Sequence[Fragment]], window_length: int = 77, window_split: str = DEFAULT_WINDOW_SPLIT
) -> list[TokenWindows]:
    """Tokenize each prompt's fragments into CLIP windows of `window_length` tokens.

    Args:
        tokenizer: a transformers CLIP tokenizer (BOS, EOS and pad tokens set).
        prompts: one list of fragments per prompt (see `clipcond.prompts.parse_prompt`).
        window_length: tokens per window including BOS and EOS (77 for CLIP).
        window_split: how a full window is cut: "word" (at a word end), "a1111" (after a
            comma, as A1111), "comfy" (before a space-separated word, as ComfyUI) or "truncate"
            (one window, the rest dropped, as diffusers); see the module docstring.

    Returns:
        One `TokenWindows` per prompt; always at least one window (an empty prompt is
        BOS, EOS, padding — exactly what the tokenizer gives for "").
    """
    capacity = window_length - 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos
    cut = {"word": _windows_at_word_ends, "comfy": _windows_at_spaces}.get(
        check_window_split(window_split), _windows_at_commas
    )
    if window_split == "comfy":  # each space-separated word is tokenized on its own
        per_fragment = [[[] for _ in fragments] for fragments in prompts]
    else:
        per_fragment = _token_ids_per_fragment(tokenizer, prompts)
    comma = _comma_id(tokenizer) if window_split == "a1111" else None  # "truncate": cut at the 75th token
    # Under "truncate" an embedding's vectors are tokens like any other: diffusers keeps those
    # that fit the window and drops the rest, where the other rules move the embedding whole.
    groups = {} if window_split == "truncate" else _vector_groups(tokenizer)
    rule = _WindowRule(capacity, comma, groups)
    result = []
    for fragments, fragment_ids in zip(prompts, per_fragment):
        windows = cut(tokenizer, fragments, fragment_ids, rule)
        if window_split == "truncate" and len(windows) > 1:
            dropped = sum(len(window) for window in windows[1:])
            if dropped:
                kept = tokenizer.decode([token for token, _, _ in windows[0][-8:]])
                logger.info(
                    "CLIP prompt truncated to %d tokens: %d tokens dropped after '...%s'", capacity, dropped, kept
                )
            windows = windows[:1]
        rows = [_close_window(window, window_length, bos, eos, pad) for window in windows]
        result.append(
            TokenWindows(
                ids=torch.tensor([row[0] for row in rows], dtype=torch.long),
                weights=torch.tensor([row[1] for row in rows], dtype=torch.float32),
                mask=torch.tensor([row[2] for row in rows], dtype=torch.long),
                fragments=torch.tensor([row[3] for row in rows], dtype=torch.long),
            )
        )
    return result


def t5_sequence(tokenizer, prompts: Sequence[Sequence[Fragment]], max_length: int) -> list[TokenWindows]:
    """Tokenize each prompt's fragments into one T5 sequence of `max_length` tokens.

    Content beyond `max_length - 1` tokens is dropped (EOS always ends the sequence), and a
    warning names how many tokens were dropped. ``BREAK`` has no meaning for T5 and is skipped.

    Returns:
        One `TokenWindows` with a single window per prompt.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = 0
    per_fragment = _token_ids_per_fragment(tokenizer, prompts, strip=True)
    result = []
    for fragments, fragment_ids in zip(prompts, per_fragment):
        content = [
            (token, fragment.weight, source)
            for source, (fragment, ids) in enumerate(zip(fragments, fragment_ids))
            if not fragment.is_break
            for token in ids
        ]
        dropped = max(0, len(content) - (max_length - 1))
        if dropped:
            kept_text = tokenizer.decode([token for token, _, _ in content[: max_length - 1]][-8:])
            logger.warning(
                "T5 prompt truncated to max_sequence_length=%d tokens: %d tokens dropped after '...%s'",
                max_length,
                dropped,
                kept_text,
            )
            content = content[: max_length - 1]
        ids = [token for token, _, _ in content] + [eos]
        weights = [weight for _, weight, _ in content] + [1.0]
        sources = [source for _, _, source in content] + [-1]
        real = len(ids)
        result.append(
            TokenWindows(
                ids=torch.tensor([ids + [pad] * (max_length - real)], dtype=torch.long),
                weights=torch.tensor([weights + [1.0] * (max_length - real)], dtype=torch.float32),
                mask=torch.tensor([[1] * real + [0] * (max_length - real)], dtype=torch.long),
                fragments=torch.tensor([sources + [-1] * (max_length - real)], dtype=torch.long),
                dropped=dropped,
            )
        )
    return result
