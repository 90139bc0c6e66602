"""Fingerprints of model configs, so stored embeddings and latents follow a model's architecture
settings as well as its weights.

Two models with the same weights can compute different things: `convert-clip` with and without
`--gelu` writes the same tensors under configs that differ only in `hidden_act`, and a VAE whose
config says another activation or norm eps decodes the same weights differently. The weights
hash cannot see that; `config_fingerprint` hashes what the config says that is not the
library's default (transformers' `to_diff_dict`; for a diffusers model, the values that differ
from its class's `__init__` defaults), so a library upgrade that adds a new setting at its
default leaves the fingerprint as it was, and without the entries that name where or how a model
was saved rather than what it computes (`_name_or_path`, versions, `dtype`, `architectures`:
the dtype is part of the weights hash).

`ConfigFingerprints` computes it once per model and config object (a transformers config's
`to_diff_dict` costs about half a millisecond, too much for every cached encode); a config
changed in place on a built model does not change that model's modules, so it is not
followed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

# entries that say where or how a config was saved, not what the model computes
_NOT_ARCHITECTURE = frozenset({"transformers_version", "torch_dtype", "dtype", "architectures"})


def config_fingerprint(model: nn.Module, ignore: Collection[str] = ()) -> str:
    """A sha256 hex digest of the settings `model`'s config holds beyond its library's defaults,
    but those named in `ignore` (settings that do not change what is stored); "" for a module
    without a transformers or diffusers config."""
    settings = _config_settings(model)
    if settings is None:
        return ""
    settings = {name: value for name, value in settings.items() if name not in ignore}
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()  # json.dumps escapes all else


def _config_settings(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if hasattr(config, "to_diff_dict"):  # transformers' PretrainedConfig
        items = config.to_diff_dict()
    elif isinstance(config, Mapping):  # diffusers' ConfigMixin: its `__init__` arguments
        items = _differing_from_init_defaults(type(model), config)
    else:
        return None
    return {name: value for name, value in items.items() if not name.startswith("_") and name not in _NOT_ARCHITECTURE}


def _differing_from_init_defaults(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a diffusers config that its class's `__init__` would not set by default
    (compared as JSON, so a tuple default equals the list a saved config holds)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return dict(config)
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return {
        name: value
        for name, value in config.items()
        if name not in defaults or _as_json(defaults[name]) != _as_json(value)
    }


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


class ConfigFingerprints:
    """`config_fingerprint` per model, computed again only when the model's config object is
    replaced. Models are held weakly: a conditioner that swaps an encoder out does not keep it."""

    def __init__(self) -> None:
        # model -> (its config object when hashed, the fingerprint)
        self._known: weakref.WeakKeyDictionary[nn.Module, tuple[Any, str]] = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module) -> str:
        """The fingerprint of `model`'s config."""
        config = getattr(model, "config", None)
        known = self._known.get(model)
        if known is not None and known[0] is config:
            return known[1]
        fingerprint = config_fingerprint(model)
        self._known[model] = (config, fingerprint)
        return fingerprint

    def __getstate__(self) -> dict:
        # Weak references cannot be pickled; a copy computes its models' fingerprints again.
        return {}

    def __setstate__(self, state: dict) -> None:
        self._known = weakref.WeakKeyDictionary()


__all__ = ["ConfigFingerprints", "config_fingerprint"]
