"""The frame loop shared by zoom, interpolate and restyle: the same `Run.step()`, frame after frame.

A driver says how many frames there are and prepares the run before each one (a new latent, new
targets); the loop then optimises the first frame for `steps` steps and every later one for
`animation.steps_per_frame`, resetting the optimiser between frames unless
`animation.carry_optimizer` is set, and hands each finished frame to the callbacks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from vqclip.config import GenerateConfig
from vqclip.errors import ConfigError
from vqclip.generate import (Callback, Models, Run, check_size, load_models, make_optimizer, prepare,
                             resolve_device)
from vqclip.images import to_pil

log = logging.getLogger(__name__)


class FrameDriver(Protocol):
    """What makes one animation mode: frame count, rate, and what changes before each frame."""

    frames: int
    fps: float
    audio_source: Optional[Path]
    needs_encoder: bool

    def start(self, run: Run) -> None:
        """Called once with the new run, before frame 0."""

    def prepare(self, run: Run, index: int) -> None:
        """Called before frame `index` is optimised (frame 0 included)."""

    def close(self) -> None:
        """Release inputs (readers); called however the loop ends."""


@dataclass
class AnimationResult:
    """What an animation produced: its last frame, frame count and rate, losses, and files."""

    image: Any  # the last frame, PIL
    frames: int
    fps: float
    z: torch.Tensor
    losses: List[float]
    config: GenerateConfig
    run_dir: Optional[Path] = None
    paths: List[Path] = field(default_factory=list)
    video: Optional[Path] = None
    interrupted: bool = False  # animations stop on Ctrl-C at once (KeyboardInterrupt); kept for one result shape

    @property
    def seed(self) -> int:
        """The seed the run used (picked at random when the config had none)."""
        return int(self.config.seed)  # type: ignore[arg-type]


def set_latent(run: Run, z: torch.Tensor) -> None:
    """Move the run to latent `z` [B, D, h, w] (in place, so the optimiser keeps its parameter);
    `init_weight` then pulls toward this new start."""
    with torch.no_grad():
        run.z.copy_(z)
    run.z_start = z.detach().clone()


def animate(config: GenerateConfig, make_driver: Callable[[GenerateConfig], FrameDriver], *,
            models: Optional[Models] = None, callbacks: Sequence[Callback] = (), progress: bool = True,
            save: bool = True) -> AnimationResult:
    """Render an animation: build the driver (before models load, so bad inputs fail fast), then
    optimise frame after frame. Callbacks get a dict per frame: frame, step, z, image [B,3,H,W] in
    [0, 1], loss, final (True once at the end, with the last frame again)."""
    config = prepare(config)
    driver = make_driver(config)
    writer = None
    try:
        device = resolve_device(config.device)
        models = models or load_models(config, device, progress)
        check_size(config.size, models.vqgan.factor)
        if driver.needs_encoder and models.vqgan.encoder is None:
            raise ConfigError(f"mode={config.mode} re-encodes frames, but the VQGAN was loaded without its encoder; "
                              "load it with load_models(config) or load_vqgan(..., with_encoder=True)")
        run = Run(config, models, device)
        driver.start(run)
        if save:
            from vqclip import __version__
            from vqclip.animate.writer import AnimationWriter

            writer = AnimationWriter(config, __version__, driver.fps, driver.audio_source)
        hooks = list(callbacks) + ([writer] if writer else [])
        per_frame = config.animation.steps_per_frame
        bar = tqdm(total=config.steps + (driver.frames - 1) * per_frame, disable=not progress,
                   desc=f"vqclip {config.mode}", unit="step", dynamic_ncols=True)
        try:
            image = _frames(run, driver, config, hooks, bar)
        finally:
            bar.close()
        last = {"frame": driver.frames, "step": run.step_index, "z": run.z.detach(), "image": image,
                "loss": run.losses[-1], "final": True}
        for hook in hooks:
            hook(last)
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        driver.close()
    video = next((p for p in writer.paths if p.suffix == ".mp4"), None) if writer else None
    return AnimationResult(image=to_pil(image[0]), frames=driver.frames, fps=driver.fps, z=run.z.detach(),
                           losses=run.losses, config=config, run_dir=writer.run_dir if writer else None,
                           paths=writer.paths if writer else [], video=video)


def _frames(run: Run, driver: FrameDriver, config: GenerateConfig, hooks: List[Callback], bar) -> torch.Tensor:
    """Optimise every frame in turn; returns the last frame's image."""
    image = None
    for index in range(driver.frames):
        driver.prepare(run, index)
        if index and not config.animation.carry_optimizer:
            run.opt = make_optimizer(config.optim.name, [run.z], config.optim.lr)
        for _ in range(config.steps if index == 0 else config.animation.steps_per_frame):
            info = run.step()
            bar.update(1)
            bar.set_postfix(frame=f"{index + 1}/{driver.frames}", loss=f"{info['loss']:.4f}")
        image = run.image()
        frame: Dict[str, Any] = {"frame": index, "step": run.step_index, "z": run.z.detach(), "image": image,
                                 "loss": run.losses[-1], "final": False}
        for hook in hooks:
            hook(frame)
    assert image is not None
    return image
