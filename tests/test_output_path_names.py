"""An output path no file system takes (a name over NAME_MAX bytes, a NUL byte), given on the
command line, is one ``error:`` line naming the option, the path quoted short, before any work:
`check_new_file`'s ``Path.is_dir()`` raised ``OSError: [Errno 36] File name too long`` with
the whole path in the traceback (``generate -o``, ``eval-clip --output``, ``encode --out``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli_errors import one_error

from clipcond.config import NAME_MAX, quoted
from clipcond.errors import UsageError
from clipcond.output_paths import check_new_file, check_output_location

SD15 = str(Path(__file__).resolve().parents[1] / "configs" / "conditioners" / "sd15.yaml")
CLIP_TINY = str(Path(__file__).resolve().parents[1] / "configs" / "models" / "clip-tiny.yaml")
BAD_NAMES = {"300-char name": "a" * 300, "NUL": "r\x00un", "100,000 chars": "d" * 100_000}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_the_checks_refuse_a_name_the_os_refuses(name, tmp_path) -> None:
    path = str(tmp_path / name)
    with pytest.raises((OSError, ValueError)):  # the reference: the kernel will not make it
        os.mkdir(path)
    for check in (lambda: check_output_location(path, "--out"), lambda: check_new_file(path, "--out", force=False)):
        with pytest.raises(UsageError) as refused:
            check()
        message = str(refused.value)
        assert message.startswith(f"--out {quoted(path)}: a ") and len(message) < 600 and "\x00" not in message
    widest = tmp_path / ("b" * NAME_MAX)
    assert check_new_file(widest, "--out", force=False) == widest
    widest.mkdir()


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_commands_refuse_such_an_output_in_one_short_line(name, tmp_path, capsys) -> None:
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    for option, argv in [
        ("-o/--output", ["generate", "a red circle", "-o", str(tmp_path / f"{name}.png")]),
        (
            "--out",
            [
                "encode",
                "--conditioner",
                SD15,
                "--prompts",
                str(tmp_path / "prompts.txt"),
                "--out",
                str(tmp_path / name),
            ],
        ),
    ]:
        line = one_error(capsys, argv, 2)
        assert line.startswith(f"error: {option} '{tmp_path}") and len(line) < 600 and "\x00" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_commands_refuse_such_an_input_in_one_short_line(name, tmp_path, capsys) -> None:
    """Input paths too: `Path.is_file()` on them raised the same OSError traceback."""
    bad = str(tmp_path / name)
    for option, argv in [
        ("--model", ["generate", "a red circle", "--model", bad, "-o", str(tmp_path / "out.png")]),
        ("--model", ["eval-clip", "--model", bad]),
        ("--checkpoint", ["convert-clip", "--checkpoint", bad, "--output", str(tmp_path / "converted")]),
        ("--model", ["init-clip", "--model", bad, "-o", str(tmp_path / "clip")]),
        ("-o/--output", ["init-clip", "--model", CLIP_TINY, "-o", bad]),
    ]:
        line = one_error(capsys, argv, 2)
        assert line.startswith(f"error: {option} '{tmp_path}") and len(line) < 600 and "\x00" not in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_output_named_with_the_most_bytes_a_name_holds_is_written(tmp_path, capsys) -> None:
    """Before: the checks took such a name, and the write ended the run in "OSError: [Errno 36]
    File name too long" (its hidden temporary sibling's name was longer)."""
    from clipcond.cli import main

    widest = tmp_path / ("c" * NAME_MAX)
    assert main(["init-clip", "--model", CLIP_TINY, "-o", str(widest)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == [widest.name] and (widest / "clip_config.yaml").is_file()
