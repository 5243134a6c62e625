"""Extra loss terms on the image itself (not on what CLIP sees), each off unless given a weight.

Every loss is a pure function `image [B, 3, H, W] in [0, 1] -> [B]`, zero at its ideal:

- `total_variation`: mean absolute difference of neighbouring pixels (0 for a flat image);
- `symmetry`: mean squared difference to the left-right mirror image (0 for a mirror-symmetric one);
- `saturation`: squared distance of the mean HSV saturation to a target in [0, 1];
- `palette`: mean squared distance of every pixel to its nearest palette colour;
- `tones`: mean squared distance of every pixel to the nearest of the image's own k dominant colours
  (a few k-means steps, the colours held fixed): few flat colours instead of many;
- `frame`: mean squared distance of the pixels in the image's outer band to the band's mean colour
  (0 for a frame of one flat colour): a subject kept clear of the edges, on a plain background.

`image_loss_terms` turns the `losses` config section into weighted terms for `Run.loss_terms`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, List, Sequence

import torch
import torch.nn.functional as F

from vqclip.errors import ConfigError

if TYPE_CHECKING:
    from vqclip.config import LossesConfig

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically neighbouring pixels, per image."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def symmetry(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the image and its left-right mirror, per image."""
    return (image - image.flip(-1)).pow(2).flatten(1).mean(1)


def saturation(image: torch.Tensor, target: float) -> torch.Tensor:
    """Squared distance of the mean HSV saturation, (max - min) / max over RGB, to `target`."""
    hi = image.amax(dim=1)
    lo = image.amin(dim=1)
    sat = (hi - lo) / hi.clamp(min=1e-3)
    return (sat.flatten(1).mean(1) - target).pow(2)


def palette(image: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the squared RGB distance to the nearest of `colors` [K, 3] in [0, 1]."""
    pixels = image.flatten(2).transpose(1, 2)  # [B, HW, 3]
    d = (pixels.unsqueeze(2) - colors.to(image).view(1, 1, -1, 3)).pow(2).sum(-1)  # [B, HW, K]
    return d.min(dim=2).values.mean(1)


def dominant_colors(image: torch.Tensor, k: int, iters: int = 6) -> torch.Tensor:
    """The k dominant colours [B, k, 3] of each image by k-means (farthest-point start), no gradient."""
    with torch.no_grad():
        pixels = image.flatten(2).transpose(1, 2)  # [B, HW, 3]
        idx = torch.arange(len(pixels))
        centers = [pixels[idx, (pixels - pixels.mean(1, keepdim=True)).pow(2).sum(-1).argmax(1)]]
        for _ in range(k - 1):  # farthest-point initialisation: deterministic and spread out
            d = torch.stack([(pixels - c[:, None]).pow(2).sum(-1) for c in centers]).min(0).values
            centers.append(pixels[idx, d.argmax(1)])
        c = torch.stack(centers, 1)  # [B, k, 3]
        for _ in range(iters):
            assign = torch.cdist(pixels, c).argmin(-1)  # [B, HW]
            onehot = F.one_hot(assign, k).to(pixels.dtype)  # [B, HW, k]
            counts = onehot.sum(1)[..., None]  # [B, k, 1]
            c = torch.where(counts > 0, onehot.transpose(1, 2) @ pixels / counts.clamp(min=1), c)
        return c


def tones(image: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over pixels of the squared RGB distance to the nearest of the image's k dominant colours."""
    return palette_distance(image, dominant_colors(image, k))


def palette_distance(image: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Like `palette`, with per-image colours [B, K, 3]."""
    pixels = image.flatten(2).transpose(1, 2)  # [B, HW, 3]
    d = (pixels.unsqueeze(2) - colors.to(image).unsqueeze(1)).pow(2).sum(-1)  # [B, HW, K]
    return d.min(dim=2).values.mean(1)


def frame(image: torch.Tensor, width: float) -> torch.Tensor:
    """Mean over the outer band of pixels (`width` of the shorter side deep, at least one pixel) of the
    squared RGB distance to the band's mean colour, per image: 0 when the frame is one flat colour."""
    h, w = image.shape[-2:]
    b = max(1, round(width * min(h, w)))
    inside = torch.zeros(h, w, dtype=torch.bool, device=image.device)
    inside[b:h - b, b:w - b] = True  # empty when the band covers the whole image
    band = image[..., ~inside]  # [B, 3, N]
    return (band - band.mean(2, keepdim=True)).pow(2).sum(1).mean(1)


def parse_color(spec: str, key: str = "color") -> tuple[float, float, float]:
    """"#rrggbb" -> (r, g, b) in [0, 1]; ConfigError naming `key` otherwise."""
    m = _HEX.match(str(spec).strip())
    if not m:
        raise ConfigError(f"bad value for config key '{key}': {spec!r}; allowed: a hex colour \"#rrggbb\" "
                          "(quoted in YAML, where # starts a comment)")
    h = m.group(1)
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def palette_tensor(colors: Sequence[str], key: str = "losses.palette_colors") -> torch.Tensor:
    """Hex colours -> [K, 3] float tensor in [0, 1]."""
    return torch.tensor([parse_color(c, f"{key}[{i}]") for i, c in enumerate(colors)], dtype=torch.float32)


def image_loss_terms(image: torch.Tensor, cfg: "LossesConfig") -> List[torch.Tensor]:
    """The weighted extra losses the config turns on, each [B]; empty when all weights are 0."""
    terms = []
    if cfg.tv:
        terms.append(cfg.tv * total_variation(image))
    if cfg.symmetry:
        terms.append(cfg.symmetry * symmetry(image))
    if cfg.saturation:
        terms.append(cfg.saturation * saturation(image, cfg.saturation_target))
    if cfg.palette:
        terms.append(cfg.palette * palette(image, palette_tensor(cfg.palette_colors)))
    if cfg.tones:
        terms.append(cfg.tones * tones(image, cfg.tones_k))
    if cfg.frame:
        terms.append(cfg.frame * frame(image, cfg.frame_width))
    return terms
