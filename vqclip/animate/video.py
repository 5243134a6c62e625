"""Input videos and audio: reading frames (imageio's ffmpeg reader), finding and copying audio.

Audio is handled by the ffmpeg binary that imageio-ffmpeg ships, called with an argument list
(never a shell); a non-zero exit is an error carrying ffmpeg's own last line.
"""
from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
from PIL import Image

from vqclip.errors import VQClipError, looked_up

log = logging.getLogger(__name__)

_AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Audio:")


class InputVideoError(VQClipError):
    """An input video that is missing or cannot be read."""


class FFmpegError(VQClipError):
    """The ffmpeg binary failed."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run ffmpeg with `args` (no shell); raise FFmpegError with its last message line on failure."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise FFmpegError(f"ffmpeg could not {what} (exit code {proc.returncode}): "
                          f"{lines[-1] if lines else 'no message'}")


def stream_info(path: str | Path) -> str:
    """ffmpeg's description of the file's streams (the stderr of `ffmpeg -i path`)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    return proc.stderr  # exits 1 ("no output file"), by design: only the listing is wanted


def has_audio(path: str | Path) -> bool:
    """Whether the file has an audio stream."""
    return bool(_AUDIO_STREAM.search(stream_info(path)))


def mux_audio(video: Path, source: Path, out: Path) -> None:
    """Write `out`: the video stream of `video` (copied) with the first audio stream of `source`
    (AAC), cut to the shorter of the two."""
    run_ffmpeg(["-i", str(video), "-i", str(source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-c:a", "aac", "-shortest", "-f", "mp4", str(out)], f"copy the audio of {source}")


class VideoInput:
    """An input video read frame by frame: `frames` (count), `fps`, `size`; iterate for HxWx3 uint8."""

    def __init__(self, path: str | Path) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        if not self.path.is_file():
            raise InputVideoError(f"input video not found: {looked_up(self.path)}")
        try:
            self._reader = imageio.get_reader(str(self.path), format="FFMPEG")
            meta: Dict[str, Any] = self._reader.get_meta_data()
            self.frames = int(self._reader.count_frames())
        except Exception as exc:  # imageio raises OSError, RuntimeError, IndexError... for unreadable files
            text = str(exc).strip().splitlines()
            raise InputVideoError(f"input video {self.path} cannot be read: "
                                  f"{text[-1] if text else type(exc).__name__}") from None
        self.fps = float(meta.get("fps") or 0)
        self.size: Tuple[int, int] = tuple(meta.get("size") or (0, 0))  # type: ignore[assignment]
        if self.frames < 1 or self.fps <= 0:
            raise InputVideoError(f"input video {self.path} has no video frames")

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._reader:
            yield np.asarray(frame)[..., :3]

    def close(self) -> None:
        """Stop the reader's ffmpeg process."""
        self._reader.close()


def frame_tensor(frame: np.ndarray, size: Tuple[int, int]) -> torch.Tensor:
    """An HxWx3 uint8 frame resized to (width, height) with Lanczos -> [1, 3, H, W] in [0, 1]."""
    img = Image.fromarray(frame).convert("RGB").resize(tuple(size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
