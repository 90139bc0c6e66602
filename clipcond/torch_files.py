"""Reading a pickle-based torch file (``.pt``, ``.bin``, ``.ckpt``) without running its code.

`torch.load(weights_only=True)` unpickles tensors and plain containers only. What it stops at
is told apart here, for the callers' messages: a file that needs more than that (objects whose
unpickling can run code; `NeedsUnpickling`, naming them), or bytes that are no torch file at all
(`NotATorchFile`, with torch's reason).
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from typing import Any

import torch

# torch's words for a global its weights-only unpickler refuses: one off its allowed list
# ("Unsupported global: GLOBAL argparse.Namespace") or of a module it blocks outright
# ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked")
_REFUSED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


class NotATorchFile(ValueError):
    """The bytes are not a file `torch.load(weights_only=True)` reads; `reason` is torch's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NeedsUnpickling(NotATorchFile):
    """The file holds objects beyond tensors and plain containers; `names` are their globals."""

    def __init__(self, reason: str, names: list[str]) -> None:
        super().__init__(reason)
        self.names = names


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location=map_location, weights_only=True)``; ``"meta"`` reads the
    structure and shapes without the tensors' data.

    Raises:
        NeedsUnpickling: the file holds objects that only a full unpickle (which can run code) reads.
        NotATorchFile: the bytes are not a torch file (torch's reason in `reason`).
        OSError: the file cannot be read.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names what its weights-only unpickler stopped at on a line of its own, after its
        # advice to load with weights_only=False: a global off its allowed list ("WeightsUnpickler
        # error: Unsupported global: GLOBAL ..."), or a blocked module ("Trying to load unsupported
        # GLOBAL posix.system whose module posix is blocked.")
        lines = [line.strip() for line in str(error).splitlines()]
        named = [
            line.split("WeightsUnpickler error:")[-1].strip() for line in lines if "WeightsUnpickler error" in line
        ]
        named += [line for line in lines if "GLOBAL" in line]
        reason = (named[0] if named else "") or str(error)[:200]
        names = _REFUSED_GLOBAL.findall(str(error))
        raise (NeedsUnpickling(reason[:300], names) if names else NotATorchFile(reason[:300])) from error
    # other bytes stop the unpickler with whatever its opcode handling raises
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, struct.error) as error:
        raise NotATorchFile(f"{error!r:.200}") from error


__all__ = ["NeedsUnpickling", "NotATorchFile", "load_weights_only"]
