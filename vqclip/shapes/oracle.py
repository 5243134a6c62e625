"""The generator's optimisation with a perfect guide: where the method's limit lies.

`pixel_oracle` runs the generator's latent optimisation (random codebook tokens as the start,
straight-through codebook snap, the configured optimiser, learning-rate schedule and steps, the
clamp to the codebook's range) with the CLIP replaced by the mean squared pixel distance to a
fresh drawing of each caption. If the evaluator then reads the images right, the VQGAN and the
optimiser can turn random tokens into a scene in that many steps, and a shortfall of the real
generator lies in what the CLIP asks for, not in the optimisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.config import GenerateConfig
from vqclip.shapes.evaluate import Reading, read_image
from vqclip.shapes.world import Scene, draw, to_tensor


@dataclass
class OracleResult:
    """One caption's oracle run: what the evaluator read, and the pixel loss at the first and last step."""

    scene: Scene
    reading: Reading
    first_loss: float
    last_loss: float

    @property
    def right(self) -> bool:
        """All three attributes read right."""
        return self.reading.matches(self.scene)


def pixel_oracle(config: GenerateConfig, scenes: Sequence[Scene], seed: int = 0,
                 vqgan: Optional[object] = None) -> List[OracleResult]:
    """Optimise one latent per scene (all together) towards a drawing of it for `config.steps`
    steps with `config.optim`; return what the evaluator reads in each final image."""
    from vqclip.generate import cosine_lr, load_models, make_optimizer, synth

    if vqgan is None:
        vqgan = load_models(config, torch.device("cpu"), progress=False).vqgan
    w, h = config.size
    f = vqgan.factor
    rng = np.random.default_rng(seed)
    targets = torch.stack([to_tensor(draw(s, rng, size=w)) for s in scenes])
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vqgan.n_embed, (len(scenes), h // f, w // f), generator=gen)
    z = vqgan.codebook[tokens].permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z_min = vqgan.codebook.min(0).values.view(1, -1, 1, 1)
    z_max = vqgan.codebook.max(0).values.view(1, -1, 1, 1)
    optim = config.optim
    opt = make_optimizer(optim.name, [z], optim.lr)
    first = None
    for step in range(config.steps):
        if optim.final_lr is not None:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(optim.lr, optim.final_lr, step, config.steps)
        per_image = F.mse_loss(synth(vqgan, z), targets, reduction="none").mean(dim=(1, 2, 3))
        first = per_image.detach() if first is None else first
        opt.zero_grad()
        per_image.sum().backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))
    with torch.no_grad():
        images = synth(vqgan, z)
        last = F.mse_loss(images, targets, reduction="none").mean(dim=(1, 2, 3))
    out = []
    for i, scene in enumerate(scenes):
        pixels = images[i].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        out.append(OracleResult(scene, read_image(pixels), float(first[i]) if first is not None else float("nan"),
                                float(last[i])))
    return out
