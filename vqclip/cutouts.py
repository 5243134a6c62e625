"""Cutouts and augmentations: what CLIP actually looks at each step.

`make_cutouts` takes `cutn` random square crops per image, their sides drawn as
`min + u**cut_pow * (max - min)`, and resamples all of them to CLIP's input size in ONE
`grid_sample` call (the crops are tiled along the grid's height), so the cost does not grow with
a Python loop and the backward pass scatters into the image once. When crops are much larger than
CLIP's input they are sampled at k times the size and average-pooled, a cheap anti-aliasing filter.

`make_cutouts_loop` is the notebooks' per-cutout loop, kept behind `cutouts.batched=false` for the
benchmark's baseline and for comparison. `build_augments(names)` turns config names into one kornia pipeline applied to the whole batch.

`scheduled_blur` blurs the image CLIP sees early in a run (coarse to fine): while the blur is strong,
only large regions of colour change what CLIP sees, so the composition forms before the detail.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MAX_SUPERSAMPLE = 4


def sample_boxes(n: int, width: int, height: int, cut_size: int, cut_pow: float,
                 device: torch.device | str = "cpu", min_size: float = 0.0, whole: float = 0.0) -> torch.Tensor:
    """Random square boxes [n, 3] as (x0, y0, side) in pixels, sides following `cut_pow`.

    Sides lie in [max(min(cut_size, S), min_size * S), S] for S the shorter image side; the first
    round(whole * n) boxes are the largest centred square (the whole image when it is square).
    """
    max_side = min(width, height)
    min_side = max(min(max_side, cut_size), math.ceil(min_size * max_side))
    u = torch.rand(n, device=device)
    side = (u.pow(cut_pow) * (max_side - min_side) + min_side).floor().clamp(1, max_side)
    x0 = (torch.rand(n, device=device) * (width - side + 1)).floor()
    y0 = (torch.rand(n, device=device) * (height - side + 1)).floor()
    n_whole = round(whole * n)
    if n_whole:
        side[:n_whole] = max_side
        x0[:n_whole] = (width - max_side) // 2
        y0[:n_whole] = (height - max_side) // 2
    return torch.stack([x0, y0, side], dim=1)


def cutout_boxes(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                 min_size: float = 0.0, whole: float = 0.0) -> torch.Tensor:
    """Boxes [B, cutn, 3] for the images [B, C, H, W], as `sample_boxes` draws them, per image."""
    b, _, h, w = images.shape
    if whole:  # the whole views come first in each image's cutouts
        return torch.stack([sample_boxes(cutn, w, h, cut_size, cut_pow, images.device, min_size, whole)
                            for _ in range(b)])
    return sample_boxes(b * cutn, w, h, cut_size, cut_pow, images.device, min_size).view(b, cutn, 3)


def make_cutouts(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                 min_size: float = 0.0, whole: float = 0.0) -> torch.Tensor:
    """Images [B, C, H, W] -> cutouts [B * cutn, C, cut_size, cut_size], image-major order.

    `min_size` and `whole` are as in `sample_boxes`, per image (the first round(whole * cutn) cutouts
    of each image are whole views).
    """
    b, c, h, w = images.shape
    boxes = cutout_boxes(images, cutn, cut_size, cut_pow, min_size, whole)
    k = int(min(MAX_SUPERSAMPLE, max(1, math.ceil(float(boxes[..., 2].max()) / (2 * cut_size)))))
    s = cut_size * k
    # Normalised sampling grid (align_corners=False): pixel centre i maps to (2i + 1) / n - 1.
    t = (torch.arange(s, device=images.device, dtype=images.dtype) + 0.5) / s  # [s] in (0, 1)
    x0, y0, side = boxes.unbind(-1)  # [b, cutn]
    gx = (x0[..., None] + t * side[..., None]) * (2.0 / w) - 1  # [b, cutn, s]
    gy = (y0[..., None] + t * side[..., None]) * (2.0 / h) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)  # [b, cutn, s, s, 2]
    out = F.grid_sample(images, grid.reshape(b, cutn * s, s, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # [b, C, cutn*s, s]
    out = out.view(b, c, cutn, s, s).transpose(1, 2).reshape(b * cutn, c, s, s)
    return F.avg_pool2d(out, k) if k > 1 else out


def make_cutouts_loop(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                      min_size: float = 0.0, whole: float = 0.0) -> torch.Tensor:
    """The original notebooks' way (`cutouts.batched=false`): a Python loop, one crop and one
    antialiased bicubic resample per cutout. Same boxes and output layout as `make_cutouts`."""
    boxes = cutout_boxes(images, cutn, cut_size, cut_pow, min_size, whole).long().tolist()
    cuts = []
    for i in range(images.shape[0]):
        for x0, y0, side in boxes[i]:
            crop = images[i:i + 1, :, y0:y0 + side, x0:x0 + side]
            cuts.append(F.interpolate(crop, size=(cut_size, cut_size), mode="bicubic", align_corners=False,
                                      antialias=side > cut_size))
    return torch.cat(cuts)


def build_augments(names: Sequence[str], cut_size: int, noise: float = 0.1) -> nn.Module:
    """One kornia pipeline from augment names (see vqclip.config.AUGMENTS); identity when empty."""
    import kornia.augmentation as K

    table = {
        "flip": lambda: K.RandomHorizontalFlip(p=0.5),
        "affine": lambda: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="border"),
        "perspective": lambda: K.RandomPerspective(0.2, p=0.7),
        "jitter": lambda: K.ColorJitter(hue=0.1, saturation=0.1, p=0.7),
        "erasing": lambda: K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 3.3), p=0.7),
        "sharpness": lambda: K.RandomSharpness(0.3, p=0.4),
        "resized_crop": lambda: K.RandomResizedCrop((cut_size, cut_size), scale=(0.1, 1.0), p=0.5),
        "noise": lambda: K.RandomGaussianNoise(mean=0.0, std=noise, p=0.5),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown augment {unknown[0]!r}; allowed: {', '.join(table)}")
    return nn.Sequential(*(table[n]() for n in names))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images [B, C, H, W] with std `sigma` pixels (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def scheduled_blur(images: torch.Tensor, sigma: float, step: int, until: float) -> torch.Tensor:
    """Blur with std `sigma * (1 - step / until)` pixels, none from step `until` on (or below 0.3 px)."""
    s = sigma * (1 - step / until) if until > 0 else 0.0
    return gaussian_blur(images, s) if s >= 0.3 else images
