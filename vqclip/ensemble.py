"""CLIP ensembles: more CLIP models guiding one run, each with its own weight, cutouts and targets.

The model in `clip.model` guides as it always has (scaled by `clip.weight`); every entry of
`clip.extra` adds a `Guide`: its own augmentation pipeline and cutouts at its own input size (each
`ClipModel` normalises its input itself), and the prompts embedded by that model, since embeddings
of different CLIP models live in different spaces and cannot be shared.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Union

import torch
from torch import nn

from vqclip.errors import ConfigError
from vqclip.models.clip import ClipModel, check_clip_files, load_clip
from vqclip.prompts import Target

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig
    from vqclip.generate import Models

log = logging.getLogger(__name__)


@dataclass
class Guide:
    """One extra CLIP model in a run: weight, augmentation pipeline and the prompts as its targets."""

    clip: ClipModel
    weight: float
    augment: nn.Module
    targets: List[Target]

    def terms(self, image: torch.Tensor, config: "GenerateConfig",
              noise: Union[float, torch.Tensor] = 0.0) -> List[torch.Tensor]:
        """This model's loss terms for images [B, 3, H, W] (cutouts noised with std `noise`): one
        weighted [B] tensor per target."""
        from vqclip.generate import embed_cutouts

        embeds = embed_cutouts(self.clip, self.augment, image, config, noise=noise)
        return [t(embeds) * self.weight for t in self.targets]


@contextlib.contextmanager
def _naming_extra(i: int) -> Iterator[None]:
    """ConfigErrors raised inside name the `clip.extra[i]` keys instead of `clip.model`/`clip.pretrained`."""
    try:
        yield
    except ConfigError as exc:
        text = str(exc).replace("'clip.model'", f"'clip.extra[{i}].model'")
        raise ConfigError(text.replace("'clip.pretrained'", f"'clip.extra[{i}].pretrained'")) from None


def check_extra_clip_files(cfg: "GenerateConfig") -> None:
    """`check_clip_files` for every `clip.extra` model (before any model loads)."""
    for i, extra in enumerate(cfg.clip.extra):
        with _naming_extra(i):
            check_clip_files(extra.model, extra.pretrained)


def load_extra_clips(cfg: "GenerateConfig", device: torch.device, cache_dir: Optional[str] = None) -> List[ClipModel]:
    """Load every `clip.extra` model, frozen, on `device`; errors name the `clip.extra[i]` key."""
    models = []
    for i, extra in enumerate(cfg.clip.extra):
        with _naming_extra(i):
            models.append(load_clip(extra.model, extra.pretrained, device=device, cache_dir=cache_dir))
        log.info("CLIP ensemble: %s (%s) with weight %g, input %dpx", extra.model, extra.pretrained,
                 extra.weight, models[-1].input_size)
    return models


def build_guides(config: "GenerateConfig", models: "Models", device: torch.device) -> List[Guide]:
    """One `Guide` per extra CLIP model, with the config's prompts embedded by that model."""
    from vqclip.cutouts import build_augments
    from vqclip.generate import Models, build_targets

    if len(models.extra_clips) != len(config.clip.extra):
        raise ConfigError(f"config key 'clip.extra' names {len(config.clip.extra)} models but "
                          f"{len(models.extra_clips)} were loaded; load the models for this config (load_models)")
    guides = []
    for extra, clip in zip(config.clip.extra, models.extra_clips):
        augment = build_augments(config.cutouts.augments, clip.input_size, config.cutouts.noise)
        targets = build_targets(config, Models(models.vqgan, clip), augment, device)
        guides.append(Guide(clip, float(extra.weight), augment, targets))
    return guides
