"""Drawn images that are *not* scenes of the world, for teaching the demo CLIP what to reject.

A latent-optimisation generator finds whatever its CLIP scores highest. A CLIP trained only on
clean scenes has never seen a texture, so it may score a texture of the caption's two colours as
high as a real drawing (docs/shapes.md measured exactly that). These negatives cover the ways the
generator's images go wrong, each in the colours of a given scene:

- `blobs`: a low-frequency texture of the two colours (thresholded smooth noise);
- `many`: several small shapes of the foreground colour instead of one;
- `extra`: the scene itself plus a region of a third palette colour;
- `shuffled`: a drawing of the scene cut into 2x2 to 4x4 tiles put back in a random order and
  orientation: the local edges and corners of the shape, but no shape.

`blobs`, `many` and `shuffled` get a third colour too, half of the time. Every image gets the world's colour
jitter and pixel noise, so that noise is not what tells a negative from a scene.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.shapes.world import (COLOR_JITTER, COLORS, PALETTE, PIXEL_NOISE, SHAPES, Geometry, Scene,
                                 coverage, sample_geometry, shape_height)

KINDS = ("blobs", "many", "extra", "shuffled")


def blob_mask(rng: np.random.Generator, size: int, share: Optional[float] = None) -> np.ndarray:
    """A smooth random region [size, size] in [0, 1] covering about `share` of the image
    (default: 25-65%), its edges about two pixels wide."""
    cells = int(rng.integers(3, 9))
    field = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    share = float(rng.uniform(0.25, 0.65)) if share is None else share
    threshold = np.quantile(field, 1.0 - share)
    slope = np.abs(np.gradient(field)).mean() + 1e-6  # field units per pixel, on average
    return np.clip((field - threshold) / (2 * slope) + 0.5, 0.0, 1.0).astype(np.float32)


def _many_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """2-6 small shapes of random kinds (12-30% of the side), anywhere, overlaps allowed."""
    mask = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 7))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        extent = float(rng.uniform(0.12, 0.3)) * size
        height = shape_height(shape, extent)
        geometry = Geometry(extent, float(rng.uniform(0, size - extent)), float(rng.uniform(0, size - height)))
        mask = np.maximum(mask, coverage(shape, geometry, size))
    return mask


def _shuffled(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`mask` cut into n x n tiles (n = 2-4; the last pixels of an uneven split stay background),
    shuffled and each rotated by a random multiple of 90 degrees. An n that would leave 80% or more
    of the shape in one tile (a circle would survive whole) is not used; at n = 4 a tile is smaller
    than the smallest shape."""
    size = mask.shape[0]
    for n in (*rng.permutation([2, 3]), 4):
        side = size // n
        tiles = [mask[r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(n) for c in range(n)]
        if max(t.sum() for t in tiles) < 0.8 * mask.sum():
            break
    out = np.zeros_like(mask)
    for k, t in enumerate(rng.permutation(len(tiles))):
        r, c = divmod(k, n)
        out[r * side:(r + 1) * side, c * side:(c + 1) * side] = np.rot90(tiles[t], int(rng.integers(4)))
    return out


def _jittered(name: str, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(PALETTE[name], np.float32) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)


def draw_negative(scene: Scene, rng: np.random.Generator, size: int = 128, kind: Optional[str] = None) -> np.ndarray:
    """An RGB uint8 image [size, size, 3] in the colours of `scene` that is not a scene of the world.

    `kind` is one of `KINDS` (default: one at random).
    """
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown negative kind {kind!r}; allowed: {', '.join(KINDS)}")
    fg, bg = _jittered(scene.color, rng), _jittered(scene.background, rng)
    if kind == "shuffled":
        mask = _shuffled(coverage(scene.shape, sample_geometry(scene.shape, size, rng), size), rng)
    elif kind == "blobs":
        mask = blob_mask(rng, size)
    elif kind == "many":
        mask = _many_mask(rng, size)
    else:
        mask = coverage(scene.shape, sample_geometry(scene.shape, size, rng), size)
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg
    if kind == "extra" or rng.random() < 0.5:
        others = [c for c in COLORS if c not in (scene.color, scene.background)]
        third = _jittered(others[int(rng.integers(len(others)))], rng)
        region = blob_mask(rng, size, share=float(rng.uniform(0.08, 0.25)))[..., None]
        img = region * third + (1 - region) * img
    img = img + rng.uniform(-PIXEL_NOISE, PIXEL_NOISE, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
