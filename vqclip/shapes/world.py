"""The shapes world: captioned images of one filled shape on a plain background.

Captions follow one grammar, `a {color} {shape} on a {background} background`, with the shape one
of `SHAPES` and two different colours from `PALETTE` (8 * 7 * 3 = 168 captions). Images are drawn
procedurally from a seed (nothing is downloaded): the shape is 30-70% of the image side, anywhere
fully inside the frame, with anti-aliased edges, a small per-image colour jitter and per-pixel noise.

A fixed list of (color, shape, background) combinations, `HELD_OUT`, never appears in training;
it is kept for evaluation of how well models generalise to unseen combinations.

This module is pure numpy + torch data plumbing; the evaluator lives in vqclip.shapes.evaluate and
the models in vqclip.shapes.train.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS: Tuple[str, ...] = tuple(PALETTE)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
SIZE_RANGE = (0.3, 0.7)  # shape extent (diameter, side) as a fraction of the image side
COLOR_JITTER = 6  # per-image, per-channel offset of each colour, uniform in [-6, 6]
PIXEL_NOISE = 4  # per-pixel, per-channel noise, uniform in [-4, 4]
CAPTION_TEMPLATE = "a {color} {shape} on a {background} background"

_CAPTION_RE = re.compile(r"^an? (\w+) (\w+) on an? (\w+) background$")


@dataclass(frozen=True, order=True)
class Scene:
    """What an image shows: a `color` `shape` on a `background` colour."""

    color: str
    shape: str
    background: str

    def __post_init__(self) -> None:
        for field, value, allowed in (("color", self.color, COLORS), ("shape", self.shape, SHAPES),
                                      ("background", self.background, COLORS)):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; allowed: {', '.join(allowed)}")
        if self.color == self.background:
            raise ValueError(f"color and background must differ, both are {self.color!r}")

    @property
    def caption(self) -> str:
        """The caption in the world's grammar."""
        return format_caption(self.color, self.shape, self.background)


def format_caption(color: str, shape: str, background: str) -> str:
    """`a {color} {shape} on a {background} background`."""
    return CAPTION_TEMPLATE.format(color=color, shape=shape, background=background)


def parse_caption(text: str) -> Scene:
    """Read a caption of the world's grammar (case, spacing and `a`/`an` are forgiven) into a Scene."""
    m = _CAPTION_RE.match(" ".join(text.lower().split()))
    if m is None:
        raise ValueError(f"caption {text!r} does not follow {CAPTION_TEMPLATE!r}")
    return Scene(*m.groups())


