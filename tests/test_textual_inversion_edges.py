"""Edges of textual inversion that the pipeline-level tests do not reach (found by mutation
testing of textual_inversion.py): state dicts without a name, empty embeddings, several
multi-vector tokens in one prompt, offload hooks, the embedding table's resize, A1111 files
without a name, pairs for three encoders, and `.pt` files read with weights only whatever the
environment says. No pipeline: the reader and the helpers on a tokenizer and a tiny CLIP."""

from __future__ import annotations

import re

import pytest
import torch

from clipcond.textual_inversion import add_vectors, expand_tokens, multi_vector_tokens, read_textual_inversion
from clipcond.tokenization import clip_tokenizer


def _vectors(count: int, width: int = 32) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("contents", [{"clip_l": 1, "clip_g": 2}, {"emb_params": 1}])
def test_a_state_dict_named_by_its_file_asks_for_a_token(contents):
    """A pair or an A1111 `emb_params` passed as a state dict has no file name to take its
    token from: the message asks for `token=`."""
    source = {key: _vectors(1) for key in contents}
    with pytest.raises(ValueError, match=r"^the state dict does not name its token: pass `token=`$"):
        read_textual_inversion(source)


def test_an_embedding_of_no_vectors_is_refused():
    """(0, width) is no embedding."""
    with pytest.raises(ValueError, match=r"shape \(vectors, width\) or \(width,\), got \(0, 32\)"):
        read_textual_inversion(torch.zeros(0, 32), token="<toy>")


def test_a_token_after_one_already_expanded_is_expanded_too():
    """Two multi-vector tokens: the first written out (as a pipeline's `maybe_convert_prompt`
    leaves it), the second not: the second still gets all its vectors."""
    tokenizer = clip_tokenizer()
    tokenizer.add_tokens(["<a>", "<a>_1", "<b>", "<b>_1", "<b>_2"])
    multi = multi_vector_tokens(tokenizer)
    assert multi == {"<a>": ["<a>", "<a>_1"], "<b>": ["<b>", "<b>_1", "<b>_2"]}
    assert expand_tokens("a <a> <a>_1 and a <b>", tokenizer, multi) == "a <a> <a>_1 and a <b> <b>_1 <b>_2"


def _tiny_clip(extra_rows: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond.encoders import TextEncoder

    tokenizer = clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
    )
    torch.manual_seed(0)
    return TextEncoder(CLIPTextModel(config), tokenizer)


def test_model_offload_hooks_are_not_sequential_offload():
    """`enable_model_cpu_offload`'s hooks (accelerate's `cpu_offload_with_hook`: a `CpuOffload`
    hook, no `offload` attribute) move the weights but keep them: nothing to lift."""
    from accelerate import cpu_offload_with_hook

    from clipcond.textual_inversion import sequential_offload

    encoder = _tiny_clip()
    cpu_offload_with_hook(encoder.model, execution_device="cpu")
    assert sequential_offload(encoder, 0) is None


@pytest.mark.parametrize("extra_rows", [0, 16], ids=["as_many_rows_as_tokens", "spare_rows"])
def test_the_table_is_resized_as_diffusers_resizes_it(extra_rows):
    """diffusers' `load_textual_inversion` resizes the table to the tokenizer's new size (a table
    with spare rows past the tokenizer shrinks to it) with transformers' mean resizing, which
    draws from the global RNG: the same size, the same draws after, and the token's vector."""
    from diffusers.loaders import TextualInversionLoaderMixin

    class Loader(TextualInversionLoaderMixin):  # what diffusers' loader reads of a pipeline
        hf_device_map = None
        components: dict = {}

    ours, peer = _tiny_clip(extra_rows), _tiny_clip(extra_rows)
    vector = _vectors(1)
    torch.manual_seed(5)
    Loader().load_textual_inversion(vector[0], token="<toy>", tokenizer=peer.tokenizer, text_encoder=peer.model)
    peer_draw = torch.rand(4)
    torch.manual_seed(5)
    add_vectors(ours, ["<toy>"], vector)
    assert torch.equal(torch.rand(4), peer_draw)
    table, peer_table = ours.model.get_input_embeddings().weight, peer.model.get_input_embeddings().weight
    assert table.shape == peer_table.shape == (len(ours.tokenizer), 32)
    assert torch.equal(table, peer_table)
    assert torch.equal(table[ours.tokenizer.convert_tokens_to_ids("<toy>")], vector[0])


@pytest.mark.parametrize("name", ["absent", ""])
def test_an_a1111_pt_without_a_name_is_named_by_its_file(tmp_path, name):
    """A1111 names an embedding by its file; a .pt without `name` (or with an empty one) takes
    the file's name."""
    data = {"string_to_param": {"*": _vectors(2)}}
    if name != "absent":
        data["name"] = name
    torch.save(data, tmp_path / "<toy>.pt")
    embedding = read_textual_inversion(tmp_path / "<toy>.pt")
    assert embedding.token == "<toy>" and embedding.vectors[None].shape == (2, 32)


