"""Starting images for a run without an init image: what the latent is before the first step.

The classic start is random codebook tokens, whose decoded image is high-frequency noise; CLIP
guidance then tends to keep that texture and scatter the prompt's parts all over it. A smoother
start is an image made here and encoded by the VQGAN:

- `flat`: one colour everywhere (`init_color`);
- `smooth`: low-frequency colour noise, a few random colours bicubically blended across the image
  (`init_cells` cells per side), then squeezed toward mid-grey (`init_amount`) so no colour dominates.

This module only makes the pixels; `vqclip.generate.initial_latent` encodes them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

INITS = ("random", "flat", "smooth")


def flat_image(color: Sequence[float], width: int, height: int) -> torch.Tensor:
    """A flat image [1, 3, height, width] of one RGB colour in [0, 1]."""
    return torch.tensor(list(color), dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, height, width).clone()


def smooth_image(width: int, height: int, cells: int = 4, amount: float = 0.5,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Low-frequency colour noise [1, 3, height, width] in [0, 1]: `cells` random colours per side,
    bicubically upsampled, blended with mid-grey so that values stay within 0.5 +- amount / 2."""
    coarse = torch.rand(1, 3, cells, cells, generator=generator)
    up = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return 0.5 + (up - 0.5) * amount


def start_image(kind: str, width: int, height: int, color: Sequence[float] = (0.5, 0.5, 0.5),
                cells: int = 4, amount: float = 0.5) -> torch.Tensor:
    """The starting image [1, 3, height, width] for `init` kind flat or smooth (torch's RNG for smooth)."""
    if kind == "flat":
        return flat_image(color, width, height)
    if kind == "smooth":
        return smooth_image(width, height, cells, amount)
    raise ValueError(f"no starting image for init={kind!r}; allowed: flat, smooth")
