"""mode=interpolate: a video moving smoothly through the prompts in order (A to B, B to C, ...).

Frame i of N sits at t = i / (N - 1) along the path; its target is the spherical interpolation
(slerp) of the two neighbouring prompts' CLIP embeddings, computed for every CLIP model of the
run, with the weight interpolated linearly. The latent carries over from frame to frame, and
`init_weight` pulls each frame toward the one before it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch

from vqclip.animate.frames import AnimationResult, animate
from vqclip.animate.targets import clip_models, embed_text, set_text_targets
from vqclip.config import GenerateConfig
from vqclip.generate import Callback, Models, Run
from vqclip.prompts import Target

DEFAULT_FPS = 12.0


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between the directions of a and b [..., D]: unit vectors, t in [0, 1]."""
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:  # (nearly) the same direction: plain interpolation is exact enough
        return torch.nn.functional.normalize(torch.lerp(a, b, t), dim=-1)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so


def path_position(index: int, frames: int, keyframes: int) -> tuple[int, float]:
    """Frame `index` of `frames` -> (segment k, fraction u): between keyframe k and k+1."""
    pos = index / (frames - 1) * (keyframes - 1)
    k = min(int(pos), keyframes - 2)
    return k, pos - k


def blend_target(a: Target, b: Target, u: float) -> Target:
    """The target a fraction `u` of the way from a to b: slerped embeddings, linear weight, nearer stop."""
    weight = (1 - u) * a.weight + u * b.weight
    stop = a.stop if u < 0.5 else b.stop
    return Target(slerp(a.embeds, b.embeds, u), weight, stop, name=f"{a.name} -> {b.name} ({u:.2f})")


class InterpolateDriver:
    """Frames of an interpolation: swap the target before each frame, keep the latent."""

    needs_encoder = False
    audio_source: Optional[Path] = None

    def __init__(self, cfg: GenerateConfig) -> None:
        self.frames = cfg.animation.frames
        self.fps = float(cfg.animation.fps or DEFAULT_FPS)
        self.prompts = list(cfg.prompts)
        self.keyframes: List[List[Target]] = []  # per CLIP model, one target per prompt

    def start(self, run: Run) -> None:
        """Embed every prompt once with every CLIP model."""
        self.keyframes = [embed_text(clip, self.prompts, run.device) for clip in clip_models(run)]

    def prepare(self, run: Run, index: int) -> None:
        """Set the target for this frame's place on the path; `init_weight` now pulls toward the
        previous frame."""
        if index:
            run.z_start = run.z.detach().clone()
        k, u = path_position(index, self.frames, len(self.prompts))
        set_text_targets(run, [[blend_target(ts[k], ts[k + 1], u)] for ts in self.keyframes])

    def close(self) -> None:
        """Nothing to release."""


def run_interpolate(config: GenerateConfig, *, models: Optional[Models] = None, callbacks: Sequence[Callback] = (),
                    progress: bool = True, save: bool = True) -> AnimationResult:
    """Render a video moving through the prompts in order (mode=interpolate)."""
    return animate(config, InterpolateDriver, models=models, callbacks=callbacks, progress=progress, save=save)
