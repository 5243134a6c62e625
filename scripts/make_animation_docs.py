"""Render the pictures of docs/animation.md from the example configs: a frame strip per mode.

    python scripts/make_animation_docs.py                      # with configs/shapes.yaml (the demo models)
    python scripts/make_animation_docs.py --config my.yaml     # with other models
    python scripts/make_animation_docs.py --tiny               # tiny random test models: format only

Each mode runs `configs/<mode>.yaml` merged over the model config(s), through the package API
(`vqclip.animate.run_mode`), and writes `docs/animation/<mode>-strip.png` (frames evenly spaced
over the animation; for a story, over its steps) and, with --gif, `<mode>.gif`. The restyle input,
docs/animation/input.mp4, is drawn here too (when missing, or with --make-input). Extra key=value
arguments override every run (e.g. animation.frames=12 to try things quickly).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODES = ("story", "zoom", "interpolate", "restyle")
log = logging.getLogger("make_animation_docs")


def make_input_clip(path: Path, size: int = 128, frames: int = 24, fps: int = 12) -> Path:
    """A red circle crossing a blue background, with a 440 Hz tone: the restyle example's input."""
    import imageio.v2 as imageio

    from vqclip.animate.video import run_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    silent = path.with_name(".input-silent.mp4")
    writer = imageio.get_writer(str(silent), format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=2, quality=8, ffmpeg_log_level="error")
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    radius = size * 0.22
    for i in range(frames):
        cx = radius + (size - 2 * radius) * i / (frames - 1)
        cy = size / 2 + size * 0.12 * np.sin(2 * np.pi * i / frames)
        inside = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)[..., None]  # anti-aliased edge
        frame = (1 - inside) * np.array([40, 80, 220]) + inside * np.array([220, 40, 40])
        writer.append_data(frame.round().astype(np.uint8))
    writer.close()
    try:
        run_ffmpeg(["-i", str(silent), "-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / fps}",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)],
                   "add a tone to the input clip")
    finally:
        silent.unlink(missing_ok=True)
    return path


def strip(frames: List[np.ndarray], count: int, gap: int = 2) -> Image.Image:
    """`count` frames evenly spaced from first to last, side by side on white."""
    picks = [frames[round(i * (len(frames) - 1) / max(1, count - 1))] for i in range(min(count, len(frames)))]
    h, w = picks[0].shape[:2]
    out = Image.new("RGB", (len(picks) * w + (len(picks) - 1) * gap, h), "white")
    for i, frame in enumerate(picks):
        out.paste(Image.fromarray(frame), (i * (w + gap), 0))
    return out


def render(mode: str, files: List[str], overrides: List[str], out: Path, count: int, gif: bool) -> Path:
    """Run one example config and write its strip (and GIF); return the strip's path."""
    from vqclip import load_config
    from vqclip.animate import run_mode
    from vqclip.images import to_uint8

    frames: List[np.ndarray] = []

    def keep(info: Dict[str, Any]) -> None:
        if mode != "story" or info["final"] or info["step"] % 10 == 0:
            if not (mode != "story" and info["final"]):  # an animation's final call repeats its last frame
                frames.append(to_uint8(info["image"][0]))

    cfg = load_config(files + [str(ROOT / "configs" / f"{mode}.yaml")], overrides)
    run_mode(cfg, callbacks=[keep], save=False, progress=False)
    path = out / f"{mode}-strip.png"
    strip(frames, count).save(path)
    if gif:
        images = [Image.fromarray(f) for f in frames]
        fps = cfg.animation.fps or 12
        images[0].save(out / f"{mode}.gif", save_all=True, append_images=images[1:], loop=0,
                       duration=round(1000 / fps))
    log.info("%s: %d frames -> %s", mode, len(frames), path)
    return path


def main(argv: List[str] | None = None) -> int:
    """Render the docs' pictures; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    parser.add_argument("-c", "--config", action="append", default=None, metavar="FILE",
                        help="model config(s) the examples merge over (default: configs/shapes.yaml)")
    parser.add_argument("--tiny", action="store_true", help="use tiny random test models (shows the format only)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="which modes to render")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "animation", help="output folder")
    parser.add_argument("--count", type=int, default=6, help="frames per strip")
    parser.add_argument("--gif", action="store_true", help="also write a GIF per mode")
    parser.add_argument("--make-input", action="store_true", help="redraw docs/animation/input.mp4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    sys.path.insert(0, str(ROOT))  # render with this checkout's vqclip (and its tests' tiny models)
    from vqclip.errors import VQClipError

    clip = ROOT / "docs" / "animation" / "input.mp4"
    if args.make_input or not clip.exists():
        log.info("input clip -> %s", make_input_clip(clip))
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [f"restyle.video={clip}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        files = args.config or [str(ROOT / "configs" / "shapes.yaml")]
        if args.tiny:
            from tests.fixtures import write_clip, write_vqgan

            vq_cfg, vq_ckpt = write_vqgan(Path(tmp) / "vqgan")
            clip_json, clip_pt = write_clip(Path(tmp) / "clip")
            files = args.config or []
            overrides = [f"vqgan.config={vq_cfg}", f"vqgan.checkpoint={vq_ckpt}", f"clip.model={clip_json}",
                         f"clip.pretrained={clip_pt}", "size=[64,64]", "cutouts.cutn=8", "seed=0",
                         *overrides]
        try:
            for mode in args.modes:
                render(mode, files, overrides, args.out, args.count, args.gif)
        except VQClipError as exc:
            print(f"make_animation_docs: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
