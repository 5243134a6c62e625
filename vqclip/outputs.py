"""Files on disk: the run folder, PNGs with metadata, frames and the progress video.

`RunWriter` is a generation callback: it creates a new run folder (never reusing one, even when two
runs start at the same moment), writes frames every `output.save_every` steps, streams video frames
to ffmpeg (through imageio-ffmpeg) and on the final step writes the final PNG(s) and closes the
video. Every file appears atomically: written under a temporary name, then renamed.
"""
from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from vqclip.config import GenerateConfig, batch_count, to_yaml
from vqclip.errors import OutputError, VQClipError
from vqclip.images import to_pil, to_uint8

log = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), then rename tmp onto `path`; on any failure remove tmp and re-raise.

    An OSError (a full disk, a file-size limit, a folder gone or read-only) becomes an OutputError
    naming the file and the reason; whatever was at `path` before is left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
        raise
    return path


def os_reason(exc: BaseException) -> str:
    """A short reason for a failed write: the OS message, with a hint for a full disk or size limit."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return "no space left on the device; free some space or choose another output.dir"
    if code == errno.EFBIG:
        return "the file is larger than this process may write (a file-size limit, ulimit -f)"
    lines = str(exc).strip().splitlines()
    return getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)


def slugify(text: str, limit: int = 40) -> str:
    """A short, filesystem-safe name from a prompt."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].rstrip("-") or "run"


def _file_in_the_way(root: Path) -> Optional[Path]:
    """`root` or the nearest of its parents that exists as something other than a folder, if any."""
    for path in (root, *root.parents):
        if path.exists() or path.is_symlink():
            return None if path.is_dir() else path
    return None


def check_output_dir(root: str | Path) -> None:
    """Create `root` if needed and prove a file can be written in it; raise OutputError if not."""
    root = Path(root)
    blocker = _file_in_the_way(root)
    if blocker is not None:
        raise OutputError(f"cannot create output folder {root}: {blocker} exists and is not a folder; "
                          "allowed: an output.dir that is a folder or can be made one")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {root}: {os_reason(exc)}") from None
    probe = root / f".vqclip-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise OutputError(f"output folder {root} is not writable: {os_reason(exc)}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def new_run_dir(root: str | Path, label: str) -> Path:
    """Create and return a fresh folder `root/<time>-<label>[-N]`; mkdir is atomic, so never shared."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VQClipError(f"cannot create output folder {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK):
        raise VQClipError(f"output folder {root} is not writable")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{slugify(label)}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise VQClipError(f"cannot create run folder in {root}: {exc.strerror or exc}") from None
    raise VQClipError(f"too many runs named {base} in {root}")


def image_prompt(cfg: GenerateConfig, index: int = 0) -> str:
    """The prompts that guided image `index` of a run: the shared ones and its batch prompt."""
    return " | ".join(list(cfg.prompts) + ([cfg.batch_prompts[index]] if cfg.batch_prompts else []))


def png_metadata(cfg: GenerateConfig, version: str, extra: Optional[Dict[str, str]] = None,
                 index: int = 0) -> PngInfo:
    """PNG text chunks: prompt, seed, the full resolved config (YAML) and the vqclip version.

    For image `index` of a batch the prompt is that image's own, and batch_index says which it is.
    """
    info = PngInfo()
    info.add_text("prompt", image_prompt(cfg, index))
    if batch_count(cfg) > 1:
        info.add_text("batch_index", str(index))
    info.add_text("seed", str(cfg.seed))
    info.add_itxt("config", to_yaml(cfg))
    info.add_text("vqclip_version", version)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    return info


def save_png(image: Image.Image, path: Path, pnginfo: Optional[PngInfo] = None) -> Path:
    """Write a PNG atomically (optimize off, so the bytes depend only on the pixels and text)."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=pnginfo))