def test_a_pair_for_three_clip_encoders_is_refused_as_a_pair():
    """The documented refusal of a clip_l/clip_g pair for more than two CLIPs, not
    a refusal for "fitting several encoders" nor a placement by width."""
    from types import SimpleNamespace

    from clipcond.textual_inversion import TextualInversion, placements

    clip = [SimpleNamespace(width=width, model=torch.nn.Identity()) for width in (32, 48, 64)]
    pair = TextualInversion("<toy>", {"clip_l": _vectors(1, 32), "clip_g": _vectors(1, 48)}, "the state dict")
    with pytest.raises(ValueError, match=r"holds a `clip_l`/`clip_g` pair, which fits one or two CLIP encoders, not 3"):
        placements(pair, clip)


def test_sequential_offload_reads_the_arguments_to_put_back():
    """What `cpu_offload` was called with comes back exactly, `offload_buffers` included, so
    that the hooks put back after loading offload the buffers as before."""
    from accelerate import cpu_offload

    from clipcond.textual_inversion import SequentialOffload, sequential_offload

    encoder = _tiny_clip()
    cpu_offload(encoder.model, torch.device("cpu"), offload_buffers=True)
    assert sequential_offload(encoder, 0) == SequentialOffload(torch.device("cpu"), True, ())
    preloading = _tiny_clip()
    cpu_offload(preloading.model, torch.device("cpu"), preload_module_classes=["CLIPMLP", "CLIPAttention"])
    assert sequential_offload(preloading, 0) == SequentialOffload(
        torch.device("cpu"), False, ("CLIPAttention", "CLIPMLP")
    )


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def _touch(path):
    open(path, "w").close()


def test_a_pt_file_is_read_weights_only_even_where_the_environment_says_otherwise(tmp_path, monkeypatch):
    """torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 only where `weights_only` is not passed:
    the explicit weights_only=True keeps a pickle payload unrun."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    torch.save({"string_to_param": {"*": _vectors(1)}, "name": "<toy>", "extra": _Payload(marker)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="needs full unpickling"):
        read_textual_inversion(tmp_path / "x.pt")
    assert not marker.exists()


class _SystemCall:
    """Pickles as a call of os.system, a module torch's weights-only unpickler blocks outright."""

    def __reduce__(self):
        import os

        return os.system, ("echo this must not run",)


def test_a_pt_file_calling_a_blocked_module_is_named_as_needing_full_unpickling(tmp_path):
    """torch words a blocked module ("unsupported GLOBAL posix.system whose module posix is
    blocked") otherwise than a global off its allowed list; both are the same refusal."""
    path = tmp_path / "x.pt"
    torch.save({"string_to_param": {"*": _vectors(1)}, "extra": _SystemCall()}, path)
    with pytest.raises(ValueError) as refusal:
        read_textual_inversion(path)
    assert re.fullmatch(
        rf"the file {re.escape(str(path))} needs full unpickling to load \(it holds objects other than tensors and "
        r"plain containers, and unpickling can run code\): it is read with torch\.load\(weights_only=True\) only, "
        r"and refused \(.*posix.*\)\. Convert it to safetensors where you trust it\.",
        str(refusal.value),
    ), str(refusal.value)


def test_a_file_holding_no_state_dict_says_what_it_holds(tmp_path):
    path = tmp_path / "embedding.pt"
    torch.save([_vectors(1)], path)
    with pytest.raises(ValueError) as refusal:
        read_textual_inversion(path)
    assert str(refusal.value) == f"the file {path} holds a list, not a state dict of embedding vectors"


def test_keys_of_no_layout_are_listed_eight_at_most_beside_the_layouts_read():
    source = {f"k{index}": _vectors(1) for index in range(9)}
    with pytest.raises(ValueError) as refusal:
        read_textual_inversion(source)
    assert str(refusal.value) == (
        "the state dict has the keys ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7'], which is no "
        "textual-inversion layout: expected {token: vectors} (diffusers), `string_to_param` (A1111 .pt), "
        "`emb_params` (A1111 .safetensors) or `clip_l` and `clip_g` (SDXL, SD3)"
    )


def test_a_cut_safetensors_file_is_named_as_one(tmp_path):
    """Read as safetensors by its suffix, whatever torch.load would make of it."""
    from safetensors.torch import save_file

    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<toy>": _vectors(2)}, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=rf"^the file {re.escape(str(path))} is not a readable safetensors file: "):
        read_textual_inversion(path)
