"""`--lora` and `--embedding` values of `clipcond generate`: ``[NAME=]SOURCE`` and the names
given by default (`clipcond.pipelines.named_sources`). Whole runs are in
`tests/test_generate_prompts.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipcond.errors import UsageError
from clipcond.pipelines.named_sources import NamedSource, check_names, embedding_argument, lora_argument

# -- --lora [NAME=]SOURCE ----------------------------------------------------------------------


def test_a_lora_is_named_as_a1111_names_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "add_detail.safetensors").write_bytes(b"")
    (tmp_path / "style folder").mkdir()
    assert lora_argument(str(tmp_path / "add_detail.safetensors")) == NamedSource(
        "add_detail", tmp_path / "add_detail.safetensors", str(tmp_path / "add_detail.safetensors")
    )
    assert lora_argument(str(tmp_path / "style folder")).name == "style folder"
    assert lora_argument(str(tmp_path / "style folder") + "/").name == "style folder"
    monkeypatch.chdir(tmp_path / "style folder")
    assert lora_argument(".") == NamedSource("style folder", Path("."), ".")
    assert lora_argument("org/pixel-art") == NamedSource("pixel-art", "org/pixel-art", "org/pixel-art")
    assert lora_argument("pixel_art") == NamedSource("pixel_art", "pixel_art", "pixel_art")


def test_name_equals_source_names_the_adapter(tmp_path, monkeypatch) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"")
    written = f"detail={tmp_path / 'a.safetensors'}"
    assert lora_argument(written) == NamedSource("detail", tmp_path / "a.safetensors", written)
    assert lora_argument("my style=org/x.y") == NamedSource("my style", "org/x.y", "my style=org/x.y")
    # an existing path is a source whole, '=' and all (its name then needs giving); a name
    # holding a path separator is a path
    monkeypatch.chdir(tmp_path)
    Path("k=v").mkdir()
    with pytest.raises(UsageError, match=r"^--lora k=v: the adapter name 'k=v' \(the folder's name\) holds '='"):
        lora_argument("k=v")
    assert lora_argument("x=k=v") == NamedSource("x", Path("k=v"), "x=k=v")
    with pytest.raises(UsageError, match=r"no such file or folder"):
        lora_argument(f"{tmp_path}/x=org/y")
    with pytest.raises(UsageError) as refused:
        lora_argument("x=./missing.safetensors")
    assert (
        str(refused.value) == "--lora ./missing.safetensors: no such file or folder (a hub id is `name` or `org/name`)"
    )
    with pytest.raises(UsageError) as refused:
        lora_argument("=org/x")
    assert (
        str(refused.value)
        == "--lora =org/x: the adapter name would be empty (given before '='); give it another: --lora NAME=SOURCE"
    )
    with pytest.raises(UsageError) as refused:
        lora_argument("x=")
    assert str(refused.value) == "--lora x=: no such file or folder (a hub id is `name` or `org/name`)"
    with pytest.raises(UsageError) as refused:
        lora_argument("/")
    assert str(refused.value) == "--lora /: the adapter name would be empty (the folder's name); name it: --lora NAME=/"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "org/detail-v1.5",
            "--lora org/detail-v1.5: the adapter name 'detail-v1.5' (the hub id's last part) holds '.', which diffusers' "
            "adapters cannot take (it names the adapter's layers); name it: --lora NAME=org/detail-v1.5",
        ),
        (
            "a:b=org/x",
            "--lora a:b=org/x: the adapter name 'a:b' (given before '=') holds ':', which a <lora:name:0.8> tag reads "
            "as the end of the name; give it another: --lora NAME=SOURCE",
        ),
        ("a>b=org/x", "holds '>', which a <lora:name> tag reads as its end"),
    ],
    ids=["dot", "colon", "angle"],
)
def test_a_name_no_tag_or_adapter_can_hold_is_refused_saying_how_to_name_it(value: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        lora_argument(value)
    assert message in str(refused.value)


def test_a_file_name_with_a_dot_or_an_equals_sign_is_refused(tmp_path) -> None:
    for name, mark in (("detail.v2.safetensors", "'.'"), ("te=0.5.safetensors", "'.'"), ("k=v.bin", "'='")):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(UsageError) as refused:
            lora_argument(str(tmp_path / name))
        assert f"(the file's name) holds {mark}" in str(refused.value)
        assert str(refused.value).endswith(f"name it: --lora NAME={tmp_path / name}")


def test_two_loras_of_one_name_are_refused() -> None:
    check_names([lora_argument("org/a"), lora_argument("org/b")], "--lora")
    with pytest.raises(UsageError) as refused:
        check_names([lora_argument("org/a"), lora_argument("other/b"), lora_argument("me/a")], "--lora")
    assert str(refused.value) == (
        "--lora org/a and --lora me/a would both be the adapter 'a': name one: --lora NAME=me/a"
    )


# -- --embedding [TOKEN=]SOURCE ----------------------------------------------------------------


def test_an_embedding_file_is_the_token_of_its_name_and_a_folder_keeps_its_own(tmp_path) -> None:
    for file, token in (("EasyNegative.safetensors", "EasyNegative"), ("bad.hands.v2.pt", "bad.hands.v2")):
        (tmp_path / file).write_bytes(b"")
        assert embedding_argument(str(tmp_path / file)) == NamedSource(token, tmp_path / file, str(tmp_path / file))
    (tmp_path / "cat-toy").mkdir()
    assert embedding_argument(str(tmp_path / "cat-toy")) == NamedSource(
        None, tmp_path / "cat-toy", str(tmp_path / "cat-toy")
    )
    assert embedding_argument("sd-concepts-library/cat-toy") == NamedSource(
        None, "sd-concepts-library/cat-toy", "sd-concepts-library/cat-toy"
    )
    assert embedding_argument("<toy>=sd-concepts-library/cat-toy").name == "<toy>"
    assert embedding_argument(f"neg:1={tmp_path / 'bad.hands.v2.pt'}").name == "neg:1"  # a token may hold ':' and '.'


def test_a_token_that_is_empty_or_two_words_is_refused(tmp_path) -> None:
    (tmp_path / "bad hands.pt").write_bytes(b"")
    with pytest.raises(UsageError) as refused:
        embedding_argument(str(tmp_path / "bad hands.pt"))
    assert str(refused.value) == (
        f"--embedding {tmp_path / 'bad hands.pt'}: the token 'bad hands' (the file's name) holds ' ', which a prompt "
        f"reads as two words; name it: --embedding TOKEN={tmp_path / 'bad hands.pt'}"
    )
    with pytest.raises(UsageError) as refused:
        embedding_argument("a\tb=org/x")
    assert "holds '\\t', which a prompt reads as two words; give it another: --embedding TOKEN=SOURCE" in str(
        refused.value
    )
    with pytest.raises(UsageError, match=r"the token 'a\\nb' \(given before '='\) holds '\\n'"):
        embedding_argument("a\nb=org/x")
    with pytest.raises(UsageError) as refused:
        embedding_argument("=org/x")
    assert str(refused.value) == (
        "--embedding =org/x: the token would be empty (given before '='); give it another: --embedding TOKEN=SOURCE"
    )
    with pytest.raises(UsageError, match=r"^--embedding missing.pt: no such file or folder"):
        embedding_argument("missing.pt")


def test_tokens_must_differ_but_tokens_kept_from_files_are_not_compared() -> None:
    kept = [embedding_argument("org/a"), embedding_argument("org/b")]
    check_names(kept, "--embedding")
    with pytest.raises(UsageError) as refused:
        check_names([*kept, embedding_argument("t=org/c"), embedding_argument("t=org/d")], "--embedding")
    assert str(refused.value) == (
        "--embedding t=org/c and --embedding t=org/d would both be the token 't': name one: --embedding TOKEN=org/d"
    )
