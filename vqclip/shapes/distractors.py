"""Distractors: drawings of things that are not one of the world's shapes, with captions that say so.

The world's captions name three shapes, so a CLIP trained on them alone only has to tell circle,
square and triangle apart: a lumpy blob, a long ellipse or two small discs are, to it, whichever of
the three they resemble most. The generator's near misses are exactly such things. Training the
demo CLIP on these drawings too, each with its own caption in the world's grammar
(`a red blob on a blue background`), gives it a reason to tell a circle from what is almost one.

The kinds (`DISTRACTORS`), each in one colour on a plain background, inside the frame, with the
world's colour jitter and pixel noise:

- `ellipse`: an axis-aligned ellipse, one axis 1.7-2.5 times the other;
- `rectangle`: an axis-aligned rectangle of the same proportions;
- `blob`: a lumpy closed outline, a radius that varies smoothly with the angle by up to about 60%;
- `pair`: two smaller shapes of one kind (circle, square or triangle), overlapping, touching or apart.

Distractor captions never appear in `vqclip.shapes.world`'s 168; they are for training only.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch

from vqclip.shapes.world import (COLORS, SHAPES, Geometry, ShapesDataset, coverage, format_caption, paint,
                                 pixel_centres, to_tensor)

DISTRACTORS: Tuple[str, ...] = ("ellipse", "rectangle", "blob", "pair")
ASPECT_RANGE = (1.7, 2.5)  # long side / short side of an ellipse or rectangle


def distractor_scenes() -> List[Tuple[str, str, str]]:
    """Every (color, kind, background) distractor, in a fixed order (kind, colour, background)."""
    return [(c, k, b) for k in DISTRACTORS for c in COLORS for b in COLORS if c != b]


def distractor_caption(color: str, kind: str, background: str) -> str:
    """The caption of a distractor, in the world's grammar: `a {color} {kind} on a {background} background`."""
    if kind not in DISTRACTORS:
        raise ValueError(f"unknown distractor {kind!r}; allowed: {', '.join(DISTRACTORS)}")
    return format_caption(color, kind, background)


def _stretched(rng: np.random.Generator, size: int) -> Tuple[float, float, float, float]:
    """Width, height and top-left of an axis-aligned box whose sides differ by `ASPECT_RANGE`."""
    long = float(rng.uniform(0.45, 0.8)) * size
    short = long / float(rng.uniform(*ASPECT_RANGE))
    w, h = (long, short) if rng.random() < 0.5 else (short, long)
    return w, h, float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))


def distractor_coverage(kind: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Anti-aliased mask [size, size] in [0, 1] of a random distractor of `kind`."""
    x, y = pixel_centres(size)
    if kind == "ellipse":
        w, h, x0, y0 = _stretched(rng, size)
        # Distance to the ellipse, scaled by its short semi-axis: near enough for a one-pixel edge.
        r = np.sqrt(((x - x0 - w / 2) / (w / 2)) ** 2 + ((y - y0 - h / 2) / (h / 2)) ** 2)
        d = (r - 1) * min(w, h) / 2
    elif kind == "rectangle":
        w, h, x0, y0 = _stretched(rng, size)
        d = np.maximum(np.abs(x - x0 - w / 2) - w / 2, np.abs(y - y0 - h / 2) - h / 2)
    elif kind == "blob":
        radius = float(rng.uniform(0.17, 0.28)) * size
        lumps = [(k, float(rng.uniform(0.08, 0.2)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 4)]
        reach = radius * (1 + sum(a for _, a, _ in lumps))
        cx, cy = (float(rng.uniform(reach, size - reach)) for _ in range(2))
        theta = np.arctan2(y - cy, x - cx)
        outline = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in lumps))
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - outline
    elif kind == "pair":
        # Two pieces of one kind whose centres lie 0.75-1.4 of their mean extent apart: overlapping
        # (one lumpy outline), touching or apart.
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        e1, e2 = (float(rng.uniform(0.2, 0.38)) * size for _ in range(2))
        o = (e1 - e2) / 2  # the second piece's box, centred on the first's, then moved by (dx, dy)
        for _ in range(100):  # a direction and gap that fit both pieces in the frame
            gap = float(rng.uniform(0.75, 1.4)) * (e1 + e2) / 2
            angle = float(rng.uniform(0, 2 * math.pi))
            dx, dy = gap * math.cos(angle), gap * math.sin(angle)
            lo_x, hi_x = max(0.0, -o - dx), min(size - e1, size - e2 - o - dx)
            lo_y, hi_y = max(0.0, -o - dy), min(size - e1, size - e2 - o - dy)
            if lo_x <= hi_x and lo_y <= hi_y:
                break
        else:
            raise RuntimeError("no room for a pair of this size")  # cannot happen at 20-38% of the side
        x0, y0 = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
        second = Geometry(e2, x0 + o + dx, y0 + o + dy)
        return np.maximum(coverage(shape, Geometry(e1, x0, y0), size), coverage(shape, second, size))
    else:
        raise ValueError(f"unknown distractor {kind!r}; allowed: {', '.join(DISTRACTORS)}")
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def draw_distractor(color: str, kind: str, background: str, rng: np.random.Generator, size: int = 128
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """A random distractor as an RGB uint8 array [size, size, 3] and its coverage [size, size]."""
    mask = distractor_coverage(kind, rng, size)
    return paint(mask, color, background, rng), mask


class DistractorMix(torch.utils.data.Dataset):
    """A `ShapesDataset` whose items are, with probability `share` each, a distractor instead.

    A distractor item has the dataset's keys: `image`, `mask`, `caption`, and `scene` = the number
    of world scenes + its index in `distractor_scenes()` (so captions can be listed world first,
    distractors after). Deterministic per index, like the dataset it wraps.
    """

    def __init__(self, scenes: ShapesDataset, share: float) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"DistractorMix needs a share in [0, 1], got {share}")
        self.scenes, self.share = scenes, float(share)
        self.kinds = distractor_scenes()

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.scenes.seed, int(index), 7))
        if rng.random() >= self.share:
            return self.scenes[index]
        k = int(rng.integers(len(self.kinds)))
        color, kind, background = self.kinds[k]
        image, mask = draw_distractor(color, kind, background, rng, self.scenes.size)
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask),
                "caption": distractor_caption(color, kind, background), "scene": len(self.scenes.scenes) + k}
