"""The device a command runs on, checked before any work (torch is imported on use, so that a
command line can import this module without it)."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """`device`, or "cuda" when available else "cpu" for None, checked by putting a tensor there.

    Raises:
        ValueError: not a device name torch knows, or one this machine lacks (such as "cuda"
            without CUDA), with torch's reason; or "meta", which holds no values to compute.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.zeros(()).to(device)
    except (RuntimeError, AssertionError) as error:  # torch raises AssertionError for CUDA it was built without
        raise ValueError(f"{device!r} is not a device this machine can run on: {error}") from error
    if torch.device(device).type == "meta":
        raise ValueError(f"{device!r} is not a device that computes: it holds shapes, not values (give cpu, cuda, ...)")
    return device
