"""SD3's skip-layer guidance pass given each step's prompt rows (prompt editing on SD3)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


class SkipLayerRows:
    """Gives SD3's skip-layer guidance pass the prompt rows its guided pass has just read.

    diffusers' SD3 `__call__` keeps the prompt embeddings it was given aside for the pass made
    with `skip_layers` (`original_prompt_embeds`, `original_pooled_prompt_embeds`), which no
    callback can replace: without this, that pass read step 0's text at every step. A forward
    pre-hook on the transformer keeps the prompt half of each guided call's
    `encoder_hidden_states` (2 x rows, seq, width) and `pooled_projections` (2 x rows, width)
    (negatives first, then the prompts, which `StepSwap` has set to the step's) and gives them
    to the next call made with `skip_layers` (rows: the latents, unguided).

    The hook holds no step of its own and is removed at the last iteration; a call that raises
    leaves it behind until the transformer's next call, where, finding the scheduler set anew,
    it removes itself before doing anything.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.timesteps = pipe.scheduler.timesteps  # this call's, set before its loop
        self.prompt_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.handle = pipe.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    @staticmethod
    def applies(pipe: Any) -> bool:
        """Whether `pipe` has a transformer whose forward takes `skip_layers` (SD3's)."""
        transformer = getattr(pipe, "transformer", None)
        if not isinstance(transformer, torch.nn.Module):
            return False
        # the class's forward: accelerate's offload hooks wrap the instance's in (*args, **kwargs)
        return "skip_layers" in inspect.signature(type(transformer).forward).parameters

    def remove(self) -> None:
        self.handle.remove()

    def _hook(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if getattr(self.pipe.scheduler, "timesteps", None) is not self.timesteps:
            self.remove()  # another call: the one this was for raised
            return None
        tokens, pooled = kwargs.get("encoder_hidden_states"), kwargs.get("pooled_projections")
        if kwargs.get("skip_layers") is None:
            self.prompt_rows = None
            if tokens is not None and tokens.shape[0] % 2 == 0:
                half = tokens.shape[0] // 2  # the guided batch: negatives, then the prompts
                self.prompt_rows = (tokens[half:], None if pooled is None else pooled[half:])
            return None
        latents = kwargs.get("hidden_states")
        if self.prompt_rows is None or latents is None or latents.shape[0] != self.prompt_rows[0].shape[0]:
            return None
        kwargs["encoder_hidden_states"], step_pooled = self.prompt_rows
        if step_pooled is not None:
            kwargs["pooled_projections"] = step_pooled
        return args, kwargs
