"""`clipcond generate --help` states the defaults argparse applies to the numbers a user tunes."""

from __future__ import annotations

import pytest

from clipcond.cli import build_parser


@pytest.mark.parametrize("dest", ["steps", "guidance", "seed", "n"])
def test_generate_help_states_each_default_argparse_applies(dest, capsys) -> None:
    parser = build_parser()
    applied = getattr(parser.parse_args(["generate", "a red circle"]), dest)
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    option = f"--{dest} {dest.upper()}"
    assert option in help_text
    assert f"(default: {applied}" in help_text.rsplit(option, 1)[1].split(" --", 1)[0]


def test_every_option_of_every_command_says_what_it_is() -> None:
    """Each option of each `clipcond` command has a help text (generate's --height and --width had none)."""
    import argparse

    parser = build_parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    unexplained = [
        f"{name} {action.dest}"
        for name, command in subparsers.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert unexplained == []


def test_the_default_image_size_is_the_unets_sample_size_times_the_vaes_scale(diffusers_sd_folder, tmp_path) -> None:
    """What `--height` and `--width` say of their default, on a diffusers folder; given, they set it."""
    import diffusers
    from PIL import Image

    from clipcond.cli import main

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(diffusers_sd_folder)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    argv = ["generate", "a red circle", "--model", str(diffusers_sd_folder), "--steps", "1"]
    assert main([*argv, "-o", str(tmp_path / "default.png")]) == 0
    assert Image.open(tmp_path / "default.png").size == (side, side)
    assert main([*argv, "-o", str(tmp_path / "set.png"), "--height", str(side * 2), "--width", str(side)]) == 0
    assert Image.open(tmp_path / "set.png").size == (side, side * 2)  # PIL: (width, height)
