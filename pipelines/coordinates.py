"""Coordinate channels: where each pixel is, as two extra UNet input channels.

A convolutional UNet sees absolute position only through the zero padding at the image
border, and only where its receptive field reaches that border. A pixel-space UNet whose
cross-attention sits at its lowest resolution therefore can hardly tell, for a pure-noise
input, the left half of the image from the right: the bundled shapes model's mean x0 at t=999
for "a red circle to the left of a blue square" holds 8% of the left/right colour contrast of
the training images (22% with coordinate channels after the same training;
benchmarks/shapes_model_position_probe.py). Appending the pixel
coordinates as two input channels (CoordConv, Liu et al. 2018) gives every layer that
information from the start. The pipeline and the training loop both append them with
`append_coordinates`, so a UNet trained with them is sampled with them.
"""

from __future__ import annotations

import torch

COORDINATE_CHANNELS = 2


def coordinate_grid(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The (2, height, width) grid of pixel-centre coordinates in [-1, 1].

    Channel 0 is x (left -1 to right +1), channel 1 is y (top -1 to bottom +1).
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).to(dtype)


def append_coordinates(sample: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, C + 2, H, W): `sample` with x and y coordinate channels appended.

    The coordinates take `sample`'s dtype and device.
    """
    if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
        raise TypeError(f"`sample` must be a (batch, channels, height, width) tensor, got {type(sample).__name__}")
    batch, _, height, width = sample.shape
    grid = coordinate_grid(height, width, dtype=sample.dtype, device=sample.device)
    return torch.cat([sample, grid.expand(batch, -1, -1, -1)], dim=1)