class VideoWriter:
    """Streams frames to an mp4 (libx264, yuv420p) under a temporary name; `close` renames it.

    Frames go straight to the ffmpeg process (imageio-ffmpeg pipes them), so nothing accumulates in
    memory however long the run. With `continue_from` (a resumed run), the frames of that earlier
    video except its last (the earlier run's final frame) are streamed in first, so the finished file
    is one complete video; the earlier file stays untouched until `close` replaces it.
    """

    def __init__(self, path: Path, fps: int, continue_from: Optional[Path] = None) -> None:
        import imageio.v2 as imageio

        self.path = path
        self.tmp = path.with_name(f".{path.stem}.part{path.suffix}")
        self.frames = 0
        try:
            self._writer = imageio.get_writer(self.tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                              pixelformat="yuv420p", macro_block_size=2, quality=8,
                                              ffmpeg_log_level="fatal")  # its errors become our one line
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
        if continue_from is not None:
            try:
                self._copy_all_but_last(continue_from)
            except BaseException:  # a second Ctrl-C while copying: leave no partial file
                self.abort()
                raise

    def _copy_all_but_last(self, source: Path) -> None:
        import imageio.v2 as imageio

        try:
            reader = imageio.get_reader(str(source), format="FFMPEG")
        except Exception as exc:  # imageio raises OSError/RuntimeError/IndexError for unreadable files
            self.abort()
            raise OutputError(f"cannot continue the video {source}: it is unreadable ({_first_line(exc)}); "
                              "move it away to start a new video") from None
        previous = None
        try:
            for frame in reader:  # one frame of look-ahead: everything but the last frame is copied
                if previous is not None:
                    self.append(previous)
                previous = frame
        except OutputError:
            raise
        except Exception as exc:  # a damaged file (vqclip writes none, but a copy or an edit may be)
            raise OutputError(f"cannot continue the video {source}: it is damaged ({_first_line(exc)}); "
                              "move it away to start a new video") from None
        finally:
            reader.close()

    def append(self, frame) -> None:
        """Add one HxWx3 uint8 frame."""
        try:
            self._writer.append_data(frame)
        except (OSError, RuntimeError, ValueError) as exc:  # ffmpeg gone: a full disk, a size limit
            self.abort()
            raise OutputError(f"cannot write {self.path}: {self._why(exc)}") from None
        self.frames += 1

    def close(self) -> Optional[Path]:
        """Finish encoding and move the file into place; None when no frame was written."""
        try:
            self._writer.close()
        except (OSError, RuntimeError, ValueError) as exc:
            why = self._why(exc)
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {why}") from None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        return self.path

    def _why(self, exc: BaseException) -> str:
        """Why ffmpeg stopped, as far as can be told from here (it reports to its own stderr)."""
        import resource
        import shutil

        try:
            if shutil.disk_usage(self.tmp.parent).free < 2**20:
                return os_reason(OSError(errno.ENOSPC, "no space"))
        except OSError:
            pass
        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return f"the video encoder stopped ({_first_line(exc)}); the file may have hit the file-size limit (ulimit -f)"
        return f"the video encoder stopped ({_first_line(exc)})"

    def abort(self) -> None:
        """Stop without leaving a file behind."""
        try:
            self._writer.close()
        except Exception:  # the encoder may already be gone; the partial file goes either way
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


class RunWriter:
    """Generation callback that writes a run folder: config.yaml, frames/, progress.mp4, final PNGs."""

    def __init__(self, cfg: GenerateConfig, version: str, run_dir: Optional[Path] = None) -> None:
        """A new run folder under `output.dir`, or (resuming) the existing `run_dir`, whose frames
        continue, whose videos are extended and whose config.yaml and final PNGs are replaced."""
        self.cfg, self.version = cfg, version
        self.resuming = run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg.output.dir, image_prompt(cfg) or "image")
        self.paths: List[Path] = []
        self.videos: List[Optional[VideoWriter]] = []
        atomic_write(self.run_dir / "config.yaml", lambda tmp: tmp.write_text(to_yaml(cfg)))
        self.paths.append(self.run_dir / "config.yaml")

    def _names(self, n: int, stem: str) -> List[str]:
        return [stem] if n == 1 else [f"{stem}-{i}" for i in range(n)]

    def __call__(self, info: Dict[str, Any]) -> None:
        """Handle one step: frames and video on schedule; final PNG(s) and video close on `final`."""
        images = info["image"]  # [B, 3, H, W] in [0, 1]
        step, out = info["step"], self.cfg.output
        if out.video and not self.videos:
            names = self._names(images.shape[0], "progress")
            for path in (self.run_dir / f"{n}.mp4" for n in names):  # one by one, so `abort` sees each
                self.videos.append(VideoWriter(path, out.fps,
                                               continue_from=path if self.resuming and path.is_file() else None))
        if out.video and (info.get("final") or step % out.video_every == 0):
            for video, img in zip(self.videos, images):
                video.append(to_uint8(img))
        if not info.get("final") and out.save_every and step % out.save_every == 0:
            frames = self.run_dir / "frames"
            if not frames.exists():
                try:
                    frames.mkdir()
                except OSError as exc:
                    raise OutputError(f"cannot create {frames}: {os_reason(exc)}") from None
            if frames not in self.paths:
                self.paths.append(frames)
            for name, img in zip(self._names(images.shape[0], "frame"), images):
                save_png(to_pil(img), frames / f"{name}-{step:06d}.png" if images.shape[0] > 1
                         else frames / f"{step:06d}.png")
        if info.get("final"):
            self.finish(info)

    def finish(self, info: Dict[str, Any]) -> None:
        """Write the final PNG(s) with metadata and close the video(s)."""
        losses = info.get("image_losses") or [info["loss"]] * info["image"].shape[0]
        for i, (name, img) in enumerate(zip(self._names(info["image"].shape[0], "image"), info["image"])):
            extra = {"steps": str(info["step"]), "loss": f"{losses[i]:.6f}"}
            pnginfo = png_metadata(self.cfg, self.version, extra, index=i)
            self.paths.append(save_png(to_pil(img), self.run_dir / f"{name}.png", pnginfo))
        for video in self.videos:
            path = video.close() if video else None
            if path:
                self.paths.append(path)
        self.videos = []

    def abort(self) -> None:
        """Close any open video without leaving a partial file."""
        for video in self.videos:
            if video:
                video.abort()
        self.videos = []
