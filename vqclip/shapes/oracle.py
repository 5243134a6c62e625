"""The generator's optimisation with a perfect guide: where the method's limit lies.

`pixel_oracle` runs the generator's own `Run` (its start, straight-through codebook snap, latent
blocks, optimiser, learning-rate schedule, steps and clamp to the codebook's range, all from the
config) with one change: the loss is the mean squared pixel distance to a fresh drawing of each
caption instead of CLIP's. If the evaluator then reads the images right, the VQGAN and the
optimiser can turn the start into a scene in that many steps, and a shortfall of the real
generator lies in what the CLIP asks for, not in the optimisation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.config import GenerateConfig
from vqclip.generate import Models, Run
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


class PixelGuidedRun(Run):
    """A generator `Run` whose only loss term is each image's mean squared distance to `targets`."""

    def __init__(self, config: GenerateConfig, models: Models, device: torch.device, targets: torch.Tensor) -> None:
        self.pixel_targets = targets.to(device)  # before Run's setup: init_candidates scores starts by this loss
        super().__init__(config, models, device)

    def loss_terms(self, image: torch.Tensor) -> List[torch.Tensor]:
        return [F.mse_loss(image, self.pixel_targets, reduction="none").mean(dim=(1, 2, 3))]


def pixel_oracle(config: GenerateConfig, scenes: Sequence[Scene], seed: int = 0,
                 models: Optional[Models] = None) -> List[OracleResult]:
    """Optimise one latent per scene (one batch) towards a drawing of it for `config.steps` steps,
    as the generator would with `config` (but no `race`); return what the evaluator reads in each final image."""
    from vqclip.generate import load_models, prepare

    device = torch.device("cpu")
    models = models or load_models(config, device, progress=False)
    cfg = prepare(replace(config, prompts=[], batch_prompts=[s.caption for s in scenes], batch_size=len(scenes),
                          seed=seed, race=1))  # one optimisation per scene: a race would pick by the pixel loss
    rng = np.random.default_rng(seed)
    targets = torch.stack([to_tensor(draw(s, rng, size=cfg.size[0])) for s in scenes])
    run = PixelGuidedRun(cfg, models, device, targets)
    first_losses = [float("nan")] * len(scenes)
    for step in range(cfg.steps):
        run.step()
        if step == 0:
            first_losses = list(run.image_losses)  # each image's loss at its start
    with torch.no_grad():
        images = run.image()
        last = F.mse_loss(images, run.pixel_targets, reduction="none").mean(dim=(1, 2, 3))
    out = []
    for i, scene in enumerate(scenes):
        pixels = images[i].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        out.append(OracleResult(scene, read_image(pixels), first_losses[i], float(last[i])))
    return out
