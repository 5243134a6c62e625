"""mode=zoom: each frame starts from the previous one zoomed, shifted and rotated, re-encoded by the
VQGAN encoder, then optimised for a few steps: an endless zoom (or pan, or spin) into the picture.

`animation.zoom`, `shift_x`, `shift_y` and `rotate` are numbers or keyframes (see
`vqclip.animate.keyframes`); the value at frame i is the motion from frame i-1 to frame i.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vqclip.animate.frames import AnimationResult, animate, set_latent
from vqclip.animate.keyframes import parse_keyframes
from vqclip.config import GenerateConfig
from vqclip.generate import Callback, Models, Run

DEFAULT_FPS = 12.0


def transform_image(image: torch.Tensor, zoom: float = 1.0, shift_x: float = 0.0, shift_y: float = 0.0,
                    rotate: float = 0.0) -> torch.Tensor:
    """Images [B, C, H, W]: scale by `zoom` about the centre (>1 zooms in), rotate `rotate` degrees
    counter-clockwise, then move by (shift_x, shift_y) pixels (right, down). Uncovered edges are
    filled by reflection."""
    b, _, h, w = image.shape
    a = math.radians(rotate)
    cos, sin = math.cos(a), math.sin(a)
    # Output pixel p (pixels from the centre, y down) shows the source point R^-1 (p - t) / zoom,
    # where R turns counter-clockwise on screen; affine_grid wants this in [-1, 1] coordinates.
    m = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / zoom
    d = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    lin = m * d[None, :] / d[:, None]  # D^-1 M D
    off = -(m @ torch.tensor([shift_x, shift_y], dtype=torch.float64)) / d
    theta = torch.cat([lin, off[:, None]], dim=1).to(image).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class ZoomDriver:
    """Frames of a zoom: frame 0 as an image run, then transform, re-encode and optimise."""

    needs_encoder = True
    audio_source: Optional[Path] = None

    def __init__(self, cfg: GenerateConfig) -> None:
        a = cfg.animation
        self.frames = a.frames
        self.fps = float(a.fps or DEFAULT_FPS)
        self.zoom = parse_keyframes(a.zoom, "animation.zoom", minimum=0.0)
        self.shift_x = parse_keyframes(a.shift_x, "animation.shift_x")
        self.shift_y = parse_keyframes(a.shift_y, "animation.shift_y")
        self.rotate = parse_keyframes(a.rotate, "animation.rotate")

    def start(self, run: Run) -> None:
        """Nothing to set up: frame 0 starts from the run's initial latent."""

    def prepare(self, run: Run, index: int) -> None:
        """From frame 1 on: move the previous frame and start from its encoding."""
        if index == 0:
            return
        with torch.no_grad():
            moved = transform_image(run.image(), self.zoom(index), self.shift_x(index), self.shift_y(index),
                                    self.rotate(index))
            set_latent(run, run.models.vqgan.encode(moved))

    def close(self) -> None:
        """Nothing to release."""


def run_zoom(config: GenerateConfig, *, models: Optional[Models] = None, callbacks: Sequence[Callback] = (),
             progress: bool = True, save: bool = True) -> AnimationResult:
    """Render a zoom/pan/rotate animation of `animation.frames` frames (mode=zoom)."""
    return animate(config, ZoomDriver, models=models, callbacks=callbacks, progress=progress, save=save)
