"""Read a shapes-world image back into (color, shape, background) with plain geometry, no network.

The steps, each chosen to survive blurry or noisy generated images:

1. background: every border pixel votes for its nearest palette colour; the winner is the
   background, and the median of its voters is the background colour as actually drawn;
2. foreground: pixels far from that colour; their (slightly eroded, so blended edges do not vote)
   nearest palette colours vote for the shape's colour;
3. the shape: pixels nearer the shape's measured colour than the background's, largest
   4-connected component (specks ignored), holes filled;
4. its geometry: the mask is compared (IoU) with an ideal circle, square and upright triangle
   stretched to its bounding box, times how well the box's aspect ratio fits that shape's (so an
   ellipse is no circle and a long rectangle no square); the best fit wins, unless even that is
   poor (below `MIN_SHAPE_SCORE`), in which case the shape is unrecognised (None).

`read_image(image) -> Reading`; `Reading.matches(caption)` checks it against a caption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Union

import numpy as np

from vqclip.shapes.world import (COLORS, PALETTE, SHAPES, Geometry, Scene, coverage, parse_caption,
                                 shape_height)

_PALETTE = np.asarray([PALETTE[c] for c in COLORS], np.float32)  # [8, 3]
FOREGROUND_DISTANCE = 40.0  # RGB distance from the background beyond which a pixel is "not background"
MIN_AREA_FRACTION = 0.01  # a foreground smaller than this (of the image) is no shape at all
MIN_SHAPE_SCORE = 0.6  # best fit below this: no recognisable shape (clean drawings score above 0.85)


@dataclass(frozen=True)
class Reading:
    """What the evaluator saw. `color`/`shape` are None when no foreground object was found.

    `scores` holds each ideal shape's fit (IoU times aspect-ratio agreement, in [0, 1]); `area` is
    the shape's share of the image.
    """

    color: Optional[str]
    shape: Optional[str]
    background: str
    area: float = 0.0
    scores: Optional[Dict[str, float]] = None

    def matches(self, caption: Union[str, Scene]) -> bool:
        """True when all three attributes agree with `caption` (a caption string or a Scene)."""
        scene = parse_caption(caption) if isinstance(caption, str) else caption
        return (self.color, self.shape, self.background) == (scene.color, scene.shape, scene.background)

    def correct(self, caption: Union[str, Scene]) -> Dict[str, bool]:
        """Per-attribute agreement with `caption`: {'color', 'shape', 'background'} -> bool."""
        scene = parse_caption(caption) if isinstance(caption, str) else caption
        return {"color": self.color == scene.color, "shape": self.shape == scene.shape,
                "background": self.background == scene.background}

    @property
    def caption(self) -> Optional[str]:
        """The caption this reading amounts to, or None when it is not a valid scene."""
        try:
            return Scene(self.color, self.shape, self.background).caption  # type: ignore[arg-type]
        except ValueError:
            return None


def _as_array(image) -> np.ndarray:
    """PIL image or uint8 [H, W, 3] array -> float32 [H, W, 3] in 0..255."""
    if hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    return arr.astype(np.float32)


def _nearest(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each pixel [..., 3]."""
    d = ((pixels[..., None, :] - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with a 3x3 cross (pixels outside the image count as off)."""
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a binary mask (label propagation with pointer jumping)."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(labels, 1, constant_values=big)
        new = np.minimum.reduce([labels, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        new = np.where(mask, new, big)
        # Jump: a pixel takes the label its label's pixel holds now (halves long chains).
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]
        new = flat.reshape(h, w)
        if np.array_equal(new, labels):
            break
        labels = new
    ids, counts = np.unique(labels[mask], return_counts=True)
    if len(ids) == 0:
        return mask
    return labels == ids[counts.argmax()]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes: everything not reachable from the border through off pixels is on."""
    outside = ~mask
    reach = np.zeros_like(mask)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1]
    while True:
        p = np.pad(reach, 1, constant_values=False)
        grown = (reach | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]) & outside
        if np.array_equal(grown, reach):
            return ~reach
        reach = grown


def shape_scores(mask: np.ndarray) -> Dict[str, float]:
    """Fit of a binary mask to each ideal shape: IoU in its bounding box times aspect agreement."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    crop = mask[y0:y1, x0:x1]
    h, w = crop.shape
    side = max(h, w)
    # Ideal shapes drawn on the bounding box's own grid, stretched to its width and height.
    scores = {}
    for shape in SHAPES:
        ideal = coverage(shape, Geometry(float(side), 0.0, 0.0), side)
        if shape == "triangle":
            ideal = ideal[: max(1, int(round(side * np.sqrt(3) / 2)))]
        ideal = _resize_nearest(ideal > 0.5, h, w)
        inter = np.logical_and(crop, ideal).sum()
        union = np.logical_or(crop, ideal).sum()
        ratio = (h / w) / (shape_height(shape, 1.0))
        scores[shape] = float(inter / union) * min(ratio, 1 / ratio) if union else 0.0
    return scores


def _resize_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask to [h, w]."""
    ri = ((np.arange(h) + 0.5) * mask.shape[0] / h).astype(int)
    ci = ((np.arange(w) + 0.5) * mask.shape[1] / w).astype(int)
    return mask[ri][:, ci]


def read_image(image) -> Reading:
    """Classify a shapes-world image (PIL image or uint8 [H, W, 3] array); no neural network."""
    img = _as_array(image)
    h, w, _ = img.shape
    b = max(1, min(h, w) // 64)  # border width: 2 pixels at 128x128
    border = np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                             img[:, :b].reshape(-1, 3), img[:, -b:].reshape(-1, 3)])
    votes = np.bincount(_nearest(border), minlength=len(COLORS))
    bg_index = int(votes.argmax())
    bg_rgb = np.median(border[_nearest(border) == bg_index], axis=0)

    far = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    labels = _nearest(img)
    core = _erode(far)
    voters = labels[core] if core.sum() >= MIN_AREA_FRACTION * h * w / 4 else labels[far]
    voters = voters[voters != bg_index]
    if voters.size < MIN_AREA_FRACTION * h * w / 4:
        return Reading(None, None, COLORS[bg_index])
    fg_index = int(np.bincount(voters, minlength=len(COLORS)).argmax())
    fg_rgb = np.median(img[core & (labels == fg_index)] if (core & (labels == fg_index)).any()
                       else img[far & (labels == fg_index)], axis=0)

    # Two-class split between the colours actually drawn, so a blurred edge is cut halfway.
    nearer_fg = ((img - fg_rgb) ** 2).sum(-1) < ((img - bg_rgb) ** 2).sum(-1)
    mask = _fill_holes(_largest_component(nearer_fg))
    area = float(mask.mean())
    if area < MIN_AREA_FRACTION:
        return Reading(COLORS[fg_index], None, COLORS[bg_index], area)
    scores = shape_scores(mask)
    shape = max(scores, key=scores.get)
    if scores[shape] < MIN_SHAPE_SCORE:
        shape = None
    return Reading(COLORS[fg_index], shape, COLORS[bg_index], area, scores)


def accuracy(readings_and_captions: Iterable) -> Dict[str, float]:
    """Fractions right over (Reading, caption) pairs: 'all', 'color', 'shape', 'background'."""
    totals = {"all": 0, "color": 0, "shape": 0, "background": 0}
    n = 0
    for reading, caption in readings_and_captions:
        n += 1
        parts = reading.correct(caption)
        totals["all"] += all(parts.values())
        for k, ok in parts.items():
            totals[k] += ok
    return {k: v / n if n else 0.0 for k, v in totals.items()}
