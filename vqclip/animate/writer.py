"""Files of an animation: a run folder with config.yaml, animation.mp4, optional GIF and frame PNGs,
and the last frame as image.png with metadata. A frame callback, like `RunWriter` is a step one.

Every file appears atomically; a restyled video gets the input's audio muxed in before its final
rename, so `animation.mp4` is never seen without its sound.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from vqclip.animate.video import mux_audio
from vqclip.config import GenerateConfig, to_yaml
from vqclip.images import to_pil, to_uint8
from vqclip.outputs import VideoWriter, atomic_write, new_run_dir, png_metadata, save_png

log = logging.getLogger(__name__)


class AnimationWriter:
    """Frame callback that writes an animation's run folder; call `abort` if the run fails."""

    def __init__(self, cfg: GenerateConfig, version: str, fps: float, audio_source: Optional[Path] = None) -> None:
        self.cfg, self.version, self.fps, self.audio_source = cfg, version, fps, audio_source
        self.run_dir = new_run_dir(cfg.output.dir, " ".join(cfg.prompts) or cfg.mode)
        self.paths: List[Path] = []
        self.video_path = self.run_dir / "animation.mp4"
        silent = self.run_dir / ".silent.mp4" if audio_source else self.video_path
        self.video: Optional[VideoWriter] = VideoWriter(silent, fps)  # type: ignore[arg-type]
        self.gif_frames: List[np.ndarray] = []
        atomic_write(self.run_dir / "config.yaml", lambda tmp: tmp.write_text(to_yaml(cfg)))
        self.paths.append(self.run_dir / "config.yaml")

    def __call__(self, info: Dict[str, Any]) -> None:
        """Add a frame (video, GIF, PNG); on `final`, finish the files."""
        if info.get("final"):
            self.finish(info)
            return
        frame = to_uint8(info["image"][0])
        assert self.video is not None
        self.video.append(frame)
        if self.cfg.animation.gif:
            self.gif_frames.append(frame)
        if self.cfg.animation.save_frames:
            folder = self.run_dir / "frames"
            if not folder.exists():
                folder.mkdir()
                self.paths.append(folder)
            save_png(Image.fromarray(frame), folder / f"{info['frame']:06d}.png")

    def finish(self, info: Dict[str, Any]) -> None:
        """Write the last frame as image.png, close the video (muxing audio in), write the GIF."""
        extra = {"frames": str(info["frame"]), "steps": str(info["step"]), "loss": f"{info['loss']:.6f}"}
        self.paths.append(save_png(to_pil(info["image"][0]), self.run_dir / "image.png",
                                   png_metadata(self.cfg, self.version, extra)))
        assert self.video is not None
        written = self.video.close()
        self.video = None
        if written and self.audio_source:
            source = self.audio_source
            try:
                atomic_write(self.video_path, lambda tmp: mux_audio(written, source, tmp))
            finally:
                written.unlink(missing_ok=True)
            written = self.video_path
        if written:
            self.paths.append(written)
        if self.gif_frames:
            self.paths.append(atomic_write(self.run_dir / "animation.gif", self._write_gif))
            self.gif_frames = []

    def _write_gif(self, path: Path) -> None:
        images = [Image.fromarray(f) for f in self.gif_frames]
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(20, round(1000 / self.fps)))

    def abort(self) -> None:
        """Stop without leaving a partial video behind."""
        if self.video is not None:
            self.video.abort()
            self.video = None
        self.gif_frames = []
