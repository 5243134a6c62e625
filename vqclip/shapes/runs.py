"""Negatives from the generator itself, kept running while the CLIP is fine-tuned.

The climbing buffer of `vqclip.shapes.sampler` finds the CLIP's maxima in pixel space, cheaply; the
generator searches another space, the VQGAN's decodes, and stops where the CLIP's gradient through
the decoder stops helping (docs/shapes.md). `GeneratorRuns` holds `count` generator runs in
progress, each a VQGAN latent tied to a training caption, and advances every one of them by one
step of the generator's own method per fine-tuning step, with the CLIP as it is at that moment:

- a run starts as the generator starts (`vqclip.generate.initial_latent`: random codebook tokens,
  one per `latent_block` square, or the encoded `init` start), from the first start drawn: the
  config's `init_candidates` and `race` are not followed (the generator scores its candidate starts
  and copies with the CLIP, and here that CLIP is the one being trained);
- a step is the generator's step (`vqclip.generate`): straight-through snap to the codebook,
  decode, cutouts as the config takes them (`cutn`, `cut_pow`, `min_size`, `whole`, augments,
  and the noise of `sigma` to `sigma_end` at the run's age, spread by `sigma_spread`), the
  spherical distance to the caption's embedding, gradients averaged over token blocks for the first
  `latent_block_steps` of a run, Adam (its moments kept per run) at the cosine-decayed rate of the
  run's age, and the clamp to the codebook's range;
- after `life` steps (the generator's `steps`) a run starts over with another caption. Lives are
  staggered from the start, so the runs are spread over every age.

The images the runs show before each step are what the generator would show the CLIP at that
point of a run against the current CLIP: the CLIP is then trained to score them below a fresh
drawing of their caption (`vqclip.shapes.harden`), except those the evaluator reads as that scene.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from vqclip.blocks import block_mean, block_noise
from vqclip.cutouts import add_noise, build_augments, make_cutouts, scheduled_sigma, spread_sigma
from vqclip.generate import cosine_lr, initial_latent, synth
from vqclip.perf import autocast
from vqclip.prompts import spherical_distance
from vqclip.shapes.sampler import adam_direction


class GeneratorRuns:
    """`count` generator runs in progress (see the module doc), each for one of `scenes`' captions.

    `base` is the GenerateConfig whose method the runs follow (`configs/shapes.yaml`): its size,
    steps (a run's life), optimiser rate and schedule, token blocks and cutouts.
    """

    def __init__(self, vqgan, scenes: Sequence, count: int, base, seed: int, input_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        if count < 1:
            raise ValueError(f"GeneratorRuns needs count >= 1, got {count}")
        self.vqgan, self.scenes, self.base, self.dtype = vqgan, list(scenes), base, dtype
        self.life = int(base.steps)
        w, h = base.size
        self.grid = (h // vqgan.factor, w // vqgan.factor)
        self.rng = np.random.default_rng((seed, 5151))
        codebook = vqgan.codebook.detach()
        self.z_min = codebook.min(0).values.view(1, -1, 1, 1)  # the generator's clamp: the codebook's range
        self.z_max = codebook.max(0).values.view(1, -1, 1, 1)
        cut = base.cutouts
        self.input_size = int(input_size)  # the CLIP's
        self.augment = build_augments(cut.augments, self.input_size, cut.noise)
        self.z = torch.zeros(count, vqgan.embed_dim, *self.grid)
        self.m, self.v = torch.zeros_like(self.z), torch.zeros_like(self.z)
        self.scene = np.zeros(count, np.int64)
        # staggered: run i first lives (i + 1) / count of a life, so the ages cover 0..life - 1
        self.age = np.array([self.life - max(1, round(self.life * (i + 1) / count)) for i in range(count)])
        for i in range(count):
            self._start(i)
        self.restarts = 0

    def _start(self, i: int) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(int(self.rng.integers(2 ** 31)))
            self.z[i] = initial_latent(self.base, self.vqgan, torch.device("cpu"))[0].detach()
        self.m[i].zero_()
        self.v[i].zero_()
        self.scene[i] = self.rng.integers(len(self.scenes))

    def step(self, encode, text: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
             ) -> Tuple[torch.Tensor, List[int]]:
        """Advance every run by one generator step against `encode` (the CLIP's image tower, on
        normalised inputs) and `text` (normalised embeddings of all of `scenes`' captions); return
        the images the step saw ([count, 3, H, W] in [0, 1], before its update) and their captions
        (indices into `scenes`). Runs at the end of their life start over afterwards."""
        cfg, cut = self.base, self.base.cutouts
        z = self.z.clone().requires_grad_(True)
        # the generator's numerics: float32 but for the decoder and CLIP in `dtype`, whatever autocast
        # the caller (a bf16-mixed trainer) runs under
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            image = synth(self.vqgan, z, self.dtype)
            if cut.sigma > 0:  # each run's cutouts noised as the generator's at that run's age (drawn first, as there)
                stds = [spread_sigma(scheduled_sigma(cut.sigma, cut.sigma_end, int(a), self.life), cut.sigma,
                                     cut.sigma_spread, cut.cutn) for a in self.age]
                sigma = torch.cat([s if torch.is_tensor(s) else torch.full((cut.cutn, 1, 1, 1), s) for s in stds])
            cuts = self.augment(make_cutouts(image, cut.cutn, self.input_size, cut.cut_pow, cut.min_size,
                                             cut.whole, cut.roll))
            if cut.sigma > 0:
                cuts = add_noise(cuts, sigma)
            with autocast(image.device, self.dtype):
                emb = encode((cuts - mean) / std)
            emb = emb.float().view(len(z), cut.cutn, -1)
            target = text[torch.as_tensor(self.scene)].unsqueeze(1)
            loss = spherical_distance(emb, target).mean(1).sum()
            grad, = torch.autograd.grad(loss, z)
        blocked = torch.as_tensor(self.age < cfg.latent_block_steps * self.life).view(-1, 1, 1, 1)
        if cfg.latent_block > 1 and bool(blocked.any()):
            grad = torch.where(blocked, block_mean(grad, cfg.latent_block), grad)
        t = torch.as_tensor(self.age + 1, dtype=torch.float32).view(-1, 1, 1, 1)
        self.m, self.v, update = adam_direction(self.m, self.v, grad, t)
        final = cfg.optim.final_lr if cfg.optim.final_lr is not None else cfg.optim.lr
        lr = torch.tensor([cosine_lr(cfg.optim.lr, final, int(a), self.life) for a in self.age]).view(-1, 1, 1, 1)
        self.z = self.z - lr * update
        if cfg.optim.noise:  # the generator's exploration noise, blockwise for the runs still in their block phase
            eps = torch.cat([block_noise(self.z[i:i + 1], cfg.latent_block if bool(blocked[i]) else 1)
                             for i in range(len(self.z))])  # run by run, drawn as the generator draws them
            self.z = self.z + cfg.optim.noise * lr * eps
        self.z = self.z.maximum(self.z_min).minimum(self.z_max)
        seen, scenes = image.detach().clamp(0, 1), [int(s) for s in self.scene]
        self.age += 1
        for i in np.flatnonzero(self.age >= self.life):
            self._start(int(i))
            self.age[i] = 0
            self.restarts += 1
        return seen, scenes
