"""Which heavy libraries each entry point imports, each in a fresh interpreter.

``clipcond --help`` (and every subcommand's) and the prompt parser load none of torch,
transformers, diffusers or accelerate; the CLIP tokenizer needs transformers' tokenizer classes
but not torch. Speed itself is measured by benchmarks/bench_cold_start.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from clipcond.cli import SUBCOMMANDS
from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

HEAVY = ("torch", "transformers", "diffusers", "accelerate")


def loaded_after(steps: dict[str, str]) -> dict[str, list[str]]:
    """Run each step's code in turn in one fresh interpreter; after each, the heavy top-level
    packages imported so far."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        heavy = {HEAVY!r}
        seen = {{}}
        for name, code in {steps!r}.items():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                exec(code)
            seen[name] = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
        print(json.dumps(seen))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_help_and_the_parser_load_no_heavy_library() -> None:
    helps = {"clipcond --help": "import clipcond.cli; clipcond.cli.main(['--help'])"}
    for name, _, _ in SUBCOMMANDS:
        helps[f"clipcond {name} --help"] = f"clipcond.cli.main([{name!r}, '--help'])"
    seen = loaded_after({"import clipcond": "import clipcond", **helps})
    assert seen == {step: [] for step in seen}


def test_the_prompt_parser_and_the_tokenizer_load_no_torch_and_the_conditioner_no_diffusers() -> None:
    seen = loaded_after(
        {
            "parse_prompt": "from clipcond import parse_prompt; parse_prompt('a (red:1.2) cat')",
            "clip_tokenizer": "from clipcond import clip_tokenizer; clip_tokenizer()('a red cat')",
            "TextConditioner": "from clipcond import PromptEmbeds, Recipe, TextConditioner, get_recipe",
        }
    )
    assert seen == {
        "parse_prompt": [],
        "clip_tokenizer": ["transformers"],
        "TextConditioner": ["torch", "transformers"],
    }


def test_the_public_names_resolve_to_their_modules() -> None:
    import clipcond
    from clipcond import (
        CLIPConditionedImg2ImgPipeline,
        CLIPConditionedInpaintPipeline,
        CLIPConditionedPipeline,
        ConditionerConfig,
        Fragment,
        PromptEmbeds,
        Recipe,
        TextConditioner,
        TextProjection,
        clip_tokenizer,
        get_recipe,
        parse_prompt,
    )
    from clipcond.conditioner_config import ConditionerConfig as config_class
    from clipcond.conditioning import TextConditioner as conditioner_class
    from clipcond.embeds import PromptEmbeds as embeds_class
    from clipcond.families import get_recipe as get_recipe_function
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline as pipeline_class
    from clipcond.pipelines.img2img import CLIPConditionedImg2ImgPipeline as img2img_class
    from clipcond.pipelines.inpaint import CLIPConditionedInpaintPipeline as inpaint_class
    from clipcond.projection import TextProjection as projection_class
    from clipcond.prompts import Fragment as fragment_class
    from clipcond.prompts import parse_prompt as parse_function
    from clipcond.recipes import Recipe as recipe_class
    from clipcond.tokenization import clip_tokenizer as tokenizer_function

    pairs = [
        (CLIPConditionedPipeline, pipeline_class),
        (CLIPConditionedImg2ImgPipeline, img2img_class),
        (CLIPConditionedInpaintPipeline, inpaint_class),
        (ConditionerConfig, config_class),
        (Fragment, fragment_class),
        (PromptEmbeds, embeds_class),
        (Recipe, recipe_class),
        (TextConditioner, conditioner_class),
        (TextProjection, projection_class),
        (clip_tokenizer, tokenizer_function),
        (get_recipe, get_recipe_function),
        (parse_prompt, parse_function),
    ]
    assert all(public is defined for public, defined in pairs)
    assert set(clipcond.__all__) <= set(dir(clipcond))
    with pytest.raises(AttributeError, match="no attribute 'TextConditoner'"):
        clipcond.TextConditoner  # noqa: B018 - a typo is an AttributeError, as for a plain module


def test_a_saved_pipeline_loads_through_the_public_name_in_a_fresh_interpreter() -> None:
    """The saved tokenizer's module (clipcond.tokenization) is no longer imported by `import
    clipcond`; diffusers loads components only from modules already imported."""
    code = (
        "from clipcond import CLIPConditionedPipeline; "
        f"pipe = CLIPConditionedPipeline.from_pretrained({str(BUNDLED_MODEL)!r}); "
        "print(type(pipe.tokenizer).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "CLIPTokenizerWithTextCleaning"
