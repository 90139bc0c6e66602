"""OpenAI's reference CLIP tokenizer, loaded without importing the `clip` package.

The `clip-anytorch` wheel ships OpenAI's `clip/simple_tokenizer.py`, but
`clip/__init__.py` imports torchvision, which the test environment does not
have. `find_spec` locates the package folder without running `__init__`, and
the tokenizer module is then loaded straight from its file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

_INSTALL_HINT = "pip install --no-deps clip-anytorch==2.6.0"


def _clip_package_dir() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "OpenAI's reference CLIP tokenizer (package `clip`) is not installed; the tokenizer tests "
            f"compare against it. Install it with: {_INSTALL_HINT}"
        )
    return Path(spec.submodule_search_locations[0])


def _load_simple_tokenizer_module() -> ModuleType:
    path = _clip_package_dir() / "simple_tokenizer.py"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall the reference with: {_INSTALL_HINT}")
    spec = importlib.util.spec_from_file_location("_reference_clip_simple_tokenizer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_clip_tokenizer() -> Any:
    """Return OpenAI's `SimpleTokenizer` built from the vocabulary inside the reference package.

    Returns:
        A `clip.simple_tokenizer.SimpleTokenizer`; `.encode(text)` gives the BPE ids
        without bos/eos.
    """
    module = _load_simple_tokenizer_module()
    bpe_path = _clip_package_dir() / "bpe_simple_vocab_16e6.txt.gz"
    return module.SimpleTokenizer(str(bpe_path))
