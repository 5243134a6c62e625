"""Negatives sampled from the CLIP itself: a persistent buffer of images that climb its similarity.

The generator finds whatever images the CLIP scores highest for a caption. A CLIP trained on clean
scenes scores textures as high as real drawings there (docs/shapes.md), and showing it a few
hundred of the generator's failures does not help: the generator finds new ones. This module finds
the CLIP's own high-scoring images cheaply and keeps finding them as the CLIP changes, in the
manner of persistent contrastive divergence for energy-based models:

- the buffer holds `size` low-resolution RGB images (logits of [3, r, r], r drawn from `resolutions`,
  shown bicubically upsampled: smooth regions, like the VQGAN's decodes), each tied to a training
  caption; each starts as a drawn negative in its caption's colours (`vqclip.shapes.negatives`)
  or, with probability `noise`, as random palette colours, one per low-resolution pixel (the way
  the generator starts: random tokens, every colour anywhere);
- every fine-tuning step, `climb` moves some entries a few Adam steps (their moments kept in the
  buffer) up the cosine between their random crops (60-100% of the side, half of them whole, as
  the generator's cutouts) and their caption; so entries accumulate climbing over the run and
  follow the CLIP's current maxima (with `sigma`, those of the CLIP on noised crops);
- with probability `reinit` an entry starts over when it is picked.

The CLIP is then trained to score each entry below a fresh drawing of its caption
(`vqclip.shapes.harden`), except entries that the evaluator reads as their caption's scene: a
climb that ends in a real scene is what the generator should find.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.cutouts import add_noise
from vqclip.shapes.negatives import draw_negative
from vqclip.shapes.world import PALETTE, Scene, to_tensor

BETAS = (0.9, 0.999)


def adam_direction(m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, t: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam update of the moments `m`, `v` with `grad` at step `t` (1 for the first; per entry,
    broadcast); return the new moments and the bias-corrected direction (a step is `lr` times it)."""
    b1, b2 = BETAS
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    return m, v, (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + 1e-8)


def random_views(images: torch.Tensor, size: int) -> torch.Tensor:
    """One random square crop of each image [N, 3, H, W] at `size` x `size`: the side 60-100% of
    the image's (the whole image half of the time), anywhere inside it, mirrored half of the time."""
    n = len(images)
    side = torch.empty(n).uniform_(0.6, 1.0)
    side[torch.rand(n) < 0.5] = 1.0
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2] = (torch.rand(n) * 2 - 1) * (1 - side)
    theta[:, 1, 2] = (torch.rand(n) * 2 - 1) * (1 - side)
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class NegativeSampler:
    """The persistent buffer (see the module doc). `scenes` are the captions entries may belong to."""

    def __init__(self, scenes: Sequence[Scene], size: int, resolutions: Sequence[int], lr: float,
                 reinit: float, seed: int, noise: float = 0.0) -> None:
        if size < 1 or not resolutions or min(resolutions) < 2:
            raise ValueError(f"NegativeSampler needs size >= 1 and resolutions >= 2, got {size}, {list(resolutions)}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"NegativeSampler noise must be a probability in 0..1, got {noise}")
        self.scenes = list(scenes)
        self.lr, self.reinit, self.noise = float(lr), float(reinit), float(noise)
        self.rng = np.random.default_rng((seed, 4242))
        self.scene = self.rng.integers(len(self.scenes), size=size)
        self.res = self.rng.choice(np.asarray(resolutions), size=size)
        self.logits: List[torch.Tensor] = [self._start(i) for i in range(size)]
        self.moments: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.age = np.zeros(size, np.int64)  # Adam steps since the entry's start

    def __len__(self) -> int:
        return len(self.logits)

    def _start(self, i: int) -> torch.Tensor:
        r = int(self.res[i])
        if self.noise and self.rng.random() < self.noise:
            colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255
            pixels = colours[torch.from_numpy(self.rng.integers(len(colours), size=(r, r)))]
            return torch.logit(pixels.permute(2, 0, 1).clamp(0.02, 0.98))
        image = to_tensor(draw_negative(self.scenes[int(self.scene[i])], self.rng))[None]
        small = F.interpolate(image, size=(r, r), mode="area")[0].clamp(0.02, 0.98)
        return torch.logit(small)

    def pick(self, count: int) -> np.ndarray:
        """`count` distinct entries at random (all of them if the buffer is smaller)."""
        return self.rng.choice(len(self), size=min(count, len(self)), replace=False)

    def render(self, index: Sequence[int], size: int) -> torch.Tensor:
        """The entries' images [N, 3, size, size] in [0, 1]."""
        return torch.stack([_render(self.logits[int(i)][None], size)[0] for i in index])

    def climb(self, index: Sequence[int], encode, text: torch.Tensor, steps: int, mean: torch.Tensor,
              std: torch.Tensor, view_size: int, sigma: float = 0.0) -> None:
        """Move entries `index` `steps` Adam steps up the cosine of `encode(normalised crops)` to
        `text[scene]` (`text`: normalised embeddings of all of `scenes`' captions). With `sigma`,
        every crop gets Gaussian pixel noise of a std drawn per crop from [0, sigma] ([0, 1] scale):
        the entries then climb what a generator with noised cutouts climbs."""
        for i in map(int, index):
            if i not in self.moments or self.rng.random() < self.reinit:
                if i in self.moments:
                    self.logits[i] = self._start(i)
                zero = torch.zeros_like(self.logits[i])
                self.moments[i], self.age[i] = (zero, zero.clone()), 0
        groups: Dict[int, List[int]] = {}
        for i in map(int, index):
            groups.setdefault(int(self.res[i]), []).append(i)
        for members in groups.values():
            p = torch.stack([self.logits[i] for i in members])
            m = torch.stack([self.moments[i][0] for i in members])
            v = torch.stack([self.moments[i][1] for i in members])
            t = torch.as_tensor(self.age[members], dtype=torch.float32).view(-1, 1, 1, 1)
            target = text[torch.as_tensor(self.scene[members])]
            for _ in range(steps):
                p.requires_grad_(True)
                with torch.enable_grad():
                    views = random_views(_render(p, view_size), view_size)
                    if sigma > 0:  # one std per crop
                        views = add_noise(views, torch.rand(len(views), 1, 1, 1) * sigma)
                    views = (views - mean) / std
                    emb = F.normalize(encode(views).float(), dim=-1)
                    grad, = torch.autograd.grad((emb * target).sum(), p)
                t = t + 1
                m, v, update = adam_direction(m, v, grad, t)
                p = (p.detach() + self.lr * update).clamp(-6, 6)
            for j, i in enumerate(members):
                self.logits[i], self.moments[i] = p[j].detach(), (m[j], v[j])
                self.age[i] += steps


def _render(logits: torch.Tensor, size: int) -> torch.Tensor:
    return torch.sigmoid(F.interpolate(logits, size=(size, size), mode="bicubic", align_corners=False))