def all_scenes() -> List[Scene]:
    """All 168 scenes, in a fixed order (shape, then colour, then background)."""
    return [Scene(c, s, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


def all_captions() -> List[str]:
    """The 168 captions, in the order of `all_scenes()`."""
    return [s.caption for s in all_scenes()]


# Held out from all training: each colour twice as foreground and twice as background, every shape
# five or six times, and never the same (color, background) pair twice.
HELD_OUT: Tuple[Scene, ...] = tuple(Scene(c, s, b) for c, s, b in (
    ("red", "circle", "green"), ("red", "square", "purple"),
    ("orange", "square", "blue"), ("orange", "triangle", "white"),
    ("yellow", "triangle", "purple"), ("yellow", "circle", "black"),
    ("green", "circle", "white"), ("green", "square", "red"),
    ("blue", "square", "black"), ("blue", "triangle", "orange"),
    ("purple", "triangle", "red"), ("purple", "circle", "yellow"),
    ("white", "circle", "orange"), ("white", "square", "green"),
    ("black", "square", "yellow"), ("black", "triangle", "blue"),
))


def train_scenes() -> List[Scene]:
    """The 152 scenes models may train on: all scenes except `HELD_OUT`."""
    held = set(HELD_OUT)
    return [s for s in all_scenes() if s not in held]


@dataclass(frozen=True)
class Geometry:
    """Where the shape is: `extent` (diameter or side) and the top-left of its bounding box, in pixels."""

    extent: float
    x0: float
    y0: float


def shape_height(shape: str, extent: float) -> float:
    """Bounding-box height of a shape whose width is `extent` (an equilateral triangle is flatter)."""
    return extent * math.sqrt(3) / 2 if shape == "triangle" else extent


def sample_geometry(shape: str, size: int, rng: np.random.Generator) -> Geometry:
    """A random extent (30-70% of `size`) and position with the whole shape inside the frame."""
    extent = float(rng.uniform(*SIZE_RANGE)) * size
    height = shape_height(shape, extent)
    return Geometry(extent, float(rng.uniform(0, size - extent)), float(rng.uniform(0, size - height)))


def pixel_centres(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """x [1, size] and y [size, 1] coordinates of the pixel centres of a size x size image."""
    t = np.arange(size, dtype=np.float32) + 0.5
    return t[None, :], t[:, None]


def coverage(shape: str, geometry: Geometry, size: int) -> np.ndarray:
    """Anti-aliased mask [size, size] in [0, 1]: the fraction of each pixel the shape covers.

    Uses the signed distance of pixel centres to the shape's edges: coverage = clip(0.5 - d, 0, 1),
    exact for straight edges and near enough at corners.
    """
    x, y = pixel_centres(size)
    e, x0, y0 = geometry.extent, geometry.x0, geometry.y0
    if shape == "circle":
        r = e / 2
        d = np.sqrt((x - x0 - r) ** 2 + (y - y0 - r) ** 2) - r
    elif shape == "square":
        h = e / 2
        d = np.maximum(np.abs(x - x0 - h) - h, np.abs(y - y0 - h) - h)
    elif shape == "triangle":
        # Upright equilateral: apex at the top centre; three half-planes with outward unit normals.
        ax, ay, height = x0 + e / 2, y0, shape_height(shape, e)
        s3 = math.sqrt(3) / 2
        left = -s3 * (x - ax) - 0.5 * (y - ay)
        right = s3 * (x - ax) - 0.5 * (y - ay)
        bottom = y - (y0 + height)
        d = np.maximum(np.maximum(left, right), bottom)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def draw(scene: Scene, rng: np.random.Generator, size: int = 128, geometry: Optional[Geometry] = None,
         noise: bool = True) -> np.ndarray:
    """Draw `scene` as an RGB uint8 array [size, size, 3] (random geometry unless given)."""
    geometry = geometry or sample_geometry(scene.shape, size, rng)
    return paint(coverage(scene.shape, geometry, size), scene.color, scene.background, rng, noise)


def paint(mask: np.ndarray, color: str, background: str, rng: np.random.Generator, noise: bool = True
          ) -> np.ndarray:
    """An RGB uint8 image [H, W, 3]: `color` where the coverage `mask` [H, W] is 1, `background`
    where it is 0, with the world's colour jitter and pixel noise unless `noise` is False."""
    fg = np.asarray(PALETTE[color], np.float32)
    bg = np.asarray(PALETTE[background], np.float32)
    if noise:
        fg = fg + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        bg = bg + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg
    if noise:
        img = img + rng.uniform(-PIXEL_NOISE, PIXEL_NOISE, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def draw_item(scene: Scene, rng: np.random.Generator, size: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fresh drawing of `scene` at random geometry as a float tensor [3, size, size] in [0, 1],
    and its shape coverage [size, size] (what training cutouts keep in view)."""
    geometry = sample_geometry(scene.shape, size, rng)
    image = draw(scene, rng, size, geometry)
    return to_tensor(image), torch.from_numpy(coverage(scene.shape, geometry, size))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float tensor [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


class ShapesDataset(torch.utils.data.Dataset):
    """Deterministic, endless-feeling map-style dataset of drawn scenes.

    Item `i` is drawn from its own generator seeded by `(seed, i)`, so any index is reproducible
    and no two indices share an image. Each item is a dict: `image` float [3, size, size] in [0, 1],
    `mask` float [size, size] (shape coverage), `caption` str, and `scene` (index into `scenes`).
    """

    def __init__(self, scenes: Sequence[Scene], length: int, seed: int = 0, size: int = 128) -> None:
        if not scenes:
            raise ValueError("ShapesDataset needs at least one scene")
        self.scenes = list(scenes)
        self.length, self.seed, self.size = int(length), int(seed), int(size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, int(index)))
        k = int(rng.integers(len(self.scenes)))
        scene = self.scenes[k]
        image, mask = draw_item(scene, rng, self.size)
        return {"image": image, "mask": mask, "caption": scene.caption, "scene": k}


def sample_images(scenes: Sequence[Scene], n: int, seed: int = 0, size: int = 128
                  ) -> Iterator[Tuple[Scene, np.ndarray]]:
    """Yield `n` (scene, uint8 image) pairs, scenes cycling through `scenes` in order."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        scene = scenes[i % len(scenes)]
        yield scene, draw(scene, rng, size)
