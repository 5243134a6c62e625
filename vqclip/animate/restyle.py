"""mode=restyle: every frame of an input video, encoded by the VQGAN, is the start of a short run
under the prompts. For temporal stability each frame starts from a blend of its own encoding and
the previous output's latent (`restyle.blend`), and `init_weight` pulls it toward that start. The
output keeps the input's frame rate and, when the input has one, its audio track.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from vqclip.animate.frames import AnimationResult, animate, set_latent
from vqclip.animate.video import InputVideoError, VideoInput, frame_tensor, has_audio
from vqclip.config import GenerateConfig
from vqclip.generate import Callback, Models, Run

log = logging.getLogger(__name__)


class RestyleDriver:
    """Frames of a restyle: read the next input frame, encode it, blend with the previous output."""

    needs_encoder = True

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        self.input = VideoInput(cfg.restyle.video)  # type: ignore[arg-type]
        limit = cfg.restyle.max_frames
        self.frames = min(self.input.frames, limit) if limit else self.input.frames
        self.fps = float(cfg.animation.fps or self.input.fps)
        self.audio_source: Optional[Path] = None
        if cfg.restyle.audio:
            if has_audio(self.input.path):
                self.audio_source = self.input.path
            else:
                log.info("input video %s has no audio track; the output will be silent", self.input.path)
        self._frames: Iterator[np.ndarray] = iter(self.input)
        log.info("restyling %d of %d frames of %s at %g fps", self.frames, self.input.frames, self.input.path, self.fps)

    def start(self, run: Run) -> None:
        """Nothing to set up: frame 0 is prepared like the others."""

    def prepare(self, run: Run, index: int) -> None:
        """Start from this input frame's encoding, blended with the previous output's latent."""
        try:
            frame = next(self._frames)
        except StopIteration:
            raise InputVideoError(f"input video {self.input.path} ended after {index} frames, "
                                  f"fewer than the {self.frames} it reported") from None
        image = frame_tensor(frame, tuple(self.cfg.size)).to(run.device)  # type: ignore[arg-type]
        with torch.no_grad():
            z = run.models.vqgan.encode(image)
            if index and self.cfg.restyle.blend:
                z = torch.lerp(z, run.z.detach(), self.cfg.restyle.blend)
        set_latent(run, z)

    def close(self) -> None:
        """Stop reading the input."""
        self.input.close()


def run_restyle(config: GenerateConfig, *, models: Optional[Models] = None, callbacks: Sequence[Callback] = (),
                progress: bool = True, save: bool = True) -> AnimationResult:
    """Restyle every frame of `restyle.video` with the prompts (mode=restyle)."""
    return animate(config, RestyleDriver, models=models, callbacks=callbacks, progress=progress, save=save)
