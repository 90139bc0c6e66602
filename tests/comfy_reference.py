"""ComfyUI's prompt windows and weighting (``comfy/sd1_clip.py``), re-expressed from reading it,
not from clipcond's code: the reference that `window_split="comfy"` and `emphasis="comfy"` are
checked against."""

from __future__ import annotations

import torch

from clipcond.prompts import Fragment


def comfy_batches(
    tokenizer, prompt: list[Fragment], embeddings: dict[str, int] | None = None
) -> list[list[tuple[int, float]]]:
    """ComfyUI's window rule (``comfy/sd1_clip.py``, ``SDTokenizer.tokenize_with_weights``),
    re-expressed from reading it, not from clipcond's code: each weighted segment's text is cut
    at spaces (line breaks read as spaces), and each word becomes a group of ids, the vocabulary
    entry ``word</w>`` if there is one, else the tokenizer's ids for the word alone; an
    embedding (here a textual-inversion token spelled as its vector names, `embeddings`: name ->
    vector count) is one group of all its vectors, and text glued after it (``<cat>,``) a word of
    its own, as ComfyUI reads what follows an embedding's name. A group that does not fit what is left of the
    75-token batch ends the batch and starts the next, unless it holds 8 or more ids: then it
    fills the batch and continues in the next. BREAK ends the batch (clipcond's; ComfyUI reads
    it as a word)."""
    vocab = tokenizer.get_vocab()
    embeddings = embeddings or {}
    groups: list[tuple[list[int], float] | None] = []  # None: a BREAK
    for fragment in prompt:
        if fragment.is_break:
            groups.append(None)
            continue
        words = [word for word in fragment.text.replace("\n", " ").split(" ") if word]
        while words:
            word = words.pop(0)
            if word in embeddings:
                names = [word, *(words.pop(0) for _ in range(embeddings[word] - 1))]
                last = f"{word}_{embeddings[word] - 1}" if embeddings[word] > 1 else word
                if names[-1] != last:  # text glued to the embedding's word: read as a word of its own
                    words.insert(0, names[-1][len(last) :])
                    names[-1] = last
                groups.append((tokenizer.convert_tokens_to_ids(names), fragment.weight))
            elif f"{word}</w>" in vocab:
                groups.append(([vocab[f"{word}</w>"]], fragment.weight))
            else:
                groups.append((tokenizer(word, add_special_tokens=False).input_ids, fragment.weight))
    batches: list[list[tuple[int, float]]] = [[]]
    for group in groups:
        if group is None:
            batches.append([])
            continue
        ids, weight = group
        large = len(ids) >= 8
        while ids:
            if len(batches[-1]) + len(ids) > 75:
                if large:
                    room = 75 - len(batches[-1])
                    batches[-1] += [(token, weight) for token in ids[:room]]
                    ids = ids[room:]
                batches.append([])
            else:
                batches[-1] += [(token, weight) for token in ids]
                ids = []
    return batches


def comfy_encode(
    text_encoder, tokenizer, batches: list[list[tuple[int, float]]], hidden_layer: int | None = None
) -> torch.Tensor:
    """ComfyUI's token states of a prompt's batches (``ClipTokenWeightEncoder.encode_token_weights``
    with an SD 1.x CLIP, its last layer; with `hidden_layer`, that hidden state without the
    final layer norm, as its SDXL encoders read layer -2): each batch is BOS + ids + EOS padded
    with the pad id to 77 and encoded with an empty prompt's batch; a token of weight w != 1
    becomes empty + (state - empty) * w, position by position; the batches are joined on the
    sequence axis. Returns (1, 77 * batches, width)."""
    rows = [[tokenizer.bos_token_id, *(t for t, _ in b), tokenizer.eos_token_id] for b in batches]
    rows.append([tokenizer.bos_token_id, tokenizer.eos_token_id])
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (77 - len(row)) for row in rows])
    with torch.no_grad():
        if hidden_layer is None:
            states = text_encoder(ids).last_hidden_state
        else:
            states = text_encoder(ids, output_hidden_states=True).hidden_states[hidden_layer]
    empty = states[-1]
    out = []
    for index, batch in enumerate(batches):
        z = states[index].clone()
        for position, (_, weight) in enumerate(batch, start=1):
            if weight != 1.0:
                z[position] = (z[position] - empty[position]) * weight + empty[position]
        out.append(z)
    return torch.cat(out, dim=0)[None]


def comfy_segments(prompt: str) -> list[tuple[str, float]]:
    """ComfyUI's weighted segments of a prompt (``comfy/sd1_clip.py``: ``escape_important``,
    ``token_weights`` over ``parse_parentheses``, ``unescape_important``), re-expressed from
    reading it, not from clipcond's code, recursion and all: ``\\)`` and ``\\(`` hidden first;
    the text cut into top-level items at brackets (a ``(`` opens an item only at level 0, a
    ``)`` closes one when the level comes back to 0, and at a negative level both are text);
    an item that starts with ``(`` and ends with ``)`` is read again without them at the
    weight x 1.1, or at the number after its last colon (not its first character) when
    ``float`` reads it, that text cut off; the escapes read back per segment. Empty segments
    are left out."""
    hidden = prompt.replace("\\)", "\0\1").replace("\\(", "\0\2")

    def items(text: str) -> list[str]:
        found, current, level = [], "", 0
        for char in text:
            if char == "(":
                if level == 0:
                    if current:
                        found.append(current)
                    current = "("
                else:
                    current += char
                level += 1
            elif char == ")":
                level -= 1
                if level == 0:
                    found.append(current + ")")
                    current = ""
                else:
                    current += char
            else:
                current += char
        if current:
            found.append(current)
        return found

    def weighted(text: str, weight: float) -> list[tuple[str, float]]:
        out = []
        for item in items(text):
            if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
                inner, inner_weight = item[1:-1], weight * 1.1
                colon = inner.rfind(":")
                if colon > 0:
                    try:
                        inner_weight = float(inner[colon + 1 :])
                        inner = inner[:colon]
                    except ValueError:
                        pass
                out += weighted(inner, inner_weight)
            else:
                out.append((item, weight))
        return out

    return [(text.replace("\0\1", ")").replace("\0\2", "("), weight) for text, weight in weighted(hidden, 1.0) if text]


def comfy_words(segments: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The words ComfyUI tokenizes one by one, with their weights: each segment cut at spaces
    (line breaks read as spaces), empty words dropped; a word that starts with ``embedding:``
    is the embedding the rest names (here its token: the name), found, as ComfyUI finds a
    name with a comma glued to it, with the commas stripped and then read as a word after it."""
    words = []
    for text, weight in segments:
        for word in text.replace("\n", " ").split(" "):
            if not word:
                continue
            if word.startswith("embedding:"):
                name = word[len("embedding:") :]
                stripped = name.strip(",")
                words.append((stripped, weight))
                if len(stripped) < len(name):
                    words.append((name[len(stripped) :], weight))
                continue
            words.append((word, weight))
    return words
