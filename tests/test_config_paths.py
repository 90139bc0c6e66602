"""Config values that name a file or folder (`clipcond.config.PATH_KEYS`) and that no file system
call could take: a NUL byte, a name over NAME_MAX bytes, a path over PATH_MAX bytes. Each is one
``error:`` line naming the key, the value quoted short, before any work; they were tracebacks
(``OSError: [Errno 36] File name too long``, ``ValueError: embedded null byte``) from the first
``Path.exists()`` or ``os.open`` deep in train-diffusion, train-clip and ``experiment --check``,
holding the whole value (52 MB of stderr for a 50 MB value)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import pytest
import yaml
from test_cli_errors import TINY_MODEL, one_error
from test_train_diffusion import UNET

from clipcond.config import NAME_MAX, PATH_MAX, QUOTE_LIMIT, apply_overrides, config_from_dict, path_problem, quoted

REPO = Path(__file__).resolve().parents[1]
SHAPES_MODEL = str(REPO / "clipcond" / "data" / "shapes-model")
LONG_NAME = "a" * 300  # one name over NAME_MAX (255 bytes on Linux)
NUL = "models/cl\x00ip"
LINE_BOUND = 800  # an error line: the message and the value quoted through `quoted` (200 characters)


@dataclasses.dataclass
class _Paths:
    output_dir: str
    suites: list[str] = dataclasses.field(default_factory=list)
    prompt: str = ""


def _os_refuses(path: str) -> bool:
    """Whether the operating system refuses `path` as a name (not merely finds nothing there)."""
    try:
        os.stat(path)
    except ValueError:  # a NUL byte
        return True
    except OSError as error:
        return error.errno == errno.ENAMETOOLONG
    return False


def test_path_problem_refuses_exactly_what_the_file_system_refuses(tmp_path) -> None:
    """The reference is the kernel: a name of NAME_MAX bytes can be made and one byte more
    cannot (counted in bytes: "é" is 2), and a path of PATH_MAX bytes is looked up while one
    byte more is refused."""
    widest = "é" * (NAME_MAX // 2) + "a" * (NAME_MAX % 2)  # NAME_MAX bytes in UTF-8
    (tmp_path / widest).mkdir()
    assert path_problem(str(tmp_path / widest)) is None
    for over in ("é" * (NAME_MAX // 2 + 1), "a" * (NAME_MAX + 1)):
        with pytest.raises(OSError) as refused:
            (tmp_path / over).mkdir()
        assert refused.value.errno == errno.ENAMETOOLONG
        assert path_problem(str(tmp_path / over)) == (
            f"a file or folder name is at most {NAME_MAX} bytes, and this path has one of {NAME_MAX + 1}"
        )
    deep = ("abcdefg/" * PATH_MAX)[:PATH_MAX]  # short names, PATH_MAX bytes in all
    assert not _os_refuses(deep) and path_problem(deep) is None
    assert _os_refuses(deep + "x") and path_problem(deep + "x") == (
        f"a path is at most {PATH_MAX} bytes, and this one has {PATH_MAX + 1:,}"
    )
    assert _os_refuses(NUL) and path_problem(NUL) == "a path cannot hold a NUL byte"
    assert path_problem("a\ud800") == r"a path cannot hold '\ud800'"  # os.fsencode cannot encode it


@pytest.mark.parametrize(
    "value, reason",
    [
        (LONG_NAME, "a file or folder name is at most"),
        (NUL, "a path cannot hold a NUL byte"),
        ("b" * (50 * 1024 * 1024), "a file or folder name is at most"),  # 50 MB
    ],
    ids=["300-char name", "NUL", "50 MB"],
)
def test_a_path_key_is_refused_naming_the_key_with_the_value_quoted(value, reason) -> None:
    assert _os_refuses(value)
    with pytest.raises(ValueError) as refused:
        config_from_dict(_Paths, {"output_dir": "runs/x", "suites": ["ok", value]}, source="c.yaml")
    message = str(refused.value)
    assert message.startswith(f"c.yaml: key `suites[1]`: {reason}")
    assert message.endswith(f": {quoted(value)}") and len(quoted(value)) <= QUOTE_LIMIT + 3
    assert len(message) < LINE_BOUND and "\x00" not in message


def test_an_override_of_a_path_key_is_checked_too() -> None:
    config = config_from_dict(_Paths, {"output_dir": "runs/x"})
    with pytest.raises(ValueError, match=r"--output-dir: key `output_dir`: a file or folder name is at most"):
        apply_overrides(config, [f"output_dir=runs/{LONG_NAME}"], source="--output-dir")


def test_a_long_string_under_another_key_is_left_alone() -> None:
    config = config_from_dict(_Paths, {"output_dir": "runs/x", "prompt": LONG_NAME})
    assert config.prompt == LONG_NAME


# ------------------------------------------------------------------ the commands


def _diffusion(text_encoder: str, output_dir: str) -> dict:
    return dict(text_encoder=text_encoder, unet=UNET, image_size=16, batch_size=4, steps=2, output_dir=output_dir)


def _experiment(tmp_path: Path, suite: str = "shapes", pipeline: str = SHAPES_MODEL) -> dict:
    setup = {"name": "s", "pipeline": pipeline}
    return dict(name="t", suites=[suite], setups=[setup], seeds=[0], output_dir=str(tmp_path / "exp"))


CASES = {
    "train-diffusion text_encoder": ("text_encoder", lambda t, clip, v: _diffusion(v, str(t / "run"))),
    "train-diffusion output_dir": ("output_dir", lambda t, clip, v: _diffusion(clip, str(t / v))),
    "train-clip model": ("model", lambda t, clip, v: dict(model=v, batch_size=8, steps=2, output_dir=str(t / "c"))),
    "train-clip output_dir": (
        "output_dir",
        lambda t, clip, v: dict(model=TINY_MODEL, batch_size=8, steps=2, output_dir=str(t / v)),
    ),
    "experiment suites": ("suites[0]", lambda t, clip, v: _experiment(t, suite=v)),
    "experiment pipeline": ("setups[0].pipeline", lambda t, clip, v: _experiment(t, pipeline=v)),
    "encode clip.path": ("clip[0].path", lambda t, clip, v: {"clip": [{"path": v}]}),
}


def _argv(case: str, config: Path, tmp_path: Path) -> list[str]:
    command = case.split()[0]
    if command == "experiment":
        return ["experiment", str(config), "--check"]
    if command == "encode":
        (tmp_path / "prompts.txt").write_text("a red circle\n")
        return [
            "encode",
            "--conditioner",
            str(config),
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--out",
            str(tmp_path / "e"),
        ]
    return [command, "--config", str(config), "--no-progress"]


@pytest.mark.parametrize("value", [LONG_NAME, NUL, "d" * 100_000], ids=["300-char name", "NUL", "100,000 chars"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_command_refuses_a_path_the_os_cannot_take_in_one_short_line(
    case, value, tmp_path, capsys, tiny_clip_text_path
) -> None:
    key, make = CASES[case]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(make(tmp_path, str(tiny_clip_text_path), value), width=10**9))
    line = one_error(capsys, _argv(case, config, tmp_path), 2)
    assert f"{config}: key `{key}`: " in line
    assert len(line) < LINE_BOUND and "\x00" not in line
    assert {p.name for p in tmp_path.iterdir()} <= {"c.yaml", "prompts.txt"}  # no run folder begun
