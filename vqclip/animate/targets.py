"""Swapping a run's prompt targets, for every CLIP model of an ensemble at once.

A `Run` keeps, per CLIP model, its text-prompt targets first and its image-prompt targets last
(`build_targets` order). Drivers that change prompts (stories, interpolation) embed their prompts
with each model and replace the text part, leaving the image prompts as they were.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch import nn

from vqclip.generate import Run
from vqclip.models.clip import ClipModel
from vqclip.prompts import Target, split_prompts


def clip_models(run: Run) -> List[ClipModel]:
    """The run's CLIP models in order: `clip.model`, then each of `clip.extra`."""
    return [run.models.clip] + [g.clip for g in run.guides]


def embed_text(clip: ClipModel, prompts: Sequence[str], device: torch.device) -> List[Target]:
    """Prompt strings ("text:weight:stop", "|" separates several) -> targets embedded by `clip`."""
    return [Target(clip.encode_text([p.text]), p.weight, p.stop, name=p.text).to(device)
            for p in split_prompts(prompts)]


def set_text_targets(run: Run, per_model: Sequence[Sequence[nn.Module]]) -> None:
    """Replace the text targets of every CLIP model (one list per model, as `clip_models` orders them)."""
    n_images = len(split_prompts(run.config.image_prompts))
    holders = [run.targets] + [g.targets for g in run.guides]
    assert len(per_model) == len(holders), "one target list per CLIP model"
    kept = [list(h[len(h) - n_images:]) if n_images else [] for h in holders]
    run.targets = list(per_model[0]) + kept[0]
    for guide, targets, images in zip(run.guides, per_model[1:], kept[1:]):
        guide.targets = list(targets) + images


class ScaledTarget(nn.Module):
    """A target whose loss is multiplied by `scale()`, read at every step; not computed while 0."""

    def __init__(self, target: Target, scale: Callable[[], float]) -> None:
        super().__init__()
        self.target, self.scale = target, scale
        self.name = target.name

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Loss per image [B], scaled; zeros (no gradient) while the scale is 0."""
        s = self.scale()
        if not s:
            return image_embeds.new_zeros(image_embeds.shape[0])
        return self.target(image_embeds) * s
